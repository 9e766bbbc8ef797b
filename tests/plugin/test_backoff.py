"""The network thread's reconnect delays (krita_plugin/backoff.py)."""

from __future__ import annotations

import random

from krita_plugin.backoff import Backoff


def test_backoff_grows_to_a_cap_and_resets() -> None:
    backoff = Backoff(initial=0.5, factor=2, maximum=4, jitter=0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_jitter_stays_near_the_delay() -> None:
    backoff = Backoff(initial=1, factor=1, maximum=1, jitter=0.1)
    delays = [backoff.next_delay() for _ in range(50)]
    assert all(0.9 <= d <= 1.1 for d in delays)
    assert len(set(delays)) > 1


def test_backoff_keeps_its_pace_after_hours_of_failed_attempts() -> None:
    # With the backend off, the network thread retries every ~10 s: 1024 attempts is under three hours.
    # 2.0 ** 1024 overflows a float; the exception killed the network thread and auto-reconnect with it.
    backoff = Backoff(rng=random.Random(1))
    for _ in range(1100):
        delay = backoff.next_delay()
    assert 0 < delay <= backoff.maximum * (1 + backoff.jitter)
