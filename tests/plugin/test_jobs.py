from __future__ import annotations

from krita_plugin.backoff import Backoff
from krita_plugin.jobs import JobIds, JobTracker
from krita_plugin.live_state import LiveState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_job_ids_are_unique_and_carry_the_kind() -> None:
    ids = JobIds("abc")
    assert ids.next("live") == "live-abc-1"
    assert ids.next("inpaint") == "inpaint-abc-2"
    assert JobIds().prefix != JobIds().prefix or True  # random prefixes; equality is merely unlikely


def test_tracker_drops_results_of_older_jobs() -> None:
    tracker = JobTracker()
    tracker.start("job-1", live=True)
    tracker.start("job-2", live=True)  # a newer request replaces the one we wait for
    assert not tracker.finish("job-1")  # stale: ignored, still waiting for job-2
    assert tracker.busy
    assert tracker.finish("job-2")
    assert not tracker.busy
    assert not tracker.finish("job-2")  # a duplicate answer is stale too


def test_tracker_forget_makes_everything_stale() -> None:
    tracker = JobTracker()
    tracker.start("job-1", live=False)
    assert tracker.forget() == ["job-1"]
    assert not tracker.wants("job-1")
    assert tracker.forget() == []


def test_tracker_waits_for_every_job_of_a_batch() -> None:
    tracker = JobTracker()
    tracker.start(["g-1", "g-2", "g-3"], live=False)
    assert tracker.finish("g-2") and tracker.busy
    assert tracker.finish("g-1") and tracker.finish("g-3")
    assert not tracker.busy
    assert not tracker.finish("g-3")


def test_tracker_measures_silence_since_last_progress() -> None:
    clock = Clock()
    tracker = JobTracker(clock=clock)
    tracker.start("a", live=False)
    clock.now += 5
    assert tracker.silent_for() == 5
    tracker.touch("a")
    clock.now += 1
    assert tracker.silent_for() == 1
    tracker.touch("other")  # progress of a stale job does not count
    assert tracker.silent_for() == 1


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
