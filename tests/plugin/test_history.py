"""The result history and the document's stored state: pure logic, no Qt."""

from __future__ import annotations

import json

from krita_plugin.document_state import (
    ANNOTATION_TYPE,
    DocumentState,
    read_state,
    record_applied,
    remember_guidance,
)
from krita_plugin.history import ResultEntry, ResultHistory
from krita_plugin.job_records import JobRecord, JobRecords, Purpose, SentImage


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def record(job_id: str, *, live: bool = False, inputs: int = 0) -> JobRecord:
    images = (SentImage("canvas", "bgra8", 1, 1, bytes(inputs)),) if inputs else ()
    return JobRecord(job_id, "doc", live, "img2img", (0, 0, 4, 4), "{}", {"seed": 3}, images)


def entry(job_id: str, *, live: bool = False, size: int = 16, document: str = "doc", fast=False, inputs=0):
    return ResultEntry(
        job_id, document, (0, 0, 2, 2), 2, 2, bytes(size), {"prompt": "p", "seed": 3},
        record(job_id, live=live, inputs=inputs), live, fast,
    )  # fmt: skip


def job_id_of(found: ResultEntry | JobRecord | None) -> str | None:
    return found.job_id if found is not None else None


def test_new_results_are_shown_and_kept_newest_first() -> None:
    history = ResultHistory(clock=Clock())
    for index in range(3):
        history.add(entry(f"g{index}"))
    assert [e.job_id for e in history.entries("doc")] == ["g2", "g1", "g0"]
    assert job_id_of(history.selected("doc")) == "g2"
    assert job_id_of(history.select("doc", "g0")) == "g0" and job_id_of(history.selected("doc")) == "g0"
    assert history.select("other", "g1") is None  # entries belong to their document


def test_history_is_bounded_in_count_and_bytes() -> None:
    history = ResultHistory(limit=20, max_bytes=1000, clock=Clock())
    for index in range(25):
        history.add(entry(f"g{index}", size=10))
    assert len(history.entries("doc")) == 20
    big = ResultHistory(limit=50, max_bytes=100, clock=Clock())
    for index in range(5):
        big.add(entry(f"g{index}", size=40))
    assert [e.job_id for e in big.entries("doc")] == ["g4", "g3"]
    assert big.total_bytes() <= 100


def test_fast_previews_count_their_kept_inputs() -> None:
    assert entry("a", fast=True, inputs=100).size_bytes == 116
    assert entry("b", fast=False, inputs=100).size_bytes == 16


def test_live_frames_replace_each_other_until_the_painter_pauses() -> None:
    clock = Clock()
    history = ResultHistory(pause_seconds=1.5, clock=clock)
    history.add(entry("l1", live=True))
    clock.now += 0.5
    history.add(entry("l2", live=True))
    assert [e.job_id for e in history.entries("doc")] == ["l2"]
    clock.now += 3
    history.add(entry("l3", live=True))
    history.add(entry("g1"))
    clock.now += 0.1
    history.add(entry("l4", live=True))  # a Generate in between: never replaced by a live frame
    assert [e.job_id for e in history.entries("doc")] == ["l4", "g1", "l3", "l2"]


def test_a_refined_entry_drops_the_fast_flag() -> None:
    item = entry("a", fast=True, inputs=8)
    item.refined(b"\x01" * 64, 4, 4, {"decoder": "vae"})
    assert (item.width, item.height, item.fast_decoder, item.recipe["decoder"]) == (4, 4, False, "vae")


def test_job_records_are_bounded() -> None:
    records = JobRecords(limit=3)
    for index in range(5):
        records.add(record(f"j{index}"))
    assert len(records) == 3 and records.get("j0") is None and job_id_of(records.pop("j4")) == "j4"
    assert records.pending(Purpose.REFINE) == []


class Doc:
    def __init__(self) -> None:
        self.annotations: dict[str, bytes] = {}
        self.writes = 0

    def annotationTypes(self) -> list[str]:
        return list(self.annotations)

    def annotation(self, kind: str) -> bytes:
        return self.annotations[kind]

    def setAnnotation(self, kind: str, description: str, data: bytes) -> None:
        self.writes += 1
        self.annotations[kind] = data


def test_document_state_round_trips_and_reads_the_first_format() -> None:
    doc = Doc()
    assert read_state(doc) == DocumentState()
    remember_guidance(doc, {"scribble": "{s}"}, created="{s}")
    record_applied(doc, "{layer}", {"prompt": "x", "_private": 1})
    state = read_state(doc)
    assert (state.guidance, state.guidance_layers) == ({"scribble": "{s}"}, ["{s}"])
    assert state.applied["{layer}"]["prompt"] == "x" and "_private" not in state.applied["{layer}"]
    doc.annotations[ANNOTATION_TYPE] = json.dumps({"{old}": {"seed": 1}}).encode()
    assert read_state(doc).applied == {"{old}": {"seed": 1}}
    doc.annotations[ANNOTATION_TYPE] = b"garbage"
    assert read_state(doc) == DocumentState()


def test_guidance_saved_as_scribble_and_pose_fields_is_still_read() -> None:
    """Documents saved while the plugin knew only scribble and pose (state version 2)."""
    doc = Doc()
    saved = {"version": 2, "applied": {}, "scribble": "{s}", "pose": "{p}", "guidance_layers": ["{s}"]}
    doc.annotations[ANNOTATION_TYPE] = json.dumps(saved).encode()
    assert read_state(doc).guidance == {"scribble": "{s}", "pose": "{p}"}
    remember_guidance(doc, {"pose": ""})
    stored = json.loads(doc.annotations[ANNOTATION_TYPE])
    assert stored["guidance"] == {"scribble": "{s}"} and stored["guidance_layers"] == ["{s}"]
    assert read_state(doc).guidance == {"scribble": "{s}"}  # the pose choice stays cleared


def test_guidance_is_written_only_when_it_changes() -> None:
    doc = Doc()
    remember_guidance(doc, {"scribble": "", "pose": ""})
    assert doc.writes == 0  # nothing chosen: the painter's file stays as it was
    remember_guidance(doc, {"pose": "{p}"})
    remember_guidance(doc, {"pose": "{p}", "scribble": ""})
    assert doc.writes == 1
