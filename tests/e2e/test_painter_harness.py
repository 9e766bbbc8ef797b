"""Proof that the painter's harness (painter.py) acts and reads as a painter does, in real Krita under Xvfb.

Independent of the plugin's features: the plugin is installed only for its test control channel, and no
backend runs. One Krita serves the module; the tests run in order on one 256x256 document whose "Painting"
layer is active: a stroke at 200 % (then undone), three strokes at 100 %, saves and exports, undo back to
blank, a click on a real button. Screenshots go to $KLD_E2E_ARTIFACTS, or a temporary folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.krita_session import KritaSession
from tests.e2e.painter import (
    History,
    Kra,
    Painter,
    Point,
    bbox,
    changed_mask,
    compare_kra,
    compare_png,
    distance_to_path,
    load_rgba,
    painter_tools_available,
)

pytestmark = [pytest.mark.krita, pytest.mark.slow, pytest.mark.timeout(300)]

missing = painter_tools_available()
if missing:
    pytest.skip(f"the painter's harness needs Krita, Xvfb and xdotool: {missing}", allow_module_level=True)

SIZE = 256
RADIUS = 5.0  # the brush is 10 px wide
RED = (0, 0, 255, 255)  # BGRA, as Krita's pixelData gives RGBA/U8
STROKES: list[list[Point]] = [
    [(40, 48), (216, 48)],
    [(48, 96), (128, 176), (208, 96)],
    [(64, 224), (192, 200)],
]
BRUSH_STEP = "Freehand Brush Stroke"  # Krita 5.1.5's name for a brush tool stroke in the History


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("KLD_E2E_ARTIFACTS") or tmp_path_factory.mktemp("painter-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def painter(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[Painter]:
    session = KritaSession(tmp_path_factory.mktemp("krita"))
    try:
        session.start()
        hand = Painter(session)
        hand.new_document(SIZE, SIZE, layer="Painting")
        hand.setup_canvas_view(zoom=1.0)
        hand.select_brush_tool()
        hand.set_brush(size=2 * RADIUS, color=(255, 0, 0))
        yield hand
    finally:
        session.stop()
        shutil.copy(session.log_path, artifacts / "painter-krita.log")


def assert_stroke_landed(before: bytes, after: bytes, points: Sequence[Point]) -> None:
    """Pixels changed only near the path, and along it the brush laid down opaque red."""
    changed = changed_mask(before, after, SIZE, SIZE)
    distance = distance_to_path(SIZE, SIZE, points)
    stray = changed & (distance > RADIUS + 2)  # antialiasing reaches about a pixel past the radius
    assert not stray.any(), f"{int(stray.sum())} pixels changed away from the stroke, within {bbox(stray)}"
    core = distance <= RADIUS - 2
    pixels = np.frombuffer(after, np.uint8).reshape(SIZE, SIZE, 4)
    assert changed[core].all(), f"the stroke missed {int((~changed[core]).sum())} pixels on its path"
    assert (pixels[core] == RED).all(), "the stroke's core is not opaque red"


def test_setup_maps_document_pixels_to_the_screen(painter: Painter) -> None:
    mapping = painter.mapping()
    assert mapping.scale == 1.0
    left, top = painter.doc_to_screen(0, 0)
    assert (left, top) == (mapping.left - mapping.offset_x, mapping.top - mapping.offset_y)
    assert painter.doc_to_screen(SIZE, SIZE) == (left + SIZE, top + SIZE)
    assert painter.active_tool() == "KritaShape/KisToolBrush"
    assert painter.active_layer_name() == "Painting"
    assert painter.layer_is_blank("Painting")


def test_a_stroke_at_200_percent_lands_where_mapped(painter: Painter, artifacts: Path) -> None:
    """The mapping holds at another zoom (scale and pan both change); undo takes the stroke back."""
    mapping = painter.setup_canvas_view(zoom=2.0)
    assert mapping.scale == 2.0
    before = painter.layer_pixels("Painting")
    path = [(60.0, 140.0), (190.0, 140.0)]
    assert painter.stroke(path) == [BRUSH_STEP]
    assert_stroke_landed(before, painter.layer_pixels("Painting"), path)
    painter.screenshot(artifacts / "painter-zoom200.png")
    painter.undo(1)
    assert painter.layer_pixels("Painting") == before
    assert painter.setup_canvas_view(zoom=1.0).scale == 1.0


def test_strokes_land_on_the_active_layer_where_drawn(painter: Painter, artifacts: Path) -> None:
    history = painter.history()
    background = painter.layer_pixels("Background")
    for points in STROKES:
        before = painter.layer_pixels("Painting")
        added = painter.stroke(points)
        assert added == [BRUSH_STEP]
        assert_stroke_landed(before, painter.layer_pixels("Painting"), points)
    painter.screenshot(artifacts / "painter-strokes.png")
    assert painter.history().applied == [*history.applied, BRUSH_STEP, BRUSH_STEP, BRUSH_STEP]
    assert painter.active_layer_name() == "Painting"
    assert painter.layer_pixels("Background") == background


def test_saved_files_hold_the_document(painter: Painter, tmp_path: Path) -> None:
    painter.save_kra(tmp_path / "a.kra")
    painter.save_kra(tmp_path / "b.kra")
    assert compare_kra(tmp_path / "a.kra", tmp_path / "b.kra") == []
    painter.export_png(tmp_path / "a.png")
    painter.export_png(tmp_path / "b.png")
    assert compare_png(tmp_path / "a.png", tmp_path / "b.png") == []

    # What the files hold is what Krita holds: the layer's tiles and the exported image.
    stored = np.zeros((SIZE + 64, SIZE + 64, 4), np.uint8)
    for (x, y), tile in Kra.read(tmp_path / "a.kra").layer_pixels("Painting").items():
        stored[y : y + 64, x : x + 64] = tile
    live = np.frombuffer(painter.layer_pixels("Painting"), np.uint8).reshape(SIZE, SIZE, 4)
    assert np.array_equal(stored[:SIZE, :SIZE], live)
    projection = np.frombuffer(painter.projection_pixels(), np.uint8).reshape(SIZE, SIZE, 4)
    assert np.array_equal(load_rgba(tmp_path / "a.png"), projection[..., [2, 1, 0, 3]])  # BGRA -> RGBA

    # One more stroke is a different document, and only in that layer's pixels and the merged image.
    painter.stroke([(20, 20), (20, 236)])
    painter.save_kra(tmp_path / "c.kra")
    differences = compare_kra(tmp_path / "a.kra", tmp_path / "c.kra")
    assert len(differences) == 2, differences
    assert differences[0].startswith("layer 'Painting' file (pixels):")
    assert differences[1].startswith("mergedimage.png:")
    painter.export_png(tmp_path / "c.png")
    assert compare_png(tmp_path / "a.png", tmp_path / "c.png") != []

    # Undone, the document is again the one first saved.
    painter.undo(1)
    painter.save_kra(tmp_path / "d.kra")
    assert compare_kra(tmp_path / "a.kra", tmp_path / "d.kra") == []


def test_undo_restores_the_blank_layer(painter: Painter) -> None:
    history = painter.history()
    after = painter.undo(3)
    assert after.done == history.done - 3
    assert after.names == history.names  # undone steps stay listed (greyed) until the next action
    assert painter.layer_pixels("Painting") == bytes(SIZE * SIZE * 4)
    assert painter.layer_is_blank("Painting")
    assert painter.active_layer_name() == "Painting"


def test_click_widget_presses_a_real_button(painter: Painter, artifacts: Path) -> None:
    """The Layers docker's "+" button, clicked by the pointer, adds a layer as a painter's click does."""
    layers = painter.layer_names()
    history = painter.history()
    painter.click_widget("bnAdd")
    painter.wait_for_image()
    painter.screenshot(artifacts / "painter-click.png")
    assert painter.layer_names() == [*layers, "Paint Layer 1"]
    assert painter.active_layer_name() == "Paint Layer 1"
    assert painter.history().applied == [*history.applied, "Add Layer"]
    painter.undo(1)
    assert painter.layer_names() == layers


def test_stroke_waits_for_its_step_when_the_undo_stack_is_full(painter: Painter) -> None:
    """A full undo stack drops its oldest step to take the new one: the step count stays the same, and the
    stroke still waits for its step."""
    limit = painter.run("result = app.readSetting('', 'undoStackLimit', '30')")
    painter.run("app.writeSetting('', 'undoStackLimit', '2')")  # read when a document is created
    try:
        painter.new_document(SIZE, SIZE, layer="Painting")
    finally:
        painter.run(f"app.writeSetting('', 'undoStackLimit', {limit!r})")
    painter.setup_canvas_view(zoom=1.0)
    for row in (40, 80, 120):
        before = painter.layer_pixels("Painting")
        assert painter.stroke([(40, row), (200, row)]) == [BRUSH_STEP]
        assert_stroke_landed(before, painter.layer_pixels("Painting"), [(40, row), (200, row)])
    assert painter.history() == History(names=[BRUSH_STEP, BRUSH_STEP], done=2)
