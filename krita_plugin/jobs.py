"""Which job's result the panel still wants, and when live mode may send the next canvas.

Pure bookkeeping (no Qt, no Krita, no network) so stale-result dropping and the no-backlog rule are testable.
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
    """Remembers the one job whose result the painter is waiting for; every other result is stale."""

    current: str | None = None
    current_live: bool = False
    started_at: float = 0.0
    last_activity: float = 0.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def start(self, job_id: str, live: bool) -> None:
        self.current = job_id
        self.current_live = live
        self.started_at = self.last_activity = self.clock()

    def wants(self, job_id: str | None) -> bool:
        return job_id is not None and job_id == self.current

    def touch(self, job_id: str) -> None:
        """Progress from the current job: it is alive, however slow."""
        if self.wants(job_id):
            self.last_activity = self.clock()

    def finish(self, job_id: str | None) -> bool:
        """Marks the current job done; False (and nothing changes) when the message was about a stale job."""
        if not self.wants(job_id):
            return False
        self.current = None
        return True

    def forget(self) -> str | None:
        """Stops waiting (cancel, disconnect); returns the id that was pending."""
        job_id, self.current = self.current, None
        return job_id

    @property
    def busy(self) -> bool:
        return self.current is not None

    def silent_for(self) -> float:
        return self.clock() - self.last_activity if self.busy else 0.0


@dataclass
class LiveState:
    """Live mode's rule: send only when the canvas changed, and never more than one live job in flight.

    While a live job runs, further changes are not queued: the next send happens after it ends, with the
    canvas as it is then. That keeps the latency from a stroke to its image at most about two generation
    times, and no backlog can form when the backend is slower than the brush.
    """

    sent_fingerprint: str | None = None
    in_flight: str | None = None
    sent_at: float = 0.0
    retry_after: float = 0.0  # no resend before this time (after a transient error)
    stuck_after: float = 30.0  # a live job silent this long is presumed lost
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def should_send(self, fingerprint: str) -> bool:
        now = self.clock()
        if self.in_flight is not None and now - self.sent_at < self.stuck_after:
            return False
        if now < self.retry_after:
            return False
        return fingerprint != self.sent_fingerprint

    def sent(self, job_id: str, fingerprint: str) -> None:
        self.in_flight = job_id
        self.sent_fingerprint = fingerprint
        self.sent_at = self.clock()

    def ended(self, job_id: str | None, *, retry_in: float | None = None) -> None:
        """A live job finished, failed or was cancelled. With retry_in, the same canvas goes again later."""
        if job_id is not None and job_id != self.in_flight:
            return
        self.in_flight = None
        if retry_in is not None:
            self.sent_fingerprint = None
            self.retry_after = self.clock() + retry_in

    def reset(self) -> None:
        """Disconnected or live turned off: the next send starts from scratch."""
        self.in_flight = None
        self.sent_fingerprint = None
        self.retry_after = 0.0
