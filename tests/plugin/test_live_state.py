"""When live mode sends a frame (krita_plugin/live_state.py): only changed canvases, never a backlog."""

from __future__ import annotations

from krita_plugin.live_state import LiveState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_live_sends_only_changed_canvases() -> None:
    live = LiveState(clock=Clock())
    assert live.should_send("fp1")
    live.sent("j1", "fp1")
    live.ended("j1")
    assert not live.should_send("fp1")  # unchanged: nothing to do
    assert live.should_send("fp2")


def test_live_never_builds_a_backlog() -> None:
    clock = Clock()
    live = LiveState(clock=clock)
    live.sent("j1", "fp1")
    # The painter keeps painting while j1 runs: nothing is sent (nor queued) until it ends.
    for fingerprint in ("fp2", "fp3", "fp4"):
        assert not live.should_send(fingerprint)
    live.ended("j1")
    assert live.should_send("fp4")  # then only the latest state goes


def test_live_ignores_the_end_of_other_jobs() -> None:
    live = LiveState(clock=Clock())
    live.sent("j2", "fp")
    live.ended("j1")
    assert live.in_flight == "j2"


def test_live_presumes_a_silent_job_lost() -> None:
    clock = Clock()
    live = LiveState(clock=clock, stuck_after=30)
    live.sent("j1", "fp1")
    clock.now += 31
    assert live.should_send("fp2")


def test_live_retries_the_same_canvas_after_a_transient_error() -> None:
    clock = Clock()
    live = LiveState(clock=clock)
    live.sent("j1", "fp1")
    live.ended("j1", retry_in=2.0)
    assert not live.should_send("fp1")  # not at once: the backend asked for patience
    clock.now += 2.5
    assert live.should_send("fp1")


def test_live_reset_sends_again() -> None:
    live = LiveState(clock=Clock())
    live.sent("j1", "fp1")
    live.reset()
    assert live.should_send("fp1")
