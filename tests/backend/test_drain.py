"""Draining a worker: nothing new is taken, what runs finishes (or is cancelled at the deadline), and every
client is told "going away" (close code 1001) so it moves on; SIGTERM does it for the real process."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import CloseCode

from protocol import Cancelled, Error, ErrorCode, JobParams, Progress, Result
from tests.backend.held_worker import HeldWorker
from tests.backend.http_probe import health, sample, scrape, wait_until_loaded
from tests.backend.server_harness import RunningServer, run, running_server
from tests.backend.server_harness import random_canvas as canvas
from tests.e2e.backend_process import BackendProcess
from tests.fixtures.tiny_models import TinyModels
from tests.protocol_client import Client

pytestmark = pytest.mark.slow


def start_drain(server: RunningServer, timeout: float) -> asyncio.Future[bool]:
    """Drain the server on its own loop (as SIGTERM does in the process); the future says if it emptied."""
    future = asyncio.run_coroutine_threadsafe(server.server.drain(timeout), server.loop)
    return asyncio.wrap_future(future)


async def closed_with(client: Client, timeout: float = 10) -> tuple[int | None, str | None]:
    await asyncio.wait_for(client.socket.wait_closed(), timeout)
    return client.socket.close_code, client.socket.close_reason


def test_drain_closes_idle_clients_at_once_refuses_new_work_and_lets_the_running_job_finish(
    tiny_models: TinyModels,
) -> None:
    params = JobParams(checkpoint=tiny_models.checkpoint)

    async def scenario(server: RunningServer) -> None:
        busy, idle = await Client.connect(server.url), await Client.connect(server.url)
        engine: HeldWorker = server.server.engine  # type: ignore[assignment]
        running = await busy.send_job(canvas(16, 8), params)
        await asyncio.to_thread(engine.started.wait, 30)
        drained = start_drain(server, 30)
        # The idle painter is told at once, and can go to another worker.
        assert await closed_with(idle) == (
            CloseCode.GOING_AWAY,
            "going away: this worker is shutting down; reconnect",
        )
        status, body = await asyncio.to_thread(health, server.port)
        assert (status, body["state"]) == (503, "draining")
        with pytest.raises(InvalidStatus) as refused:
            await Client.connect(server.url)
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Retry-After"] == "2"
        # The busy one's new job is refused as busy, with a hint; its running job goes on.
        late = await busy.run(canvas(16, 8, 1), params)
        assert isinstance(late.final, Error) and late.final.code == ErrorCode.BUSY.value, late.messages
        assert "Reconnect" in late.final.message
        assert not drained.done()
        engine.release.set()
        replies = await busy.wait_for([running])
        assert isinstance(replies[running].final, Result) and replies[running].image is not None
        assert (await closed_with(busy))[0] == CloseCode.GOING_AWAY
        assert await asyncio.wait_for(drained, 10) is True

    with running_server(tiny_models.root, engine_factory=HeldWorker, preload=False) as server:
        assert wait_until_loaded(server.port)[0] == 200
        run(scenario(server), timeout=120)
        samples = scrape(server.port)
    assert sample(samples, "kld_jobs_total", outcome="result", code="") == 1
    assert sample(samples, "kld_jobs_total", outcome="error", code="busy") == 1
    assert sample(samples, "kld_worker_state", state="draining") == 1


def test_at_the_drain_deadline_what_is_left_is_cancelled_and_the_client_told_going_away(
    tiny_models: TinyModels,
) -> None:
    params = JobParams(checkpoint=tiny_models.checkpoint)

    async def scenario(server: RunningServer) -> None:
        client = await Client.connect(server.url)
        engine: HeldWorker = server.server.engine  # type: ignore[assignment]
        running = await client.send_job(canvas(16, 8), params)
        await asyncio.to_thread(engine.started.wait, 30)
        queued = await client.send_job(canvas(16, 8, 1), params)
        while getattr(await client.receive(), "job_id", None) != queued:  # its `accepted`: it is queued
            pass
        started = time.monotonic()
        assert await start_drain(server, 0.5) is False  # the job never ends by itself
        assert time.monotonic() - started < 5
        closing = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(server.server.close(5), server.loop))
        replies = await client.wait_for([running, queued])
        for reply in replies.values():
            assert isinstance(reply.final, Cancelled) and reply.final.reason == "shutdown", reply.messages
        assert (await closed_with(client))[0] == CloseCode.GOING_AWAY
        assert await asyncio.wait_for(closing, 10) is True  # the held job stopped at its next "step"

    with running_server(tiny_models.root, engine_factory=HeldWorker, preload=False) as server:
        assert wait_until_loaded(server.port)[0] == 200
        run(scenario(server), timeout=120)


def test_sigterm_drains_the_real_process_a_running_job_finishes_and_it_exits_0(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    """`python -m backend` on the tiny models: SIGTERM while a Generate job runs."""
    # A drain bound far above the job's length: a step takes 0.1 s to 2 s on a busy 2-core machine.
    backend = BackendProcess(
        tiny_models.root,
        tiny_models.config_dir,
        tmp_path / "backend.log",
        extra_args=["--drain-timeout", "120"],
    )
    backend.start()
    try:
        assert wait_until_loaded(backend.port)[0] == 200, backend.log_tail()
        # Enough steps that the job still runs well after the signal (sent once its first step is done).
        params = JobParams(checkpoint=tiny_models.checkpoint, steps=12, strength=1.0, prompt="a pear")

        async def scenario() -> tuple[Result | None, int | None, str]:
            client = await Client.connect(f"ws://127.0.0.1:{backend.port}")
            job_id = await client.send_job(canvas(64, 64), params)
            while not isinstance(await client.receive(), Progress):  # the job runs
                pass
            assert backend.process is not None
            backend.process.send_signal(signal.SIGTERM)
            states = []
            deadline = time.monotonic() + 10
            while "draining" not in states and time.monotonic() < deadline:
                states.append((await asyncio.to_thread(health, backend.port))[1]["state"])
            result = None
            try:
                while True:
                    message = await client.receive()
                    if isinstance(message, Result) and message.job_id == job_id:
                        result = message
                    assert not isinstance(message, (Error, Cancelled)), message
            except ConnectionClosed:
                pass
            return result, client.socket.close_code, states[-1]

        result, close_code, state = run(scenario(), timeout=240)
        assert state == "draining", backend.log_tail()
        assert result is not None and result.width == 64, backend.log_tail()
        assert close_code == CloseCode.GOING_AWAY
        assert backend.process is not None
        assert backend.process.wait(30) == 0, backend.log_tail()
        assert "drained" in backend.log_path.read_text()
    finally:
        backend.kill()
