"""From the document to the wire: capturing what a job would carry, comparing it with what live mode sent last
(the fingerprint), and building, sending and recording jobs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ._compat import protocol
from .capture import CaptureError, CaptureRequest, capture, send_pixels
from .fingerprint import content_hash
from .job_records import JobRecord, JobRecords
from .job_tracking import JobIds
from .nodes import node_id
from .references import FileImages, capture_references
from .regions import capture_regions
from .request_builder import CanvasCapture, build_job
from .settings import GenerationSettings

MAX_CONTROLS = protocol.MAX_CONTROLS


def guidance_ids(settings: GenerationSettings) -> set[str]:
    """The guidance layers: sent as controls, left out of the image."""
    return {choice.node_id for choice in settings.chosen_guidance().values()}


def job_fingerprint(snapshot: CanvasCapture, settings: GenerationSettings) -> str:
    """Equal exactly when two jobs would carry the same inputs: the pixels as sent (a change nobody can see in
    them, like hiding an empty layer, sends nothing), the rectangle, the mask, the guidance, the settings."""
    return "|".join(
        (
            settings.to_json(),
            repr((snapshot.bounds.to_list(), snapshot.image_width, snapshot.image_height)),
            repr(sorted(snapshot.control_poses.items())),
            content_hash(snapshot.canvas),
            content_hash(snapshot.mask or b""),
            *(f"{kind}:{content_hash(pixels)}" for kind, pixels in sorted(snapshot.control_images.items())),
            *snapshot.guide_keys(),
        )
    )


class Sender:
    def __init__(self, network: Any, ids: JobIds, records: JobRecords) -> None:
        self.network = network
        self.ids = ids
        self.records = records
        self.sent = 0
        self.timings: dict[str, float] = {}  # seconds the last capture and send spent in each phase
        self.left_at = 0.0  # time.perf_counter() when the last job was handed to the network thread
        self.reference_files = FileImages()  # reference image files, each read once

    def capture(
        self,
        doc: Any,
        settings: GenerationSettings,
        refresh_allowed: Callable[[], bool],
        native_side: int = 512,
    ) -> CanvasCapture:
        """What a job would carry now, scaled for a model of `native_side` (the checkpoint's family). Raises
        CaptureError when the document can't be sent as it is (the message says why)."""
        started = time.perf_counter()
        chosen = settings.chosen_guidance()
        if len(chosen) > MAX_CONTROLS:
            raise CaptureError(
                f"At most {MAX_CONTROLS} guidance layers can guide at once: set the others to None "
                "under Guidance layers."
            )
        request = CaptureRequest(
            exclude=guidance_ids(settings),
            controls={kind: choice.node_id for kind, choice in chosen.items()},
            max_pixels=send_pixels(native_side, settings.resolution),
        )
        snapshot = capture(doc, request, refresh_allowed=refresh_allowed)
        snapshot.references = capture_references(doc, self.reference_files)
        rect = (snapshot.x, snapshot.y, snapshot.width, snapshot.height)
        snapshot.regions = capture_regions(doc, rect, (snapshot.image_width, snapshot.image_height))
        self.timings = {"capture": time.perf_counter() - started}
        return snapshot

    def send(
        self,
        doc: Any,
        snapshot: CanvasCapture,
        settings: GenerationSettings,
        *,
        live: bool,
        models: dict[str, list[str]],
    ) -> list[str]:
        """Sends the snapshot's job (a Generate batch is one job: the backend renders the variations with
        consecutive seeds); returns the ids sent ([] when the connection is gone)."""
        started = time.perf_counter()
        job_id = self.ids.next("live" if live else "generate")
        job = build_job(job_id, settings, snapshot, live=live, models=models)
        if not self.network.send(job.request, *job.frames):
            return []
        self.left_at = time.perf_counter()  # handed to the network thread: the UI thread is done with it
        self.records.add(
            JobRecord(
                job_id=job_id,
                document=node_id(doc.rootNode()),
                live=live,
                mode=job.request.mode,
                rect=(snapshot.x, snapshot.y, snapshot.width, snapshot.height),
                settings_json=settings.to_json(),
                params=job.request.params.to_dict(),
                images=job.images,
            )
        )
        self.sent += 1
        self.timings["build_and_send"] = time.perf_counter() - started
        return [job_id]
