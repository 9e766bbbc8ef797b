"""From the document to the wire: what live mode compares between checks (the fingerprint), and capturing,
building, sending and recording jobs (a Generate batch is one job per seed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .capture import SEND_PIXELS, CaptureRequest, capture
from .fingerprint import CanvasWatcher, content_hash
from .job_records import JobRecord, JobRecords
from .jobs import JobIds
from .nodes import find_node, node_id
from .pose_layer import read_pose
from .request_builder import build_job
from .settings import MAX_SEED, GenerationSettings


def guidance_ids(settings: GenerationSettings) -> set[str]:
    """The guidance layers: sent as controls, left out of the image."""
    return {settings.scribble.node_id, settings.pose.node_id} - {""}


def live_fingerprint(
    watcher: CanvasWatcher, doc: Any, settings: GenerationSettings, pose_node: Any | None
) -> str:
    """Equal exactly when the next live job would be the same: the pixels, the settings, the selection's box,
    the scribble and the pose."""
    extra = [settings.to_json(), repr(_selection_box(doc))]
    if settings.scribble.enabled:
        scribble = find_node(doc, settings.scribble.node_id)
        if scribble is not None:
            extra.append(content_hash(bytes(scribble.projectionPixelData(0, 0, doc.width(), doc.height()))))
    if pose_node is not None:
        extra.append(repr(read_pose(pose_node, doc.xRes(), doc.yRes())))
    return watcher.fingerprint(doc, exclude=guidance_ids(settings), extra="|".join(extra))


def _selection_box(doc: Any) -> tuple[int, int, int, int] | None:
    selection = doc.selection()
    if selection is None:
        return None
    return selection.x(), selection.y(), selection.width(), selection.height()


class Sender:
    def __init__(self, network: Any, ids: JobIds, records: JobRecords) -> None:
        self.network = network
        self.ids = ids
        self.records = records
        self.sent = 0

    def send(
        self,
        doc: Any,
        settings: GenerationSettings,
        *,
        live: bool,
        models: dict[str, list[str]],
        refresh_allowed: Callable[[], bool],
    ) -> list[str]:
        """Captures the document and sends its job(s); returns the ids sent ([] when the connection is gone).
        Raises CaptureError when the document can't be sent as it is (the message says why)."""
        request = CaptureRequest(
            exclude=guidance_ids(settings),
            scribble_id=settings.scribble.node_id,
            pose_id=settings.pose.node_id,
            max_pixels=round(SEND_PIXELS * max(1.0, settings.resolution) ** 2),
        )
        snapshot = capture(doc, request, refresh_allowed=refresh_allowed)
        rect = (snapshot.x, snapshot.y, snapshot.width, snapshot.height)
        count = 1 if live else settings.batch
        sent: list[str] = []
        for index in range(count):
            job_id = self.ids.next("live" if live else "generate")
            seeded = replace(settings, seed=(settings.seed + index) % (MAX_SEED + 1))
            job = build_job(job_id, seeded, snapshot, live=live, models=models)
            if not self.network.send(job.request, *job.frames):
                break
            self.records.add(
                JobRecord(
                    job_id=job_id,
                    document=node_id(doc.rootNode()),
                    live=live,
                    mode=job.request.mode,
                    rect=rect,
                    settings_json=seeded.to_json(),
                    params=job.request.params.to_dict(),
                    images=job.images,
                    batch=(index + 1, count),
                )
            )
            sent.append(job_id)
            self.sent += 1
        return sent
