"""A stand-in backend (a real websockets server speaking the real protocol) for the plugin's network tests."""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import serve

import protocol


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class FakeBackend:
    port: int = field(default_factory=free_port)
    token: str | None = None
    models: dict[str, list[str]] = field(
        default_factory=lambda: {"checkpoints": ["tiny.safetensors"], "loras": [], "controlnet": []}
    )
    delay: float = 0.0  # seconds each job takes
    received: list[Any] = field(default_factory=list)  # decoded messages and frames, in order
    hellos: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()

    def start(self) -> FakeBackend:
        self._started.clear()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self._started.wait(5)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(5)

    def _main(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", self.port, max_size=None, compression=None) as server:
            self._started.set()
            await self._stop.wait()
            server.close()

    async def _handle(self, ws: Any) -> None:
        hello = protocol.decode_message(await ws.recv(), protocol.CLIENT_MESSAGES)
        assert isinstance(hello, protocol.Hello), f"the client spoke first with {hello!r}"
        self.hellos.append((hello, ws.request.headers.get("Authorization")))
        if self.token is not None and hello.token != self.token:
            error = protocol.Error("unauthorized", "Wrong or missing access token.")
            await ws.send(protocol.encode_message(error))
            await ws.close(1008, "unauthorized")
            return
        welcome = protocol.Welcome(
            1, "fake", "cpu", self.models, {}, list(protocol.SAMPLERS), protocol.Limits(), True
        )
        await ws.send(protocol.encode_message(welcome))
        job: protocol.JobRequest | None = None
        frames: dict[str, protocol.ImageFrame] = {}
        async for data in ws:
            if isinstance(data, bytes):
                frame = protocol.decode_frame(data, 4096, 4096)
                self.received.append(frame)
                frames[frame.slot] = frame
                if job is not None and len(frames) == len(job.images):
                    await self._answer(ws, job, frames)
                    job, frames = None, {}
                continue
            message = protocol.decode_message(data, protocol.CLIENT_MESSAGES)
            self.received.append(message)
            if isinstance(message, protocol.JobRequest):
                job, frames = message, {}
            elif isinstance(message, protocol.ListModels):
                await ws.send(protocol.encode_message(protocol.ModelList(self.models, {})))

    async def _answer(
        self, ws: Any, job: protocol.JobRequest, frames: dict[str, protocol.ImageFrame]
    ) -> None:
        canvas = frames["canvas"]
        await ws.send(protocol.encode_message(protocol.Accepted(job.job_id)))
        await asyncio.sleep(self.delay)
        await ws.send(protocol.encode_message(protocol.Progress(job.job_id, 1, 1)))
        # The "generated" image: the canvas with its colours inverted, at the canvas bounds; a batch's image
        # i (seed + i) has its colours darkened by i more, so each variation is told apart.
        bounds = job.bounds.to_list() if job.bounds else [0, 0, canvas.width, canvas.height]
        result = protocol.Result(
            job.job_id, bounds, canvas.width, canvas.height, "bgra8", job.params.to_dict()
        )
        result.count, result.seeds = job.params.batch, job.params.seeds
        await ws.send(protocol.encode_message(result))
        for index, slot in enumerate(result.slots):
            pixels = bytes((255 - b - index) % 256 if i % 4 != 3 else b for i, b in enumerate(canvas.payload))
            frame = protocol.ImageFrame(
                job.job_id, slot, protocol.ImageEncoding.BGRA8, canvas.width, canvas.height, pixels
            )
            await ws.send(protocol.encode_frame(frame))
