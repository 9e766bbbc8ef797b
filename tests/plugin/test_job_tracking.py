"""The plugin's job bookkeeping (krita_plugin/job_tracking.py): job ids, which answers are still wanted."""

from __future__ import annotations

from krita_plugin.job_tracking import JobIds, JobTracker


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
