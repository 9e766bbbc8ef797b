"""Reconnect delays: quick first retries (a backend restarting), then a slow pace (backend off)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 10.0
    jitter: float = 0.1  # fraction of the delay, so several clients don't retry in lockstep
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * self.factor**self.attempts)
        if delay < self.maximum:  # at the slow pace, stop counting: factor**attempts would overflow a float
            self.attempts += 1
        if self.jitter:
            delay *= 1.0 + self.rng.uniform(-self.jitter, self.jitter)
        return max(0.0, delay)

    def reset(self) -> None:
        self.attempts = 0
