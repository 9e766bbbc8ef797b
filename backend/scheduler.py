"""Job scheduling: one worker owns the model; users are served round-robin, then each user's connections
(backend/turns.py); live jobs are latest-wins.

The scheduler lives on the asyncio loop. The work itself runs on a single worker thread, so the loop keeps
answering handshakes, cancels and other clients while the GPU is busy. Cancellation is cooperative: the
engine polls `is_cancelled` at every step boundary and stops the job by raising its `JobCancelled`. The
server's payload is the engine's job object itself (`EngineJob`), resolved models included.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from .engine.jobs import JobCancelled
from .turns import FairTurns

Payload = TypeVar("Payload")
log = logging.getLogger("backend.scheduler")


@dataclass(eq=False)
class ScheduledJob(Generic[Payload]):
    client_id: int
    job_id: str
    live: bool
    payload: Payload
    cancel_flag: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "cancelled"

    def cancel(self, reason: str) -> None:
        if not self.cancel_flag.is_set():
            self.cancel_reason = reason
            self.cancel_flag.set()


class JobReporter(Protocol):
    """How the scheduler reports back to the connection that owns a job (always called on the event loop)."""

    def job_progress(self, job_id: str, step: int, total: int) -> None: ...
    async def job_done(self, job: ScheduledJob[Any], result: Any) -> None: ...
    async def job_cancelled(self, job: ScheduledJob[Any], reason: str) -> None: ...
    async def job_failed(self, job: ScheduledJob[Any], error: BaseException) -> None: ...


WorkFunction = Callable[[Payload, Callable[[int, int], None], Callable[[], bool]], Any]


class QueueFullError(Exception):
    pass


class Scheduler(Generic[Payload]):
    def __init__(self, work: WorkFunction, max_queued_per_client: int = 8) -> None:
        self._work = work
        self._max_queued = max_queued_per_client
        self._queues: dict[int, OrderedDict[str, ScheduledJob[Payload]]] = {}
        self._reporters: dict[int, JobReporter] = {}
        self._users: dict[int, str] = {}  # client -> the user it belongs to (who gets a fair share)
        self._turns = FairTurns()
        self._running: ScheduledJob[Payload] | None = None
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.Future[None] | None = None  # set by stop(): done once the worker is idle

    # --- client side ----------------------------------------------------------------------------------

    def register(self, client_id: int, reporter: JobReporter, user: str | None = None) -> None:
        """`user`: whose share of the worker this client's jobs take (None: a user of its own)."""
        self._queues[client_id] = OrderedDict()
        self._reporters[client_id] = reporter
        self._users[client_id] = user if user is not None else f"client-{client_id}"

    def submit(self, job: ScheduledJob[Payload]) -> list[ScheduledJob[Payload]]:
        """Queue a job; returns the jobs it superseded (already removed or flagged for cancellation)."""
        queue = self._queues[job.client_id]
        if job.job_id in queue or (self._running is not None and self._running.job_id == job.job_id and
                                   self._running.client_id == job.client_id):  # fmt: skip
            raise KeyError(job.job_id)
        # Counted before superseding: a job refused for a full queue must not cancel anything.
        staying = sum(1 for queued in queue.values() if not (job.live and queued.live))
        if staying >= self._max_queued:
            raise QueueFullError(f"{staying} jobs are already queued for this connection")
        superseded = self.supersede_live(job.client_id) if job.live else []
        queue[job.job_id] = job
        self._turns.waiting(self._users[job.client_id], job.client_id)
        self._wakeup.set()
        return superseded

    def supersede_live(self, client_id: int) -> list[ScheduledJob[Payload]]:
        """Drop the client's queued live jobs (returned) and flag its running live job."""
        queue = self._queues.get(client_id, OrderedDict())
        superseded = [job for job in queue.values() if job.live]
        for job in superseded:
            del queue[job.job_id]
            job.cancel("superseded")
        running = self._running
        if running is not None and running.client_id == client_id and running.live:
            running.cancel("superseded")
        return superseded

    def cancel(self, client_id: int, job_id: str, reason: str = "cancelled") -> ScheduledJob[Payload] | None:
        """Cancel a queued job (removed, returned) or a running one (flagged; its callback reports)."""
        queue = self._queues.get(client_id, OrderedDict())
        if job_id in queue:
            job = queue.pop(job_id)
            job.cancel(reason)
            return job
        running = self._running
        if running is not None and running.client_id == client_id and running.job_id == job_id:
            running.cancel(reason)
            return running
        return None

    def unregister(self, client_id: int) -> None:
        """A client went away: drop its queue and stop its running job at the next step."""
        self._queues.pop(client_id, None)
        self._reporters.pop(client_id, None)
        self._users.pop(client_id, None)  # its place in the turns is skipped once its queue is gone
        running = self._running
        if running is not None and running.client_id == client_id:
            running.cancel("disconnected")

    def queue_position(self, client_id: int, job_id: str) -> int:
        queue = self._queues.get(client_id, {})
        return list(queue).index(job_id) if job_id in queue else 0

    def queued_by_kind(self) -> dict[str, int]:
        """Jobs waiting for the worker (not the running one), by kind: live frames, final (Generate) jobs."""
        counts = {"live": 0, "final": 0}
        for queue in self._queues.values():
            for job in queue.values():
                counts["live" if job.live else "final"] += 1
        return counts

    @property
    def running(self) -> ScheduledJob[Payload] | None:
        return self._running

    # --- worker side ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._dispatch_forever(), name="scheduler")

    async def stop(self, grace: float | None = None) -> bool:
        """Stops dispatching and cancels the running job (it ends at its next step). Waits for the worker to
        finish what it is in, at most `grace` seconds (None: as long as it takes); a checkpoint load can't be
        interrupted. True if the worker finished."""
        if self._running is not None:
            self._running.cancel("server stopping")
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._idle is None:
            # Runs once the worker is through with everything submitted before it (one worker, in order).
            self._idle = asyncio.get_running_loop().run_in_executor(self._executor, lambda: None)
            self._executor.shutdown(wait=False)
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), grace)
        except asyncio.TimeoutError:
            return False
        return True

    def run_in_worker(self, function: Callable[[], Any]) -> Awaitable[Any]:
        """Run something that must own the model (loading, warm-up) on the worker thread."""
        return asyncio.get_running_loop().run_in_executor(self._executor, function)

    def _next_job(self) -> ScheduledJob[Payload] | None:
        client_id = self._turns.take(lambda client: bool(self._queues.get(client)))
        if client_id is None:
            return None
        queue = self._queues[client_id]
        _, job = queue.popitem(last=False)
        if queue:
            self._turns.waiting(self._users[client_id], client_id)
        return job

    async def _dispatch_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = self._next_job()
            if job is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._running = job
            reporter = self._reporters.get(job.client_id)

            def report(step: int, total: int, job_id: str = job.job_id, reporter: Any = reporter) -> None:
                if reporter is not None:
                    loop.call_soon_threadsafe(reporter.job_progress, job_id, step, total)

            try:
                result = await loop.run_in_executor(
                    self._executor, self._work, job.payload, report, job.cancel_flag.is_set
                )
            except JobCancelled:
                await self._report(job, "job_cancelled", job.cancel_reason)
            except Exception as error:  # noqa: BLE001 - any engine failure is reported to its client only
                await self._report(job, "job_failed", error)
            else:
                if job.cancel_flag.is_set():
                    await self._report(job, "job_cancelled", job.cancel_reason)
                else:
                    await self._report(job, "job_done", result)
            finally:
                self._running = None

    async def _report(self, job: ScheduledJob[Payload], kind: str, value: Any) -> None:
        reporter = self._reporters.get(job.client_id)
        if reporter is None:
            return
        try:
            await getattr(reporter, kind)(job, value)
        except Exception:
            log.exception("could not report %s of job %s to client %d", kind, job.job_id, job.client_id)
