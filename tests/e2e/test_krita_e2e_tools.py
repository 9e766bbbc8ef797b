"""End to end in real Krita for the panel's one-shot tools, acting as a painter does: "from image" on the
canny row (a guidance layer made from the painting) and Upscale on a rectangle selected with Krita's
rectangle selection tool. Real strokes, a real selection and real clicks on the panel (xdotool), under Xvfb.

Its own Krita and backend (module-scoped, as in test_krita_e2e.py, whose order and state this leaves alone);
the tests run in order on one document: painting -> canny from image -> upscale of a selection.
Artifacts (panel screenshots, logs) go to $KLD_E2E_ARTIFACTS, or a temporary folder.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.krita_session import KritaSession
from tests.e2e.painter import Painter, distance_to_path, painter_tools_available

pytestmark = [pytest.mark.krita, pytest.mark.slow, pytest.mark.timeout(600)]

missing = painter_tools_available()
if missing:
    pytest.skip(f"end-to-end tests need Krita, Xvfb and xdotool: {missing}", allow_module_level=True)

from tests.e2e.backend_process import BackendProcess  # noqa: E402 - needs torch; after the skip
from tests.e2e.module_fixtures import artifacts_folder, running_backend, running_krita  # noqa: E402
from tests.e2e.test_krita_e2e import SIZE, run, start_session, wait  # noqa: E402 - the shared helpers

# Thick dark strokes on the white background: their outlines are the painting's edges.
STROKES = [[(40, 60), (210, 60)], [(60, 110), (60, 220)], [(110, 150), (220, 210)]]
BRUSH = 14
SELECTION = ((70, 40), (170, 130))  # document corners dragged with the rectangle selection tool


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return artifacts_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[BackendProcess]:
    yield from running_backend(tmp_path_factory, artifacts, "-tools")


@pytest.fixture(scope="module")
def krita(
    tmp_path_factory: pytest.TempPathFactory, backend: BackendProcess, artifacts: Path
) -> Iterator[KritaSession]:
    yield from running_krita(tmp_path_factory, artifacts, "-tools")


@pytest.fixture(scope="module")
def painter(krita: KritaSession) -> Painter:
    return Painter(krita)


GUIDANCE_EXPANDED = """
from PyQt5.QtWidgets import QWidget
result = panel.findChild(QWidget, "kld_section_guidance").isChecked()
"""


def message(krita: KritaSession) -> str:
    return run(krita, "result = panel.message.property('plain')")


def panel_screenshot(krita: KritaSession, path: Path) -> None:
    """The docker as the painter sees it (Krita's own grab of the widget, as test_krita_e2e.py takes it)."""
    run(krita, "from PyQt5.QtWidgets import QApplication\nQApplication.processEvents()")
    time.sleep(0.3)
    run(krita, f"docker.grab().save({str(path)!r})\nresult = 1")
    assert path.exists()
    krita.screenshot(path.with_name(f"{path.stem}-screen.png"))  # the canvas and the panel's message too


def bgra(data: bytes, width: int, height: int) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(height, width, 4)


def test_connect_and_paint(krita: KritaSession, painter: Painter, backend: BackendProcess) -> None:
    start_session(krita, painter, backend.port)
    painter.select_brush_tool()
    painter.set_brush(size=BRUSH, color=(20, 20, 20))
    for points in STROKES:
        assert len(painter.stroke(points)) == 1
    assert painter.active_layer_name() == "Painting"


def test_canny_from_image_adds_one_guidance_layer(
    krita: KritaSession, painter: Painter, artifacts: Path
) -> None:
    """The canny row's "from image": one new layer (one "Add Layer" step), chosen in the row, with edges
    along the strokes' outlines and none far from them; the painter's layer stays active."""
    history_before = painter.history()
    layers_before = painter.layer_names()
    active = painter.active_layer_id()
    if not run(krita, GUIDANCE_EXPANDED):
        painter.click_widget("kld_section_guidance")  # the section is folded at first
    painter.click_widget("kld_canny_from_image")
    name = "Canny from image (Live Diffusion)"
    wait(krita, f"any(n.name() == {name!r} for n in doc.rootNode().childNodes())", 60)
    painter.wait_for_image()
    assert painter.layer_names() == [*layers_before, name]  # on top
    assert painter.active_layer_id() == active
    history = painter.history()
    assert history.applied == [*history_before.applied, "Add Layer"], history
    # Chosen in the canny row (the panel's choices follow the document's stored guidance).
    chosen = f"__import__('krita_live_diffusion.nodes').nodes.node_id(by_name({name!r}))"
    probe = f"""
from krita_live_diffusion.nodes import node_id
from krita_live_diffusion.document_state import read_state
row = panel.guidance_rows["canny"]
result = [row.layer.currentData(), row.layer.currentText(), node_id(by_name({name!r})),
          read_state(doc).guidance, [row.layer.itemData(i) for i in range(row.layer.count())]]
"""
    try:
        wait(krita, f"panel.guidance_rows['canny'].layer.currentData() == {chosen}", 10)
    except AssertionError:
        raise AssertionError(f"not chosen in the canny row: {run(krita, probe)}") from None
    edges = bgra(painter.layer_pixels(name), SIZE, SIZE)[..., 3] > 127  # lines on an empty layer: alpha
    near = np.zeros((SIZE, SIZE), bool)
    for points in STROKES:
        near |= distance_to_path(SIZE, SIZE, points) <= BRUSH / 2 + 6  # the outline, give or take
    assert edges.sum() > 100, edges.sum()  # the strokes' outlines
    assert edges[near].sum() >= 0.95 * edges.sum(), (edges[near].sum(), edges.sum())  # only there
    # Along each stroke's outline, beside its middle: an edge within a few pixels.
    for (x0, y0), (x1, y1) in STROKES:
        mx, my = round((x0 + x1) / 2), round((y0 + y1) / 2)
        window = edges[max(my - 14, 0) : my + 15, max(mx - 14, 0) : mx + 15]
        assert window.any(), ((mx, my), window.sum())
    assert "made from the image" in message(krita), message(krita)
    panel_screenshot(krita, artifacts / "panel-canny-from-image.png")
    # This layer would guide the upscale's refinement: unchoose it to keep the next test on the painting.
    run(krita, "row = panel.guidance_rows['canny']\nrow.layer.setCurrentIndex(0)")


def test_upscale_a_selection_2x(krita: KritaSession, painter: Painter, artifacts: Path) -> None:
    """A rectangle selected with Krita's tool, then Upscale (2x, refine on): the image is twice as big, a new
    layer holds the selection's box times 2, above the painter's layer, which stays active and holds its
    own pixels as Krita's Scale Image makes them. The history: Scale Image, then Add Layer."""
    run(krita, "doc.setActiveNode(by_name('Painting'))")
    painter.select_tool("KisToolSelectRectangular")
    # A drag from corner to corner; slow enough that Krita handles the last move before the release (a
    # quick drag can end the rectangle short of where the pointer was let go).
    painter.stroke(list(SELECTION), pause=0.05, expect_step=False)
    found = "doc.selection() and doc.selection().width() > 0 and "
    sx, sy, sw, sh = wait(
        krita,
        found
        + "[doc.selection().x(), doc.selection().y(), doc.selection().width(), doc.selection().height()]",
        10,
    )
    assert abs(sx - SELECTION[0][0]) <= 2 and abs(sw - (SELECTION[1][0] - SELECTION[0][0])) <= 2, (sx, sw)
    painter.wait_for_image()
    # What Krita's own Scale Image makes of the painter's layers: the same on a copy of the document.
    run(
        krita,
        """
import sys, types
keep = sys.modules.setdefault("_kld_tools_state", types.ModuleType("_kld_tools_state"))
copy = doc.clone()
copy.scaleImage(doc.width() * 2, doc.height() * 2, int(doc.xRes()), int(doc.yRes()), "Lanczos3")
copy.waitForDone()
keep.expected = {name: bytes(copy.nodeByName(name).pixelData(0, 0, copy.width(), copy.height()))
                 for name in ("Background", "Painting")}
copy.close()
""",
        timeout=60,
    )
    history_before = painter.history()
    layers_before = painter.layer_names()
    active = painter.active_layer_id()
    assert run(krita, "result = [panel.upscale_factor.currentData(), panel.upscale_refine.isChecked()]") == [
        2,
        True,
    ]
    painter.click_widget("kld_upscale")
    wait(krita, "panel.message.property('plain').startswith('Upscaled 2x')", 120)
    painter.wait_for_image()
    assert painter.document_size() == (2 * SIZE, 2 * SIZE)
    name = "Upscaled 2x (Live Diffusion)"
    index = layers_before.index("Painting")
    assert painter.layer_names() == [*layers_before[: index + 1], name, *layers_before[index + 1 :]]
    assert painter.active_layer_id() == active
    bounds = run(krita, f"b = by_name({name!r}).bounds()\nresult = [b.x(), b.y(), b.width(), b.height()]")
    assert bounds == [2 * sx, 2 * sy, 2 * sw, 2 * sh], (bounds, (sx, sy, sw, sh))
    differences = run(
        krita,
        """
import sys
keep = sys.modules["_kld_tools_state"]
result = {name: max((abs(a - b) for a, b in zip(
              bytes(by_name(name).pixelData(0, 0, doc.width(), doc.height())), expected)), default=0)
          for name, expected in keep.expected.items()}
""",
        timeout=60,
    )
    assert differences == {"Background": 0, "Painting": 0}, differences
    upscaled = bgra(painter.layer_pixels(name, (2 * sx, 2 * sy, 2 * sw, 2 * sh)), 2 * sw, 2 * sh)
    assert (upscaled[..., 3] == 255).all()  # the whole box is covered
    history = painter.history()
    assert history.applied == [*history_before.applied, "Scale Image", "Add Layer"], history
    assert ", refined" in message(krita), message(krita)  # the backend refined it tile by tile
    panel_screenshot(krita, artifacts / "panel-upscale.png")
    run(krita, "doc.setSelection(None)")


def test_no_exception_escaped_the_plugin(krita: KritaSession) -> None:
    assert krita.errors() == ""
    assert "Traceback" not in krita.log_tail(2000)
