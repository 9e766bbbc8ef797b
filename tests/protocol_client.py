"""A small asyncio reference client of the protocol (numpy and websockets), used by tests and benchmarks."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from backend.codec import frame_to_array
from protocol import (
    PROTOCOL_VERSION,
    SERVER_MESSAGES,
    Bounds,
    Cancel,
    Cancelled,
    Error,
    Hello,
    ImageEncoding,
    ImageFrame,
    ImageSpec,
    JobParams,
    JobRequest,
    Message,
    Result,
    Welcome,
    decode_frame,
    decode_message,
    encode_frame,
    encode_message,
    result_slot,
)


@dataclass
class JobReply:
    """Everything the server said about one job, in order, and how it ended."""

    job_id: str
    messages: list[Message] = field(default_factory=list)
    result: Result | None = None
    image: np.ndarray | None = None  # RGBA uint8
    images: list[np.ndarray] = field(default_factory=list)  # all of a batch's images, `image` first

    @property
    def final(self) -> Message:
        return self.messages[-1]


class Client:
    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.welcome: Welcome | None = None
        self._ids = itertools.count(1)
        self.inbox: list[Message | ImageFrame] = []

    @classmethod
    async def connect(
        cls, url: str, token: str | None = None, headers: dict[str, str] | None = None, hello: bool = True
    ) -> Client:
        extra = dict(headers or {})
        socket = await connect(url, additional_headers=extra, max_size=None, compression=None)
        client = cls(socket)
        if hello:
            reply = await client.hello(token=token)
            if not isinstance(reply, Welcome):
                await socket.close()
                raise ConnectionRefusedError(reply)
        return client

    async def hello(self, token: str | None = None, version: int = PROTOCOL_VERSION) -> Message:
        await self.socket.send(encode_message(Hello(version, "reference-client", token)))
        reply = await self.receive()
        if isinstance(reply, Welcome):
            self.welcome = reply
        assert not isinstance(reply, ImageFrame)
        return reply

    async def receive(self) -> Message | ImageFrame:
        data = await self.socket.recv()
        if isinstance(data, bytes):
            return decode_frame(data, 2**31, 2**31)
        return decode_message(data, SERVER_MESSAGES)

    def next_job_id(self) -> str:
        return f"job-{next(self._ids)}"

    async def send_job(
        self,
        canvas: np.ndarray,
        params: JobParams | None = None,
        *,
        job_id: str | None = None,
        mode: str = "img2img",
        live: bool = False,
        mask: np.ndarray | None = None,
        controls: dict[str, np.ndarray] | None = None,
        bounds: Bounds | None = None,
        result_encoding: str = "rgba8",
    ) -> str:
        """Send a job's JSON and its frames; the canvas is RGBA uint8, masks and controls gray or RGBA."""
        job_id = job_id or self.next_job_id()
        images = {"canvas": canvas, **({"mask": mask} if mask is not None else {}), **(controls or {})}
        frames = [_frame(job_id, slot, array) for slot, array in images.items()]
        specs = [ImageSpec(f.slot, f.encoding.label, f.width, f.height) for f in frames]
        request = JobRequest(job_id, mode, live, params or JobParams(), specs, bounds, result_encoding)
        await self.socket.send(encode_message(request))
        for frame in frames:
            await self.socket.send(encode_frame(frame))
        return job_id

    async def cancel(self, job_id: str) -> None:
        await self.socket.send(encode_message(Cancel(job_id)))

    async def wait_for(self, job_ids: Sequence[str]) -> dict[str, JobReply]:
        """Collect replies until every named job has ended (result with its frames, cancelled or error)."""
        replies = {job_id: JobReply(job_id) for job_id in job_ids}
        open_jobs = set(job_ids)
        while open_jobs:
            item = await self.receive()
            self.inbox.append(item)
            if isinstance(item, ImageFrame):
                reply = replies.get(item.job_id)
                if reply is not None and item.slot == result_slot(len(reply.images)):
                    reply.images.append(_to_rgba(item))
                    reply.image = reply.images[0]
                    if reply.result is None or len(reply.images) >= reply.result.count:
                        open_jobs.discard(item.job_id)
                continue
            job_id = getattr(item, "job_id", None)
            if job_id not in replies:
                continue
            reply = replies[job_id]
            reply.messages.append(item)
            if isinstance(item, Result):
                reply.result = item
            elif isinstance(item, (Cancelled, Error)):
                open_jobs.discard(job_id)
        return replies

    async def run(self, canvas: np.ndarray, params: JobParams | None = None, **kwargs: Any) -> JobReply:
        job_id = await self.send_job(canvas, params, **kwargs)
        return (await self.wait_for([job_id]))[job_id]

    async def close(self) -> None:
        await self.socket.close()


def _frame(job_id: str, slot: str, array: np.ndarray) -> ImageFrame:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    height, width = array.shape[:2]
    if array.ndim == 2:
        return ImageFrame(job_id, slot, ImageEncoding.GRAY8, width, height, array.tobytes())
    return ImageFrame(job_id, slot, ImageEncoding.RGBA8, width, height, array.tobytes())


def _to_rgba(frame: ImageFrame) -> np.ndarray:
    return frame_to_array(frame)
