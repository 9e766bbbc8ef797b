"""Which job's result the panel still wants (ids and the one job being waited for).

Pure bookkeeping (no Qt, no Krita, no network) so stale-result dropping is testable.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class JobIds:
    """Unique job ids per panel: a random session prefix (reconnects must never reuse an id) and a counter."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or os.urandom(3).hex()
        self._counter = itertools.count(1)

    def next(self, kind: str) -> str:
        return f"{kind}-{self.prefix}-{next(self._counter)}"


@dataclass
class JobTracker:
    """Remembers the jobs whose results the painter is waiting for (one live frame, or a Generate batch);
    every other result is stale."""

    current: list[str] = field(default_factory=list)
    current_live: bool = False
    last_activity: float = 0.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def start(self, job_ids: str | list[str], live: bool) -> None:
        """A new request replaces whatever was awaited."""
        self.current = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        self.current_live = live
        self.last_activity = self.clock()

    def wants(self, job_id: str | None) -> bool:
        return job_id is not None and job_id in self.current

    def touch(self, job_id: str) -> None:
        """Progress from an awaited job: it is alive, however slow."""
        if self.wants(job_id):
            self.last_activity = self.clock()

    def finish(self, job_id: str | None) -> bool:
        """Marks an awaited job done; False (and nothing changes) when the message was about a stale job."""
        if not self.wants(job_id):
            return False
        self.current.remove(job_id)  # type: ignore[arg-type]
        self.last_activity = self.clock()
        return True

    def forget(self) -> list[str]:
        """Stops waiting (cancel, disconnect); returns the ids that were pending."""
        job_ids, self.current = self.current, []
        return job_ids

    @property
    def busy(self) -> bool:
        return bool(self.current)

    def silent_for(self) -> float:
        return self.clock() - self.last_activity if self.busy else 0.0
