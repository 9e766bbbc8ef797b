from __future__ import annotations

import json

import pytest

from krita_plugin.layers import ANNOTATION_TYPE, PREVIEW_NAME, ResultLayers, read_parameters
from krita_plugin.nodes import node_id
from krita_plugin.placement import layer_name, place, uncovered
from tests.plugin.fake_krita import Document

GREEN = b"\x00\xff\x00\xff"
RECORD = {"prompt": "a  quiet lake\nat dawn", "seed": 42, "steps": 4, "mode": "img2img", "job_id": "j1"}


@pytest.fixture
def doc(qapp) -> Document:
    doc = Document(10, 8)
    painter = doc.createNode("painter", "paintlayer")
    painter.setPixelData(b"\x10\x20\x30\xff" * 80, 0, 0, 10, 8)
    doc.rootNode().addChildNode(painter, None)
    doc.undo_log.clear()
    painter.writes = 0
    return doc


def test_uncovered_strips() -> None:
    assert uncovered(None, (0, 0, 4, 4)) == []
    assert uncovered((0, 0, 4, 4), (0, 0, 4, 4)) == []
    assert uncovered((0, 0, 4, 4), (10, 10, 2, 2)) == [(0, 0, 4, 4)]
    strips = uncovered((0, 0, 10, 10), (2, 3, 4, 4))
    covered = {(x, y) for sx, sy, sw, sh in strips for x in range(sx, sx + sw) for y in range(sy, sy + sh)}
    expected = {(x, y) for x in range(10) for y in range(10)} - {
        (x, y) for x in range(2, 6) for y in range(3, 7)
    }
    assert covered == expected
    assert sum(w * h for _, _, w, h in strips) == len(expected)  # no overlap


def test_place_checks_sizes_and_flags_scaling() -> None:
    assert not place([1, 2, 3, 4], 3, 4, bytes(48)).needs_scaling
    assert place([1, 2, 6, 8], 3, 4, bytes(48)).needs_scaling
    with pytest.raises(ValueError):
        place([0, 0, 3, 4], 3, 4, bytes(10))


def test_layer_names_carry_prompt_and_seed() -> None:
    assert layer_name("a  quiet lake\nat dawn", 42) == "a quiet lake at dawn · seed 42"
    assert layer_name("", 1) == "untitled · seed 1"
    assert len(layer_name("x" * 100, 3).split(" · ")[0]) == 40


def test_preview_is_created_once_on_top_and_updated_in_place(doc: Document) -> None:
    layers = ResultLayers()
    first = layers.show(doc, place([0, 0, 10, 8], 10, 8, GREEN * 80), RECORD)
    assert doc.names()[-1] == PREVIEW_NAME
    assert doc.undo_log == [("add", PREVIEW_NAME)]  # creating it: one undo step
    second = layers.show(doc, place([2, 2, 3, 3], 3, 3, GREEN * 9), RECORD)
    assert node_id(first) == node_id(second)
    assert doc.names().count(PREVIEW_NAME) == 1
    assert doc.undo_log == [("add", PREVIEW_NAME)]  # updates are no undo steps
    # What the first result showed outside the second one's rectangle is cleared.
    assert second.bounds().getRect() == (2, 2, 3, 3)
    assert doc.find("painter").writes == 0


def test_inpaint_result_lands_at_its_bounds_transparent_outside(doc: Document) -> None:
    layers = ResultLayers()
    before = doc.pixelData(0, 0, 10, 8)
    pixels = b"".join(GREEN if (x + y) % 2 else b"\x00\x00\x00\x00" for y in range(3) for x in range(4))
    preview = layers.show(doc, place([5, 4, 4, 3], 4, 3, pixels), RECORD)
    assert preview.pixelData(5, 4, 4, 3) == pixels
    after = doc.pixelData(0, 0, 10, 8)
    outside = [i for i in range(0, len(after), 4) if not (5 <= (i // 4) % 10 < 9 and 4 <= (i // 4) // 10 < 7)]
    assert all(after[i : i + 4] == before[i : i + 4] for i in outside)


def test_results_of_another_size_are_scaled_into_their_bounds(doc: Document) -> None:
    layers = ResultLayers()
    record = {**RECORD, "_result_size": [2, 2]}
    preview = layers.show(doc, place([0, 0, 4, 4], 2, 2, GREEN * 4), record)
    assert preview.pixelData(0, 0, 4, 4) == GREEN * 16


def test_preview_is_moved_back_on_top(doc: Document) -> None:
    layers = ResultLayers()
    layers.show(doc, place([0, 0, 1, 1], 1, 1, GREEN), RECORD)
    doc.rootNode().addChildNode(doc.createNode("new painter layer", "paintlayer"), None)
    layers.show(doc, place([0, 0, 1, 1], 1, 1, GREEN), RECORD)
    assert doc.names()[-1] == PREVIEW_NAME


def test_a_saved_preview_is_adopted_not_duplicated(doc: Document) -> None:
    old = doc.createNode(PREVIEW_NAME, "paintlayer")
    doc.rootNode().addChildNode(old, None)
    ResultLayers().show(doc, place([0, 0, 1, 1], 1, 1, GREEN), RECORD)
    assert doc.names().count(PREVIEW_NAME) == 1


def test_apply_copies_the_result_into_a_named_layer_with_its_parameters(doc: Document) -> None:
    layers = ResultLayers()
    assert layers.apply(doc) is None  # nothing shown yet
    pixels = GREEN * 6
    layers.show(doc, place([3, 2, 3, 2], 3, 2, pixels), {**RECORD, "_result_size": [3, 2]})
    doc.undo_log.clear()
    applied = layers.apply(doc)
    assert applied is not None
    assert applied.name() == "a quiet lake at dawn · seed 42"
    assert doc.names() == ["Background", "painter", applied.name(), PREVIEW_NAME]
    assert applied.pixelData(3, 2, 3, 2) == pixels and applied.bounds().getRect() == (3, 2, 3, 2)
    assert doc.undo_log == [("add", applied.name())]  # Apply is one undo step
    record = read_parameters(doc)[node_id(applied)]
    assert record["seed"] == 42 and record["bounds"] == [3, 2, 3, 2] and "_result_size" not in record
    assert json.loads(doc.annotation(ANNOTATION_TYPE))  # stored in the document, survives saving
    assert doc.find(PREVIEW_NAME).bounds().isNull()  # the preview is cleared: the layer now shows it
    assert doc.find("painter").writes == 0


def test_guidance_layers_may_stay_above_the_preview(doc: Document) -> None:
    layers = ResultLayers()
    pose = doc.createNode("pose", "vectorlayer")
    doc.rootNode().addChildNode(pose, None)
    keep = frozenset({node_id(pose)})
    layers.show(doc, place([0, 0, 1, 1], 1, 1, GREEN), RECORD, keep)
    assert doc.names() == ["Background", "painter", PREVIEW_NAME, "pose"]
    doc.rootNode().addChildNode(doc.createNode("new painter layer", "paintlayer"), None)
    layers.show(doc, place([0, 0, 1, 1], 1, 1, GREEN), RECORD, keep)
    assert doc.names() == ["Background", "painter", "pose", "new painter layer", PREVIEW_NAME]
