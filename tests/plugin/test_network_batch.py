"""The network thread collects a batch result's frames into one ResultReady (issue 10, point 6)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from krita_plugin._compat import protocol
from krita_plugin.backoff import Backoff
from krita_plugin.network import NetworkClient, ResultReady, ServerMessage, Status
from krita_plugin.settings import ConnectionSettings
from tests.plugin.fake_backend import FakeBackend
from tests.plugin.test_network import Events, status

CANVAS_PIXEL = b"\x10\x20\x30\xff"


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def client(events: Events) -> Iterator[NetworkClient]:
    client = NetworkClient(events.queue.put, backoff=Backoff(initial=0.05, maximum=0.2, jitter=0))
    yield client
    client.stop()


def generate_parts(job_id: str, batch: int, seed: int = 40, w: int = 3, h: int = 2) -> tuple[object, ...]:
    """A Generate job (not live: live jobs are single frames) asking for `batch` variations."""
    request = protocol.JobRequest(
        job_id,
        params=protocol.JobParams(seed=seed, batch=batch),
        images=[protocol.ImageSpec("canvas", "bgra8", w, h)],
        bounds=protocol.Bounds(5, 6, w, h),
    )
    canvas = protocol.ImageFrame(job_id, "canvas", protocol.ImageEncoding.BGRA8, w, h, CANVAS_PIXEL * (w * h))
    return request, protocol.encode_frame(canvas)


def variation(index: int, pixels: int) -> bytes:
    """What the fake backend paints for image `index`: the canvas inverted, darkened by `index`."""
    return bytes([0xEF - index, 0xDF - index, 0xCF - index, 0xFF]) * pixels


def connect(client: NetworkClient, events: Events, backend: FakeBackend) -> None:
    client.start(ConnectionSettings(f"127.0.0.1:{backend.port}"))
    events.wait_for(status(Status.CONNECTED))


def test_a_batch_arrives_as_one_result_with_its_extra_frames(client: NetworkClient, events: Events) -> None:
    backend = FakeBackend().start()
    try:
        connect(client, events, backend)
        assert client.send(*generate_parts("gen-1", batch=3, seed=40))
        ready = events.wait_for(lambda e: isinstance(e, ResultReady))
        assert ready.result.job_id == "gen-1"
        assert ready.result.count == 3 and ready.result.seeds == [40, 41, 42]
        assert ready.result.bounds == [5, 6, 3, 2]
        assert ready.frame.slot == "result" and ready.frame.payload == variation(0, 6)
        assert [f.slot for f in ready.extra] == ["result.1", "result.2"]
        assert [f.payload for f in ready.extra] == [variation(1, 6), variation(2, 6)]
        assert all((f.width, f.height) == (3, 2) for f in ready.extra)
        # The next job is still read correctly: the extra frames were all taken by the batch.
        assert client.send(*generate_parts("gen-2", batch=1))
        single = events.wait_for(lambda e: isinstance(e, ResultReady))
        assert single.result.job_id == "gen-2"
        results = [e.result.job_id for e in events.seen if isinstance(e, ResultReady)]
        assert results == ["gen-1", "gen-2"]
        errors = [
            e for e in events.seen if isinstance(e, ServerMessage) and isinstance(e.message, protocol.Error)
        ]
        assert errors == []
    finally:
        backend.stop()


def test_a_single_image_result_has_no_extra_frames(client: NetworkClient, events: Events) -> None:
    backend = FakeBackend().start()
    try:
        connect(client, events, backend)
        assert client.send(*generate_parts("one", batch=1))
        ready = events.wait_for(lambda e: isinstance(e, ResultReady))
        assert ready.result.count == 1 and ready.extra == ()
        assert ready.frame.payload == variation(0, 6)
    finally:
        backend.stop()


class BrokenBatchBackend(FakeBackend):
    """Announces two images but sends one, then another job's frame: the batch can't complete."""

    async def _answer(self, ws: Any, job: protocol.JobRequest, frames: dict[str, Any]) -> None:
        canvas = frames["canvas"]
        result = protocol.Result(job.job_id, [0, 0, canvas.width, canvas.height], 3, 2, "bgra8", {})
        result.count, result.seeds = 2, [1, 2]
        await ws.send(protocol.encode_message(result))
        for job_id in (job.job_id, "someone-else"):
            frame = protocol.ImageFrame(job_id, "result", protocol.ImageEncoding.BGRA8, 3, 2, bytes(24))
            await ws.send(protocol.encode_frame(frame))


def test_an_incomplete_batch_ends_its_job_with_an_error(client: NetworkClient, events: Events) -> None:
    backend = BrokenBatchBackend().start()
    try:
        connect(client, events, backend)
        assert client.send(*generate_parts("broken", batch=2))
        ended = events.wait_for(
            lambda e: isinstance(e, ServerMessage) and isinstance(e.message, protocol.Error)
        )
        assert ended.message.job_id == "broken" and ended.message.code == "bad_frame"
        time.sleep(0.2)
        assert not any(isinstance(e, ResultReady) for e in [*events.seen, *list(events.queue.queue)])
    finally:
        backend.stop()
