"""A raw WebSocket client for the hardening tests: sends what it is told, however wrong; records replies."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from protocol import PROTOCOL_VERSION, ImageEncoding, ImageFrame, decode_frame, encode_frame

TERMINAL = ("result", "cancelled", "error")


def job_message(job_id: str, width: int = 16, height: int = 16, **fields: Any) -> dict[str, Any]:
    """A job JSON with one rgba8 canvas; `fields` replace or add top-level fields (params included)."""
    message: dict[str, Any] = {
        "type": "job",
        "job_id": job_id,
        "images": [{"slot": "canvas", "encoding": "rgba8", "width": width, "height": height}],
        "params": {"steps": 1, "strength": 0.5},
        "result_encoding": "rgba8",
    }
    message.update(fields)
    return message


def canvas_frame(job_id: str, width: int = 16, height: int = 16) -> bytes:
    pixels = np.full((height, width, 4), 128, dtype=np.uint8).tobytes()
    return encode_frame(ImageFrame(job_id, "canvas", ImageEncoding.RGBA8, width, height, pixels))


class RawClient:
    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.received: list[dict[str, Any] | ImageFrame] = []

    @classmethod
    async def connect(
        cls, url: str, hello: bool = True, from_address: str | None = None, **options: Any
    ) -> RawClient:
        """`from_address`: the loopback address to connect from (127.0.0.2 is another client address);
        `options` go to websockets' connect (additional_headers...)."""
        local = {"local_addr": (from_address, 0)} if from_address is not None else {}
        client = cls(await connect(url, max_size=None, compression=None, **local, **options))
        if hello:
            await client.send_json({"type": "hello", "protocol_version": PROTOCOL_VERSION})
            welcome = await client.receive()
            assert isinstance(welcome, dict) and welcome["type"] == "welcome", welcome
        return client

    async def send_json(self, message: dict[str, Any] | str) -> None:
        await self.socket.send(message if isinstance(message, str) else json.dumps(message))

    async def send_job(self, job_id: str, width: int = 16, height: int = 16, **fields: Any) -> None:
        await self.send_json(job_message(job_id, width, height, **fields))
        await self.socket.send(canvas_frame(job_id, width, height))

    async def receive(self, timeout: float = 60) -> dict[str, Any] | ImageFrame:
        data = await asyncio.wait_for(self.socket.recv(), timeout)
        item: dict[str, Any] | ImageFrame
        item = decode_frame(data, 2**31, 2**31) if isinstance(data, bytes) else json.loads(data)
        self.received.append(item)
        return item

    async def until_ended(self, job_ids: set[str], timeout: float = 120) -> None:
        """Read until each job has a terminal message (a result's frame included)."""
        waiting = set(job_ids)
        results_without_frame: set[str] = set()
        async with asyncio.timeout(timeout):
            while waiting or results_without_frame:
                item = await self.receive()
                if isinstance(item, ImageFrame):
                    results_without_frame.discard(item.job_id)
                    continue
                if item.get("type") in TERMINAL and item.get("job_id") in waiting:
                    waiting.discard(item["job_id"])
                    if item["type"] == "result":
                        results_without_frame.add(item["job_id"])

    async def quiet(self, seconds: float = 0.5) -> None:
        """Read whatever else comes within `seconds` (to catch stray messages)."""
        try:
            while True:
                await self.receive(timeout=seconds)
        except TimeoutError:
            pass

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.received if isinstance(m, dict) and (kind is None or m.get("type") == kind)]

    def ends_of(self, job_id: str) -> list[dict[str, Any]]:
        return [m for m in self.messages() if m.get("type") in TERMINAL and m.get("job_id") == job_id]

    async def close(self) -> None:
        await self.socket.close()
