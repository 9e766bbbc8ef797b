"""End to end in real Krita for the guides a painter adds beside the prompt, acting as a painter does: a
region (a new layer made with the Layers docker's "+" button, painted with Krita's brush, made a region with
the panel's "Add region" and given its own prompt by typing) and a reference image (the painting layer added
with "Add reference"), each then rendered with Generate. Real strokes, real clicks and real typing (xdotool)
under Xvfb, against the real backend on tiny models (IP-Adapter and CLIP vision files included).

Its own Krita and backend (module-scoped, as in the other e2e modules, whose order and state this leaves
alone); the tests run in order on one document. Artifacts go to $KLD_E2E_ARTIFACTS, or a temporary folder.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.krita_session import KritaSession
from tests.e2e.painter import Painter, painter_tools_available

pytestmark = [pytest.mark.krita, pytest.mark.slow, pytest.mark.timeout(600)]

missing = painter_tools_available()
if missing:
    pytest.skip(f"end-to-end tests need Krita, Xvfb and xdotool: {missing}", allow_module_level=True)

from tests.e2e.backend_process import BackendProcess  # noqa: E402 - needs torch; after the skip
from tests.e2e.module_fixtures import artifacts_folder, running_backend, running_krita  # noqa: E402
from tests.e2e.test_krita_e2e import PRE, SIZE, run, start_session  # noqa: E402 - the shared prelude

STROKES = [[(40, 70), (210, 70)], [(60, 120), (200, 200)]]
REGION_STROKE = [(30, 200), (120, 200), (120, 240)]  # on the region's own layer: its coverage
REGION_PROMPT = "a blue lake"
# Names the snippets below use besides test_krita_e2e's prelude.
QT = "from PyQt5.QtWidgets import QWidget\nfrom krita_live_diffusion.document_state import read_state\n"


def wait(krita: KritaSession, expression: str, timeout: float = 90.0):
    return krita.wait_until(expression, timeout, setup=PRE + QT)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return artifacts_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[BackendProcess]:
    yield from running_backend(tmp_path_factory, artifacts, "-guides", references=True)


@pytest.fixture(scope="module")
def krita(
    tmp_path_factory: pytest.TempPathFactory, backend: BackendProcess, artifacts: Path
) -> Iterator[KritaSession]:
    yield from running_krita(tmp_path_factory, artifacts, "-guides")


@pytest.fixture(scope="module")
def painter(krita: KritaSession) -> Painter:
    return Painter(krita)


def expand(krita: KritaSession, painter: Painter, section: str) -> None:
    """Unfolds a panel section with a click on its header, as the painter does (they start folded)."""
    unfolded = f"panel.findChild(QWidget, 'kld_section_{section}').isChecked()"
    if not run(krita, f"{QT}result = {unfolded}"):
        painter.click_widget(f"kld_section_{section}")
    wait(krita, unfolded, 5)


def panel_screenshot(krita: KritaSession, path: Path) -> None:
    run(krita, "from PyQt5.QtWidgets import QApplication\nQApplication.processEvents()")
    time.sleep(0.3)
    # The panel's whole contents, also what is scrolled out of the docker's view.
    run(krita, f"panel.widget().grab().save({str(path)!r})\nresult = 1")
    krita.screenshot(path.with_name(f"{path.stem}-screen.png"))


def generate(krita: KritaSession, painter: Painter) -> dict:
    """A click on Generate; the recipe of the result it shows."""
    before = run(krita, "result = c.stats['results']")
    painter.click_widget("kld_generate")
    wait(krita, f"c.stats['results'] > {before} and shown() is not None and not c.tracker.current", 120)
    return run(krita, "result = dict(shown().recipe)")


def test_connect_and_paint(krita: KritaSession, painter: Painter, backend: BackendProcess) -> None:
    start_session(krita, painter, backend.port, "a harbour at dawn", seed=99)
    painter.select_brush_tool()
    painter.set_brush(size=14, color=(20, 20, 20))
    for points in STROKES:
        assert len(painter.stroke(points)) == 1


def test_a_region_from_a_new_layer_with_its_own_prompt(
    krita: KritaSession, painter: Painter, artifacts: Path
) -> None:
    """The painter adds a layer with the Layers docker's "+", paints on it, clicks "Add region" and types
    the region's prompt: Generate then renders with that region (the backend counted it), the document
    keeps the region and its prompt, and the plugin added nothing to the History beyond the painter's own
    steps (the new layer, the stroke)."""
    painter.click_widget("bnAdd")  # Krita's Layers docker: a new paint layer above the active one
    wait(krita, "len(doc.rootNode().childNodes()) == 3", 10)
    layer = painter.active_layer_name()
    assert layer not in ("Background", "Painting"), painter.layer_names()
    painter.set_brush(size=30, color=(40, 90, 200))
    assert len(painter.stroke(REGION_STROKE)) == 1
    history_before = painter.history()
    expand(krita, painter, "regions")
    painter.click_widget("kld_add_region")
    wait(krita, "panel.findChild(QWidget, 'kld_region_prompt_0') is not None", 10)
    painter.click_widget("kld_region_prompt_0")
    krita.xdotool("type", "--delay", "30", REGION_PROMPT)
    wait(krita, f"[e.get('prompt') for e in read_state(doc).regions] == [{REGION_PROMPT!r}]", 10)
    label = run(krita, f"{QT}result = panel.findChild(QWidget, 'kld_region_label_0').text()")
    assert layer in label, label
    recipe = generate(krita, painter)
    assert recipe.get("regions_counted") == 1, recipe
    assert painter.history().applied == history_before.applied  # no step of the plugin's own
    mask = np.frombuffer(painter.layer_pixels(layer), np.uint8).reshape(SIZE, SIZE, 4)[..., 3]
    assert mask[200, 60] > 0 and mask[60, 200] == 0  # the painter's region layer, as painted
    panel_screenshot(krita, artifacts / "panel-region.png")


def test_a_reference_from_the_painting_layer(krita: KritaSession, painter: Painter, artifacts: Path) -> None:
    """The painter clicks the Painting layer in the Layers docker and then "Add reference" (from the layer):
    Generate then renders with that layer as a reference image through an IP-Adapter (the backend names the
    adapter and the CLIP vision encoder it used), the document keeps the reference, and neither the layer
    nor the History changed."""
    painter.click_layer("Painting")
    painting_before = painter.layer_pixels("Painting")
    history_before = painter.history()
    expand(krita, painter, "references")
    painter.click_widget("kld_add_reference_layer")
    wait(krita, "len(read_state(doc).references) == 1", 10)
    source = run(krita, f"{QT}result = panel.findChild(QWidget, 'kld_reference_source_0').currentText()")
    assert "Painting" in source, source
    recipe = generate(krita, painter)
    assert len(recipe.get("ip_adapters") or []) == 1 and len(recipe.get("clip_vision") or []) == 1, recipe
    assert recipe.get("regions_counted") == 1, recipe  # the region from before still counts
    again = generate(krita, painter)
    assert again.get("references_cached") == 1, again  # the reference's image embedding was kept
    assert painter.history().applied == history_before.applied
    assert painter.layer_pixels("Painting") == painting_before
    panel_screenshot(krita, artifacts / "panel-reference.png")


def test_no_exception_escaped_the_plugin(krita: KritaSession) -> None:
    errors = krita.control / "errors.log"
    assert not errors.exists() or not errors.read_text().strip(), errors.read_text()
