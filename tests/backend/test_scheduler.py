"""Scheduling rules with a controllable work function: fairness, latest-wins, cancel, disconnect."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from backend.engine.jobs import JobCancelled
from backend.scheduler import QueueFullError, ScheduledJob, Scheduler


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self.finished = asyncio.Event()

    def job_progress(self, job_id: str, step: int, total: int) -> None:
        self.events.append(("progress", job_id, (step, total)))

    async def job_done(self, job: ScheduledJob[Any], result: Any) -> None:
        self.events.append(("done", job.job_id, result))
        self.finished.set()

    async def job_cancelled(self, job: ScheduledJob[Any], reason: str) -> None:
        self.events.append(("cancelled", job.job_id, reason))
        self.finished.set()

    async def job_failed(self, job: ScheduledJob[Any], error: BaseException) -> None:
        self.events.append(("failed", job.job_id, str(error)))
        self.finished.set()


class GatedWork:
    """Each job runs `steps` steps; a step waits for the test to open the gate."""

    def __init__(self, steps: int = 3) -> None:
        self.steps = steps
        self.gate = threading.Semaphore(0)
        self.order: list[str] = []

    def __call__(self, payload: str, progress: Any, is_cancelled: Any) -> str:
        self.order.append(payload)
        for step in range(1, self.steps + 1):
            if is_cancelled():
                raise JobCancelled()
            self.gate.acquire(timeout=10)
            if payload == "explode":
                raise RuntimeError("boom")
            progress(step, self.steps)
        return f"image of {payload}"


async def settle(condition: Any, timeout: float = 10) -> None:
    async def wait() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(wait(), timeout)


def job(client: int, job_id: str, live: bool = False) -> ScheduledJob[str]:
    return ScheduledJob(client, job_id, live, job_id)


def test_clients_are_served_round_robin() -> None:
    async def scenario() -> None:
        work = GatedWork(steps=1)
        scheduler: Scheduler[str] = Scheduler(work)
        a, b = Recorder(), Recorder()
        scheduler.register(1, a)
        scheduler.register(2, b)
        for name in ("a1", "a2", "a3"):
            scheduler.submit(job(1, name))
        scheduler.submit(job(2, "b1"))
        scheduler.submit(job(2, "b2"))
        scheduler.start()
        for _ in range(5):
            work.gate.release()
        await settle(lambda: len(work.order) == 5 and scheduler.running is None)
        assert work.order == ["a1", "b1", "a2", "b2", "a3"]
        await scheduler.stop()

    asyncio.run(scenario())


def test_live_jobs_are_latest_wins() -> None:
    async def scenario() -> None:
        work = GatedWork(steps=3)
        scheduler: Scheduler[str] = Scheduler(work)
        recorder = Recorder()
        scheduler.register(1, recorder)
        scheduler.start()
        scheduler.submit(job(1, "f1", live=True))
        await settle(lambda: scheduler.running is not None)
        assert scheduler.submit(job(1, "f2", live=True)) == []
        superseded = scheduler.submit(job(1, "f3", live=True))
        assert [j.job_id for j in superseded] == ["f2"]
        for _ in range(4):
            work.gate.release()
        await settle(lambda: any(e[0] == "done" for e in recorder.events))
        outcomes = [(kind, job_id, value) for kind, job_id, value in recorder.events if kind != "progress"]
        assert outcomes == [("cancelled", "f1", "superseded"), ("done", "f3", "image of f3")]
        assert work.order == ["f1", "f3"]  # the superseded queued frame never ran
        await scheduler.stop()

    asyncio.run(scenario())


def test_cancel_queued_and_running_and_disconnect() -> None:
    async def scenario() -> None:
        work = GatedWork(steps=2)
        scheduler: Scheduler[str] = Scheduler(work)
        recorder = Recorder()
        scheduler.register(1, recorder)
        scheduler.start()
        scheduler.submit(job(1, "running"))
        scheduler.submit(job(1, "queued"))
        await settle(lambda: scheduler.running is not None)
        cancelled = scheduler.cancel(1, "queued")
        assert cancelled is not None and cancelled.cancel_flag.is_set()
        assert scheduler.cancel(1, "running") is scheduler.running
        assert scheduler.cancel(1, "unknown") is None
        work.gate.release()
        await settle(lambda: scheduler.running is None)
        assert ("cancelled", "running", "cancelled") in recorder.events
        assert work.order == ["running"]
        # a client that goes away stops its running job and its queue
        scheduler.submit(job(1, "orphan"))
        scheduler.submit(job(1, "orphan-queued"))
        await settle(lambda: scheduler.running is not None)
        running = scheduler.running
        scheduler.unregister(1)
        work.gate.release()
        await settle(lambda: scheduler.running is None)
        assert running is not None and running.cancel_reason == "disconnected"
        assert work.order == ["running", "orphan"]
        await scheduler.stop()

    asyncio.run(scenario())


def test_a_failing_job_does_not_stop_the_worker() -> None:
    async def scenario() -> None:
        work = GatedWork(steps=1)
        scheduler: Scheduler[str] = Scheduler(work)
        recorder = Recorder()
        scheduler.register(1, recorder)
        scheduler.start()
        scheduler.submit(job(1, "explode"))
        scheduler.submit(job(1, "fine"))
        work.gate.release()
        work.gate.release()
        await settle(lambda: len([e for e in recorder.events if e[0] in ("done", "failed")]) == 2)
        assert ("failed", "explode", "boom") in recorder.events
        assert ("done", "fine", "image of fine") in recorder.events
        await scheduler.stop()

    asyncio.run(scenario())


def test_stop_waits_for_the_worker_at_most_the_grace_period() -> None:
    async def scenario() -> None:
        scheduler: Scheduler[str] = Scheduler(GatedWork(steps=1))
        scheduler.start()
        release = threading.Event()
        scheduler.run_in_worker(lambda: release.wait(10))  # e.g. a checkpoint load: not interruptible
        started = time.monotonic()
        assert await scheduler.stop(grace=0.3) is False
        assert time.monotonic() - started < 2
        release.set()
        assert await scheduler.stop(grace=5) is True  # a second stop waits for the same worker

        idle: Scheduler[str] = Scheduler(GatedWork(steps=1))
        idle.start()
        assert await idle.stop(grace=5) is True

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_live_frame_refused_for_a_full_queue_does_not_cancel_the_running_one() -> None:
    async def scenario() -> None:
        work = GatedWork(steps=1)
        scheduler: Scheduler[str] = Scheduler(work, max_queued_per_client=2)
        recorder = Recorder()
        scheduler.register(1, recorder)
        scheduler.start()
        scheduler.submit(ScheduledJob(1, "live-1", True, "live-1"))
        await settle(lambda: scheduler.running is not None)
        scheduler.submit(ScheduledJob(1, "gen-1", False, "gen-1"))
        scheduler.submit(ScheduledJob(1, "gen-2", False, "gen-2"))
        with pytest.raises(QueueFullError):
            scheduler.submit(ScheduledJob(1, "live-2", True, "live-2"))
        running = scheduler.running
        assert running is not None and not running.cancel_flag.is_set()
        for _ in range(3):
            work.gate.release()
        await settle(lambda: len([e for e in recorder.events if e[0] != "progress"]) == 3)
        outcomes: list[tuple[str, str, Any]] = [e for e in recorder.events if e[0] != "progress"]
        assert [(kind, job_id) for kind, job_id, _ in outcomes] == [
            ("done", "live-1"),
            ("done", "gen-1"),
            ("done", "gen-2"),
        ]
        await scheduler.stop()

    asyncio.run(scenario())
