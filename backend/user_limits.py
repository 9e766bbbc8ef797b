"""Per-user limits across all of a user's connections: queued jobs, and images asked for per minute.

A user is the key backend/admission.py's `user_key` gives a connection (an access token by its place in the
server's list, or a client address). Round-robin turns (backend/turns.py) already keep one user from taking
more than its share of the worker; these limits keep one user from making the queue, and so everyone's memory
and wait, unbounded: a script queuing hundreds of Generate jobs from many connections is told `busy` with a
`retry_after` hint instead.

Live frames are neither counted nor refused here. Each connection holds at most one queued live frame (a new
one supersedes it), so they are bounded already, and a frame comes every few hundred milliseconds while a
painter paints: counted against a per-minute budget, they would lock a live painter out of their own canvas.
Only final jobs (Generate, inpaint, upscale, control images) count: one image each, a batch of N counts N.

Pure bookkeeping, no server: the server tells it how many final jobs a user has queued (it owns the queues)
and charges each job once the scheduler took it; a test drives it with its own clock.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_WAIT_S = 2.0  # the wait hinted for a queue slot before any job was timed
MAX_QUEUE_WAIT_S = 60.0  # a hint longer than this would read as "never"; the painter can always try sooner
PACE_WEIGHT = 0.2  # how much each newly timed job moves the typical job time (exponential average)


@dataclass(frozen=True)
class UserLimitSettings:
    # Final jobs waiting for the worker (not the running one) per user, across all its connections. A painter
    # clicking Generate rarely has more than two or three waiting; 16 only stops scripts.
    max_queued_jobs: int = 16
    # Result images of final jobs asked for per user in any `window_s`. A painter generating batches of 4
    # every few seconds stays far below 120; a script asking for thousands an hour does not.
    images_per_minute: int = 120
    window_s: float = 60.0


@dataclass(frozen=True)
class Refusal:
    """Why a job is refused, in words for the painter, and when the same job may be sent again."""

    message: str
    retry_after: float  # seconds


@dataclass
class _Spent:
    """One user's images asked for within the window: (when, how many) oldest first, and their sum."""

    entries: deque[tuple[float, int]] = field(default_factory=deque)
    images: int = 0

    def forget_before(self, cutoff: float) -> None:
        while self.entries and self.entries[0][0] <= cutoff:
            _, count = self.entries.popleft()
            self.images -= count


class UserLimits:
    """The accounting for every user of one server; lives on its event loop (not thread-safe)."""

    def __init__(
        self, settings: UserLimitSettings | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings or UserLimitSettings()
        self._clock = clock
        self._spent: dict[str, _Spent] = {}
        self.pace = WorkPace()

    def check(
        self, user: str, *, live: bool, images: int, queued: int, waiting_users: int = 1
    ) -> Refusal | None:
        """May `user` queue a job rendering `images` images, with `queued` final jobs already waiting?
        Nothing is charged: call `charge` once the job is queued. `waiting_users`: users with jobs
        unfinished, for the hint of how long a queue slot takes to free."""
        if live:
            return None
        settings = self.settings
        if queued >= settings.max_queued_jobs:
            return Refusal(
                f"You have {queued} jobs waiting for the worker, the most one user may have queued "
                f"(across all your connections). Wait for a result or cancel a job.",
                self.pace.wait_hint(waiting_users),
            )
        wait = self.wait_for_images(user, images)
        if wait > 0:
            return Refusal(
                f"You asked for {self.spent(user)} images in the last {settings.window_s:g} s; one user may "
                f"ask for {settings.images_per_minute} in that time. This job's {images} fit again in "
                f"{math.ceil(wait)} s.",
                wait,
            )
        return None

    def charge(self, user: str, images: int, *, live: bool) -> None:
        """A job of `user` rendering `images` images was queued (live frames are not counted)."""
        if live or images <= 0:
            return
        now = self._clock()
        spent = self._current(user, now)
        spent.entries.append((now, images))
        spent.images += images

    def spent(self, user: str) -> int:
        """Images `user` asked for within the window, as of now."""
        spent = self._spent.get(user)
        if spent is None:
            return 0
        spent.forget_before(self._clock() - self.settings.window_s)
        return spent.images

    @property
    def users_tracked(self) -> int:
        """Users with images still in the window (memory is bounded by those, not by everyone ever seen)."""
        return len(self._spent)

    def wait_for_images(self, user: str, images: int) -> float:
        """Seconds until `images` more fit in `user`'s budget (0: they fit now). A job larger than the whole
        budget (a batch of 8 with a budget of 4) waits for a window with nothing else in it, not forever."""
        now = self._clock()
        spent = self._spent.get(user)
        if spent is None:
            return 0.0
        spent.forget_before(now - self.settings.window_s)
        room_needed = min(images, self.settings.images_per_minute)
        over = spent.images + room_needed - self.settings.images_per_minute
        if over <= 0:
            return 0.0
        # The oldest entries age out first: wait until enough of them have.
        freed = 0
        for when, count in spent.entries:
            freed += count
            if freed >= over:
                return max(0.0, when + self.settings.window_s - now)
        return self.settings.window_s  # unreachable: everything spent ages out within one window

    def _current(self, user: str, now: float) -> _Spent:
        spent = self._spent.get(user)
        if spent is None:
            self._forget_idle(now)
            spent = self._spent[user] = _Spent()
        spent.forget_before(now - self.settings.window_s)
        return spent

    def _forget_idle(self, now: float) -> None:
        """Users whose images all aged out take no memory (addresses come and go)."""
        cutoff = now - self.settings.window_s
        for user, spent in list(self._spent.items()):
            spent.forget_before(cutoff)
            if not spent.entries:
                del self._spent[user]


@dataclass
class WorkPace:
    """How long a job typically runs on the worker, for the hint given with a full queue: a user's next queued
    job starts within about one round of turns, one job for each user waiting."""

    typical_s: float | None = None

    def ran(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            return
        previous = self.typical_s
        self.typical_s = seconds if previous is None else previous + PACE_WEIGHT * (seconds - previous)

    def wait_hint(self, waiting_users: int = 1) -> float:
        """Seconds worth waiting before a full queue has room again: at least 1, at most MAX_QUEUE_WAIT_S."""
        typical = DEFAULT_WAIT_S if self.typical_s is None else self.typical_s
        return float(min(MAX_QUEUE_WAIT_S, max(1.0, math.ceil(typical * max(1, waiting_users)))))
