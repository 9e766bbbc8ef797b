"""Live mode's sending rule: send only when the canvas changed, never more than one live job in flight.

Pure bookkeeping (no Qt, no Krita, no network) so the no-backlog rule is testable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


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
    retry_waiting: bool = False  # a refused frame waits for retry_after to be resent without a stroke
    retry_reason: str = ""  # the error code that refused it ("busy", "not_ready")
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
        self.retry_waiting = False
        self.in_flight = job_id
        self.sent_fingerprint = fingerprint
        self.sent_at = self.clock()

    def ended(self, job_id: str | None, *, retry_in: float | None = None, reason: str = "") -> None:
        """A live job finished, failed or was cancelled. With retry_in, the same canvas goes again later."""
        if job_id is not None and job_id != self.in_flight:
            return
        self.in_flight = None
        if retry_in is not None:
            self.sent_fingerprint = None
            self.retry_after = self.clock() + retry_in
            self.retry_waiting = True
            self.retry_reason = reason

    def retry_in(self) -> float | None:
        """Seconds until a refused frame may go again (0: now; the caller checks the canvas), or None when
        none waits. Lets a timer resend it after the server's `retry_after` though the painter is idle."""
        if not self.retry_waiting or self.in_flight is not None:
            return None
        return max(0.0, self.retry_after - self.clock())

    def reset(self) -> None:
        """Disconnected or live turned off: the next send starts from scratch."""
        self.in_flight = None
        self.sent_fingerprint = None
        self.retry_after = 0.0
        self.retry_waiting = False
