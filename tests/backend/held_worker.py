"""An engine worker whose jobs run only when the test lets them: a worker with jobs queued and running."""

from __future__ import annotations

import threading
from collections.abc import Callable

from backend.config import ServerConfig
from backend.engine import EngineJob, EngineResult
from backend.engine.jobs import JobCancelled
from backend.engine_worker import EngineWorker


class HeldWorker(EngineWorker):
    """The real worker (model files, loading), but each job holds the worker thread until `release` is set,
    then answers with its canvas. It stops like the engine does when cancelled: at its next "step"."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.release = threading.Event()
        self.started = threading.Event()  # set when a job starts running

    def run(
        self, job: EngineJob, on_progress: Callable[[int, int], None], is_cancelled: Callable[[], bool]
    ) -> EngineResult:
        self.started.set()
        while not self.release.wait(0.02):
            if is_cancelled():
                raise JobCancelled()
        on_progress(1, 1)
        height, width = job.canvas.shape[:2]
        return EngineResult(job.canvas, (0, 0, width, height), {}, {})
