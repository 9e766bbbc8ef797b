from __future__ import annotations

import pytest

from krita_plugin.capture import (
    CaptureError,
    CaptureRequest,
    capture,
    context_rect,
    image_without,
    scaled_size,
    selection_mask,
)
from krita_plugin.nodes import node_id
from tests.plugin.fake_krita import Document, Node, Selection

RED = b"\x00\x00\xff\xff"
BLUE = b"\xff\x00\x00\xff"


@pytest.fixture
def doc(qapp) -> Document:
    doc = Document(6, 4)
    painted = doc.createNode("paint", "paintlayer")
    painted.setPixelData(RED * 4, 1, 1, 2, 2)
    doc.rootNode().addChildNode(painted, doc.find("Background"))
    return doc


def add_preview(doc: Document) -> Node:
    """A visible layer left out of the image (what a scribble guidance layer is)."""
    preview = doc.createNode("preview", "paintlayer")
    preview.setPixelData(BLUE * 24, 0, 0, 6, 4)
    doc.rootNode().addChildNode(preview, None)
    return preview


def test_image_leaves_out_the_preview_without_touching_it(doc: Document) -> None:
    expected = doc.pixelData(0, 0, 6, 4)
    preview = add_preview(doc)
    assert doc.pixelData(0, 0, 6, 4) != expected  # the projection shows the preview...
    assert image_without(doc, {node_id(preview)}) == expected  # ...the job's canvas does not
    assert preview.visible() and doc.refreshes == 0  # composited, no hide-and-re-render


def test_layer_opacity_is_respected(doc: Document) -> None:
    layer = doc.find("paint")
    layer.setOpacity(128)
    pixels = image_without(doc, set())
    red = pixels[(1 * 6 + 1) * 4 : (1 * 6 + 1) * 4 + 4]
    assert abs(red[0] - 127) <= 2 and red[2] == 255 and red[3] == 255  # half red over white


def test_hidden_layers_are_not_in_the_image(doc: Document) -> None:
    doc.find("paint").setVisible(False)
    assert image_without(doc, set()) == b"\xff" * (6 * 4 * 4)


def test_unusual_blend_modes_fall_back_to_krita_projection(doc: Document) -> None:
    doc.find("paint").setBlendingMode("hue")  # no QPainter equivalent
    preview = add_preview(doc)
    expected_without_preview = Document._composite(doc, [doc.find("Background"), doc.find("paint")])
    pixels = image_without(doc, {node_id(preview)})
    assert pixels == bytes(expected_without_preview)
    assert preview.visible()  # shown again afterwards
    assert doc.refreshes == 2


def test_fallback_waits_while_the_painter_is_mid_stroke(doc: Document) -> None:
    doc.find("paint").setBlendingMode("hue")
    preview = add_preview(doc)
    with pytest.raises(CaptureError, match="busy"):
        image_without(doc, {node_id(preview)}, refresh_allowed=lambda: False)
    assert preview.visible() and doc.refreshes == 0


def test_selection_becomes_an_8bit_mask(doc: Document) -> None:
    assert selection_mask(doc, (0, 0, 6, 4)) is None
    selection = Selection()
    selection.select(2, 1, 3, 2, 255)
    doc.setSelection(selection)
    mask = selection_mask(doc, (0, 0, 6, 4))
    assert mask is not None and len(mask) == 6 * 4
    rows = [mask[r * 6 : (r + 1) * 6] for r in range(4)]
    assert rows[0] == bytes(6) and rows[3] == bytes(6)
    assert rows[1] == bytes([0, 0, 255, 255, 255, 0]) == rows[2]


def test_a_selection_captures_its_context_with_a_mask(doc: Document) -> None:
    selection = Selection()
    selection.select(2, 1, 1, 1, 255)
    doc.setSelection(selection)
    snapshot = capture(doc, CaptureRequest(exclude=set()))
    assert snapshot.mask is not None and (snapshot.width, snapshot.height) == (6, 4)  # context, clipped
    assert capture(doc, CaptureRequest(exclude=set(), use_selection=False)).mask is None


def test_context_grows_with_the_selection() -> None:
    assert context_rect((500, 500, 30, 30), 2000, 2000) == (436, 436, 158, 158)  # at least 64 px
    assert context_rect((500, 500, 600, 300), 2000, 2000) == (300, 300, 1000, 700)  # a third of its size
    assert context_rect((0, 0, 30, 30), 50, 40) == (0, 0, 50, 40)  # never outside the document


def test_large_regions_are_scaled_down_before_sending(qapp) -> None:
    assert scaled_size(512, 512, 1024 * 1024) == (512, 512)
    assert scaled_size(4096, 4096, 1024 * 1024) == (1024, 1024)
    assert scaled_size(4096, 1, 1024 * 1024) == (4096, 1)
    doc = Document(40, 20)
    lines = doc.createNode("lines", "paintlayer")
    lines.setPixelData(BLUE * 40, 0, 0, 40, 1)
    doc.rootNode().addChildNode(lines, None)
    sid = node_id(lines)
    snapshot = capture(doc, CaptureRequest(exclude={sid}, controls={"scribble": sid}, max_pixels=200))
    assert (snapshot.width, snapshot.height) == (40, 20)  # the document rectangle it covers
    assert (snapshot.image_width, snapshot.image_height) == (20, 10)
    assert len(snapshot.canvas) == len(snapshot.control_images["scribble"]) == 20 * 10 * 4


def test_control_layers_are_sent_but_left_out_of_the_image(doc: Document) -> None:
    scribble = doc.createNode("lines", "paintlayer")
    scribble.setPixelData(BLUE * 6, 0, 0, 6, 1)
    doc.rootNode().addChildNode(scribble, None)
    sid = node_id(scribble)
    snapshot = capture(doc, CaptureRequest(exclude={sid}, controls={"scribble": sid}))
    assert snapshot.control_images == {"scribble": scribble.pixelData(0, 0, 6, 4)}
    assert snapshot.canvas[:4] == b"\xff\xff\xff\xff"  # white background, no blue line
    assert (snapshot.x, snapshot.y, snapshot.width, snapshot.height) == (0, 0, 6, 4)


def test_missing_control_layer_is_explained(doc: Document) -> None:
    with pytest.raises(CaptureError, match="scribble layer is gone"):
        capture(doc, CaptureRequest(exclude=set(), controls={"scribble": "{nope}"}))


def test_other_colour_models_are_explained(qapp) -> None:
    with pytest.raises(CaptureError, match="8-bit RGBA"):
        capture(Document(4, 4, color_model="CMYKA"), CaptureRequest(exclude=set()))


def test_a_scribble_layer_inside_a_group_is_left_out_of_the_image(qapp) -> None:
    doc = Document(6, 4)
    group = doc.createNode("sketches", "grouplayer")
    doc.rootNode().addChildNode(group, None)
    lines = doc.createNode("lines", "paintlayer")
    lines.setPixelData(RED * 24, 0, 0, 6, 4)
    group.addChildNode(lines, None)
    white = b"\xff" * (6 * 4 * 4)
    assert doc.pixelData(0, 0, 6, 4) != white
    assert image_without(doc, {node_id(lines)}) == white  # the scribble guides; it is not painted in
    assert lines.visible()  # shown again afterwards
