"""Runs the real backend server on a loopback port in a background thread for a test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from backend.config import ServerConfig
from backend.engine_worker import EngineWorker
from backend.server import Server
from backend.user_limits import UserLimitSettings

UNLIMITED_USERS = UserLimitSettings(max_queued_jobs=1_000_000, images_per_minute=1_000_000_000)


def random_canvas(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An opaque RGBA painting of noise: every pixel differs, so any unwanted change shows."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    image[..., 3] = 255
    return image


def run(coroutine: Coroutine[Any, Any, Any], timeout: float = 300) -> Any:
    """Run a client scenario to completion, failing instead of hanging when the server never answers."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


class RunningServer:
    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop, port: int) -> None:
        self.server = server
        self.loop = loop
        self.port = port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def call(self, function: Callable[[], Any]) -> Any:
        """Run something on the server's loop (to inspect its state safely)."""

        async def wrapper() -> Any:
            return function()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout=10)


@contextmanager
def running_server(
    models_dir: Path, engine_factory: Callable[[ServerConfig], EngineWorker] | None = None, **overrides: Any
) -> Iterator[RunningServer]:
    # Per-user limits (backend/user_limits.py) are off unless a test sets them: a module's tests share one
    # server and one user (127.0.0.1), and would otherwise spend its images-per-minute budget between them.
    overrides.setdefault("user_limits", UNLIMITED_USERS)
    config = replace(ServerConfig(port=0, models_dir=models_dir), **overrides)
    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        server = Server(config, engine_factory(config) if engine_factory else None)
        try:
            started["port"] = await server.start()
            started["server"] = server
        except BaseException as error:
            started["error"] = error
            raise
        finally:
            ready.set()
        await stop.wait()
        await server.close()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in started:
        raise started["error"]
    try:
        yield RunningServer(started["server"], loop, started["port"])
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
