"""Simulated painters for the pool test: each connects through the balancer with a session key of its own (as
the plugin does), sends a live frame per round and a Generate job every few rounds, and behaves as the plugin
does when its connection ends: it reconnects by itself and sends its current live frame again. Every job's
ending is recorded, and every wait is bounded, so a job that hangs fails the test instead of stalling it."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from krita_plugin.network import SESSION_HEADER, WORKER_HEADER
from protocol import Accepted, Cancelled, Error, ImageFrame, JobParams, Result, result_slot
from tests.protocol_client import Client

JOB_TIMEOUT_S = 20.0  # no job may take longer to end (tiny models render in well under a second)
RECONNECT_TIMEOUT_S = 30.0
SIDE = 48
# Small jobs: ten painters share one CPU worker after a failover, and each must be served within seconds.
LIVE = JobParams(prompt="a tree", steps=2, strength=0.6, seed=7)
GENERATE = JobParams(prompt="a tree at dusk", steps=2, strength=0.8, seed=11)
GENERATE_EVERY = 4  # rounds


@dataclass
class JobEnd:
    painter: int
    job_id: str
    live: bool
    worker: str  # the worker that took the job (the balancer's name for it)
    accepted: bool  # the worker said it took the job in
    sent_at: float
    ended_at: float
    how: str  # result, cancelled, error:<code>, lost:<close code> (the connection ended first)


@dataclass
class Loss:
    """A connection that ended under a painter: when, with which close code (None: cut without one), where."""

    at: float
    code: int | None
    worker: str


@dataclass
class _Open:
    live: bool
    sent_at: float
    accepted: bool = False
    result: Result | None = None
    images: int = 0


@dataclass
class Painter:
    index: int
    url: str
    key: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    worker: str = ""
    ends: list[JobEnd] = field(default_factory=list)
    results: list[tuple[float, str]] = field(default_factory=list)  # (when, worker) of each result
    losses: list[Loss] = field(default_factory=list)
    connects: list[tuple[float, str]] = field(default_factory=list)  # (when, worker)
    problems: list[str] = field(default_factory=list)  # what must not happen (a hang, a refused reconnect)

    def __post_init__(self) -> None:
        self._round = 0
        self._ids = 0
        self._client: Client | None = None

    # --- the session ---------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        try:
            self._client = await self._connect()
            while not stop.is_set():
                await self._one_round()
                await asyncio.sleep(0.05 + 0.01 * self.index)  # the painter's pace between strokes
        except Exception as error:  # noqa: BLE001 - recorded, and the test fails on it
            self.problems.append(f"painter {self.index}: {type(error).__name__}: {error}")
        finally:
            if self._client is not None:
                await self._client.close()

    async def _connect(self) -> Client:
        deadline = time.monotonic() + RECONNECT_TIMEOUT_S
        delay = 0.05
        while True:
            try:
                client = await asyncio.wait_for(
                    Client.connect(self.url, headers={SESSION_HEADER: self.key}), 10.0
                )
            except (OSError, InvalidHandshake, ConnectionRefusedError, TimeoutError, ConnectionClosed):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(0.5, delay * 2)
                continue
            self.worker = (
                client.socket.response.headers.get(WORKER_HEADER, "") if client.socket.response else ""
            )
            self.connects.append((time.monotonic(), self.worker))
            return client

    async def _one_round(self) -> None:
        """A live frame (and every few rounds a Generate job), then their endings; a lost connection is
        replaced at once, and the next round resends the live frame."""
        assert self._client is not None
        self._round += 1
        open_jobs: dict[str, _Open] = {}
        worker = self.worker
        try:
            open_jobs[await self._send(live=True)] = _Open(True, time.monotonic())
            if self._round % GENERATE_EVERY == 0:
                open_jobs[await self._send(live=False)] = _Open(False, time.monotonic())
            await asyncio.wait_for(self._collect(open_jobs, worker), JOB_TIMEOUT_S)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            now = time.monotonic()
            self.losses.append(Loss(now, code, worker))
            for job_id in list(open_jobs):
                self._end(open_jobs, job_id, worker, f"lost:{code}")
            self._client = await self._connect()
        except TimeoutError:
            self.problems.append(f"painter {self.index}: jobs {sorted(open_jobs)} on {worker} hung")
            raise

    async def _send(self, *, live: bool) -> str:
        assert self._client is not None
        self._ids += 1
        job_id = f"p{self.index}-{'live' if live else 'gen'}-{self._ids}"
        await self._client.send_job(self._canvas(), LIVE if live else GENERATE, job_id=job_id, live=live)
        return job_id

    def _canvas(self) -> np.ndarray:
        """This painter's colour with one more stroke each round (an unchanged canvas would be answered from
        the worker's cache, without rendering)."""
        canvas = np.full((SIDE, SIDE, 4), (40 * self.index % 256, 90, 160, 255), dtype=np.uint8)
        row = self._round % SIDE
        canvas[row, :, :3] = 255
        return canvas

    async def _collect(self, open_jobs: dict[str, _Open], worker: str) -> None:
        """Reads until every open job has ended; each is taken out of `open_jobs` as it ends."""
        assert self._client is not None
        while open_jobs:
            item = await self._client.receive()
            if isinstance(item, ImageFrame):
                job = open_jobs.get(item.job_id)
                if job is None or job.result is None or item.slot != result_slot(job.images):
                    continue
                job.images += 1
                if job.images == job.result.count:
                    self._end(open_jobs, item.job_id, worker, "result")
                    self.results.append((time.monotonic(), worker))
                continue
            job_id = getattr(item, "job_id", None)
            job = open_jobs.get(job_id) if isinstance(job_id, str) else None
            if job is None or not isinstance(job_id, str):
                continue
            if isinstance(item, Accepted):
                job.accepted = True
            elif isinstance(item, Result):
                job.result = item
            elif isinstance(item, Cancelled):
                self._end(open_jobs, job_id, worker, "cancelled")
            elif isinstance(item, Error):
                self._end(open_jobs, job_id, worker, f"error:{item.code}")
                if item.code == "busy":
                    await asyncio.sleep(0.2)  # as the plugin waits before sending again

    def _end(self, open_jobs: dict[str, _Open], job_id: str, worker: str, how: str) -> None:
        job = open_jobs.pop(job_id)
        self.ends.append(JobEnd(self.index, job_id, job.live, worker, job.accepted, job.sent_at,
                                time.monotonic(), how))  # fmt: skip

    # --- what the test asks ---------------------------------------------------------------------------------

    def first_result_after(self, moment: float, worker: str | None = None) -> float | None:
        """When this painter was first served after `moment` (by `worker`, if named)."""
        for at, by in self.results:
            if at > moment and (worker is None or by == worker):
                return at
        return None
