"""End to end in real Krita, acting as a painter does: the installed plugin, the real backend on tiny models,
real mouse strokes with Krita's brush tool and real clicks on the panel (xdotool), under Xvfb.

One Krita and one backend serve the whole module; the tests run in order, each building on the document the
previous ones left (live session -> files -> apply -> scribble -> inpaint -> backend restart). Skipped when
Krita, Xvfb or xdotool is missing (CI installs them).

Artifacts (screenshots, Krita and backend logs, saved files) go to $KLD_E2E_ARTIFACTS, or a temporary folder;
with KLD_UPDATE_SCREENSHOT=1 the screenshots are also copied to docs/.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.krita_session import REPO, KritaSession
from tests.e2e.painter import Painter, compare_kra, compare_png, load_rgba, painter_tools_available

pytestmark = [pytest.mark.krita, pytest.mark.slow, pytest.mark.timeout(900)]

missing = painter_tools_available()
if missing:
    pytest.skip(f"end-to-end tests need Krita, Xvfb and xdotool: {missing}", allow_module_level=True)

from tests.e2e.backend_process import BackendProcess  # noqa: E402 - needs torch; after the skip
from tests.e2e.module_fixtures import artifacts_folder, running_backend, running_krita  # noqa: E402

SIZE = 256  # twice the tiny models' native size: live renders at the working size and scales back
PROMPT = "a red apple on a table"
STROKES = 5
PRE = """
from krita import Krita, Selection
app = Krita.instance()
doc = app.activeDocument()
c = controller
def by_name(name):
    return next(n for n in doc.rootNode().childNodes() if n.name() == name)
def shown():
    return c.history.selected(c.document)
"""


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return artifacts_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[BackendProcess]:
    yield from running_backend(tmp_path_factory, artifacts, "")


@pytest.fixture(scope="module")
def krita(
    tmp_path_factory: pytest.TempPathFactory, backend: BackendProcess, artifacts: Path
) -> Iterator[KritaSession]:
    yield from running_krita(tmp_path_factory, artifacts, "")


@pytest.fixture(scope="module")
def painter(krita: KritaSession) -> Painter:
    return Painter(krita)


def run(krita: KritaSession, code: str, timeout: float = 30.0):
    return krita.run(PRE + code, timeout)


STATE = """
result = {"message": panel.message.property("plain"), "status": panel.status.property("plain"),
          "live_on": panel.live.isChecked(), "visible": c.visible, "in_flight": c.live.in_flight,
          "waiting_for": c.tracker.current, "sent": c.stats["sent"], "results": c.stats["results"],
          "checks": c.stats["checks"], "waits": dict(c.stats["waits"]), "idle_retries": c.idle.retries,
          "idle_pending": c.idle.pending, "input_pending": c.input._pending,
          "active": doc.activeNode().name()}
"""


def wait(krita: KritaSession, expression: str, timeout: float = 90.0):
    try:
        return krita.wait_until(expression, timeout, setup=PRE)
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}\nthe plugin's state: {run(krita, STATE)}") from None


def panel_state(krita: KritaSession) -> str:
    return run(krita, "result = panel.status.property('state')")


def results(krita: KritaSession) -> int:
    return run(krita, "result = c.stats['results']")


def line(index: int) -> list[tuple[float, float]]:
    """The painter's i-th stroke: a wavy line across the canvas, each on its own row."""
    y = 30 + 36 * index
    return [(30, y), (90, y + 14), (150, y), (220, y + 10)]


def start_session(
    krita: KritaSession, painter: Painter, port: int, prompt: str = PROMPT, seed: int = 1234
) -> None:
    """A new SIZE x SIZE document at 100% zoom, the panel shown and connected to the backend on `port`, with
    the prompt, 2 steps and the seed set (the e2e modules' first step)."""
    painter.new_document(SIZE, SIZE)
    setup = f"""
docker.show()
docker.raise_()
panel.address.setText("127.0.0.1:{port}")
panel.connect_button.click()
panel.prompt.setPlainText({prompt!r})
panel.steps.setValue(2)
panel.seed.setValue({seed})
result = [n.name() for n in doc.rootNode().childNodes()]
"""
    assert run(krita, setup) == ["Background", "Painting"]
    painter.setup_canvas_view(zoom=1.0)
    wait(krita, "panel.status.property('state') == 'ok'", 60)


def test_plugin_loads_and_connects(krita: KritaSession, painter: Painter, backend: BackendProcess) -> None:
    start_session(krita, painter, backend.port)
    models = run(krita, "result = [panel.checkpoint.itemData(i) for i in range(panel.checkpoint.count())]")
    assert "tiny-sd15.safetensors" in models  # the checkpoint list comes from the backend's Welcome
    docks = "result = [d.objectName() for d in app.dockers()]"
    names = run(krita, docks)
    assert names.count("krita_live_diffusion_docker") == 1 and names.count("krita_live_diffusion_result") == 1


def test_the_canvas_sent_is_the_image_without_the_guidance(krita: KritaSession) -> None:
    """With a guidance layer visible the plugin composites the other layers itself (no re-render of the
    document); that must match Krita's own projection with the guidance hidden."""
    check = """
from krita_live_diffusion.capture import image_without
from krita_live_diffusion.nodes import node_id
glaze = doc.createNode("Glaze", "paintlayer")
glaze.setPixelData(bytes([200, 120, 30, 160]) * (40 * 256), 0, 88, 256, 40)
glaze.setOpacity(140)
doc.rootNode().addChildNode(glaze, by_name("Background"))
lines = doc.createNode("Lines", "paintlayer")
lines.setPixelData(bytes([0, 255, 0, 255]) * (256 * 256), 0, 0, 256, 256)
doc.rootNode().addChildNode(lines, None)
doc.refreshProjection()
doc.waitForDone()
ours = bytes(image_without(doc, {node_id(lines)}))
lines.setVisible(False)
doc.refreshProjection()
doc.waitForDone()
krita_view = bytes(doc.pixelData(0, 0, 256, 256))
lines.remove()
glaze.remove()
doc.setActiveNode(by_name("Painting"))
doc.refreshProjection()
doc.waitForDone()
result = max(abs(a - b) for a, b in zip(ours, krita_view))
"""
    assert run(krita, check) <= 2  # rounding only


def test_a_live_session_keeps_every_stroke(krita: KritaSession, painter: Painter, artifacts: Path) -> None:
    """Five real brush strokes with Live on and results arriving between them: every stroke lands on the
    painter's layer, the active layer never changes, the plugin adds nothing to the undo history, undo
    restores the blank layer, and the painter sees each new stroke before the next result."""
    painter.select_brush_tool()
    painter.set_brush(size=8, color=(200, 20, 20))
    assert painter.active_layer_name() == "Painting"
    history_before = painter.history()
    painter.click_widget("kld_live")
    wait(krita, "c.stats['results'] >= 1")  # live renders the canvas as it is
    layer_id = painter.active_layer_id()
    strokes: list[list[str]] = []
    for index in range(STROKES):
        before = results(krita)
        strokes.append(painter.stroke(line(index)))
        assert painter.active_layer_id() == layer_id  # the plugin never moved the painter's layer
        if index == STROKES - 1:
            # What the painter sees right after the stroke, before its result: the stroke itself, on screen.
            shot = artifacts / "live-stroke-before-result.png"
            assert painter.screenshot(shot)
            sx, sy = painter.doc_to_screen(*line(index)[1])
            seen = load_rgba(shot)[round(sy), round(sx)]
            assert seen[0] > 150 and seen[1] < 80 and seen[2] < 80, seen  # the brush's red, not a result
        wait(krita, f"c.stats['results'] > {before}")  # a result arrives between strokes
        assert painter.active_layer_id() == layer_id
    assert all(len(added) == 1 for added in strokes), strokes  # one undo step per stroke, nothing else
    history = painter.history()
    assert history.applied == history_before.applied + [added[0] for added in strokes]
    state = run(
        krita,
        """
last = shown()
result = {"live": last.live, "fast": last.fast_decoder, "rect": list(last.rect),
          "size": [last.width, last.height], "layers": [n.name() for n in doc.rootNode().childNodes()],
          "view": panel.result_view.image is not None, "sent": c.stats["sent"],
          "latency": sorted(c.stats["stroke_to_send_ms"])}
""",
    )
    assert state["layers"] == ["Background", "Painting"] and state["view"]
    assert state["live"] and state["fast"] and state["rect"] == [0, 0, SIZE, SIZE]
    assert state["size"] == [128, 128]  # rendered at the tiny model's working size, shown scaled
    assert len(state["latency"]) >= STROKES
    painted = painter.layer_pixels("Painting")
    pixels = np.frombuffer(painted, np.uint8).reshape(SIZE, SIZE, 4)
    for index in range(STROKES):
        x, y = line(index)[1]
        assert pixels[round(y), round(x), 3] > 0, f"stroke {index} is missing from the painter's layer"
    # Nothing is sent for an untouched canvas.
    time.sleep(2.0)
    assert run(krita, "result = c.stats['sent']") == state["sent"]
    # Undoing the strokes restores the blank layer, byte for byte.
    painter.undo(STROKES)
    assert painter.layer_is_blank("Painting")
    painter.redo(STROKES)
    assert painter.layer_pixels("Painting") == painted


def test_saved_and_exported_files_are_the_painters(
    krita: KritaSession, painter: Painter, artifacts: Path
) -> None:
    """After the live session the files equal those of the same document without the plugin: a document
    rebuilt from the painter's own layers, saved the same way."""
    painter.click_widget("kld_live")  # live off
    wait(krita, "not panel.live.isChecked()")
    painter.save_kra(artifacts / "session.kra")
    painter.export_png(artifacts / "session.png")
    rebuild = """
painting = bytes(by_name("Painting").pixelData(0, 0, doc.width(), doc.height()))
background = bytes(by_name("Background").pixelData(0, 0, doc.width(), doc.height()))
session = doc
clean = app.createDocument(doc.width(), doc.height(), doc.name(), "RGBA", "U8", "", doc.xRes())
clean.rootNode().childNodes()[0].setPixelData(background, 0, 0, doc.width(), doc.height())
layer = clean.createNode("Painting", "paintlayer")
layer.setPixelData(painting, 0, 0, doc.width(), doc.height())
clean.rootNode().addChildNode(layer, None)
view = app.activeWindow().addView(clean)  # the saved file marks the active layer: it needs a view
clean.setActiveNode(layer)
clean.refreshProjection()
clean.waitForDone()
app.setBatchmode(True)
clean.setBatchmode(True)
try:
    from krita import InfoObject
    ok = clean.saveAs(REFERENCE_KRA) and clean.exportImage(REFERENCE_PNG, InfoObject())
finally:
    app.setBatchmode(False)
clean.close()
app.setActiveDocument(session)
result = ok
"""
    reference_kra, reference_png = artifacts / "plugin-off.kra", artifacts / "plugin-off.png"
    code = rebuild.replace("REFERENCE_KRA", repr(str(reference_kra))).replace(
        "REFERENCE_PNG", repr(str(reference_png))
    )
    assert run(krita, code, timeout=60)
    assert compare_kra(artifacts / "session.kra", reference_kra) == []
    assert compare_png(artifacts / "session.png", reference_png) == []


def test_apply_is_instant_one_undo_step_and_refined_in_place(krita: KritaSession, painter: Painter) -> None:
    layers_before = painter.layer_names()
    history_before = painter.history()
    assert run(krita, "result = shown().fast_decoder")  # the shown result came from the fast live decoder
    painter.click_widget("kld_apply")
    applied = run(
        krita,
        """
new = [n for n in doc.rootNode().childNodes() if n.name() not in ("Background", "Painting")]
entry = shown()
from krita_live_diffusion.apply import entry_pixels
x, y, w, h = entry.rect
seen = bytes(new[0].pixelData(x, y, w, h)) == entry_pixels(entry)
result = {"names": [n.name() for n in new], "seen": seen,
          "refines": len(c.applying.pending), "active": doc.activeNode().name()}
""",
    )
    assert len(applied["names"]) == 1 and applied["seen"]  # the pixels the painter saw, at once
    # Krita activates an added layer a moment later; the plugin gives the painter's layer back.
    wait(krita, "doc.activeNode().name() == 'Painting'", 5)
    time.sleep(1.0)
    assert painter.active_layer_name() == "Painting"
    name = applied["names"][0]
    assert name == f"{PROMPT} · seed 1234"
    wait(krita, "not c.applying.pending", 120)  # the full-quality render replaced them in place
    state = run(
        krita,
        f"""
layer = by_name({name!r})
entry = shown()
from krita_live_diffusion.apply import entry_pixels
from krita_live_diffusion.document_state import read_state
x, y, w, h = entry.rect
recipe = read_state(doc).applied.get(layer.uniqueId().toString(), {{}})
result = {{"fast": entry.fast_decoder, "same": bytes(layer.pixelData(x, y, w, h)) == entry_pixels(entry),
          "decoder": recipe.get("decoder"), "prompt": recipe.get("prompt"), "seed": recipe.get("seed"),
          "steps": recipe.get("steps")}}
""",
    )
    assert not state["fast"] and state["same"] and state["decoder"] == "vae"
    assert (state["prompt"], state["seed"], state["steps"]) == (PROMPT, 1234, 2)
    history = painter.history()
    assert len(history.applied) == len(history_before.applied) + 1  # Apply is one undo step, refine none
    painter.undo(1)
    assert painter.layer_names() == layers_before
    painter.redo(1)
    assert name in painter.layer_names()


def test_apply_onto_layer_merges_into_the_painters_layer(krita: KritaSession, painter: Painter) -> None:
    """A live result applied onto the painter's layer: at once, merged into it once the full-quality render
    replaced the preview, the painter's layer still active, two undo steps (Add Layer, Merge Down)."""
    # Krita's redo (the previous test's last step) activates the layer it re-added; the painter picks theirs.
    run(krita, "doc.setActiveNode(by_name('Painting'))")
    wait(krita, "doc.activeNode().name() == 'Painting'", 5)
    assert not run(krita, "result = panel.live.isChecked()")
    before = results(krita)
    painter.click_widget("kld_live")  # live renders the canvas as it is: a fresh fast preview
    wait(krita, f"c.stats['results'] > {before} and shown().fast_decoder")
    painter.click_widget("kld_live")  # live off: the shown result stays
    wait(krita, "not panel.live.isChecked() and not c.live.in_flight", 10)
    layers_before = painter.layer_names()
    history_before = painter.history()
    painting_before = painter.layer_pixels("Painting")
    painter.click_widget("kld_apply_onto")
    wait(krita, "not c.applying.pending", 120)  # the preview waited above the layer for its render
    wait(krita, "[n.name() for n in doc.rootNode().childNodes()] == " + repr(layers_before), 30)
    time.sleep(1.0)  # Krita's queued activations have had their turn
    assert painter.active_layer_name() == "Painting"
    state = run(
        krita,
        """
from krita_live_diffusion.apply import entry_pixels
entry = shown()
x, y, w, h = entry.rect
result = {"fast": entry.fast_decoder,
          "same": bytes(by_name("Painting").pixelData(x, y, w, h)) == entry_pixels(entry)}
""",
    )
    assert state == {"fast": False, "same": True}  # the full-quality pixels are the painter's layer's now
    history = painter.history()
    assert history.applied[len(history_before.applied) :] == ["Add Layer", "Merge Down"]
    painter.undo(2)
    assert painter.layer_names() == layers_before
    assert painter.layer_pixels("Painting") == painting_before
    painter.redo(2)
    assert painter.layer_pixels("Painting") != painting_before


def test_a_stroke_right_after_live_on_is_sent(krita: KritaSession, painter: Painter) -> None:
    """After Apply, undo and redo (the previous test): live on, a stroke at once; the stroke renders."""
    run(krita, "doc.setActiveNode(by_name('Painting'))")
    wait(krita, "doc.activeNode().name() == 'Painting'", 5)
    painter.set_brush(size=6, color=(200, 30, 30))
    sent = run(krita, "result = c.stats['sent']")
    before = painter.layer_pixels("Painting")
    painter.click_widget("kld_live")
    painter.stroke(line(5))
    stroked = painter.layer_pixels("Painting")
    assert stroked != before
    # One send or two: live-on's own check may wait for Krita until the stroke is done and send both at once.
    wait(krita, f"c.stats['sent'] > {sent} and not c.live.in_flight and not c.tracker.current", 60)
    time.sleep(2.0)  # the release's later checks (input_watch.RECHECK_AFTER_MS) have run
    wait(krita, "not c.live.in_flight and not c.tracker.current", 60)
    settled = run(krita, "result = c.stats['sent']")
    run(krita, "c.check_live()")  # had the stroke not been sent, this would send it now
    time.sleep(0.5)
    assert run(krita, STATE)["sent"] == settled
    assert painter.layer_pixels("Painting") == stroked  # the stroke stayed on the painter's layer
    painter.click_widget("kld_live")
    wait(krita, "not panel.live.isChecked()")


def test_a_new_scribble_layer_guides_live(krita: KritaSession, painter: Painter) -> None:
    if not run(krita, "result = panel.sections['guidance'].body.isVisible()"):
        painter.click_widget("kld_section_guidance")  # unfold the section, as a painter does
    painter.click_widget("kld_new_scribble")
    assert painter.active_layer_name() == "Scribble (Live Diffusion)"  # made to be drawn on
    painter.set_brush(size=4, color=(0, 0, 0))
    before = results(krita)
    painter.click_widget("kld_live")
    painter.stroke([(20, 200), (120, 190), (230, 210)])
    echoed = wait(
        krita,
        f"c.stats['results'] > {before} and shown().recipe.get('controls') and shown().recipe",
    )
    assert [control["kind"] for control in echoed["controls"]] == ["scribble"]
    assert echoed.get("controlnets") == ["tiny-scribble.safetensors"]
    visible = run(krita, "result = by_name('Scribble (Live Diffusion)').visible()")
    assert visible  # guidance stays in view while live
    painter.click_widget("kld_live")
    wait(krita, "not panel.live.isChecked()")


def test_generate_with_a_selection_redraws_only_the_selection(krita: KritaSession, painter: Painter) -> None:
    painter.select_tool("KisToolSelectRectangular")
    mapping = painter.mapping()
    (x0, y0), (x1, y1) = mapping.to_screen(60, 50), mapping.to_screen(140, 120)
    krita.xdotool("mousemove", str(round(x0)), str(round(y0)), "mousedown", "1")
    krita.xdotool("mousemove", str(round((x0 + x1) / 2)), str(round((y0 + y1) / 2)))
    krita.xdotool("mousemove", str(round(x1)), str(round(y1)), "mouseup", "1")
    found = "doc.selection() and doc.selection().width() > 0 and "
    selection = wait(krita, found + "[doc.selection().x(), doc.selection().y(), doc.selection().width(), "
                     "doc.selection().height()]", 10)  # fmt: skip
    sx, sy, sw, sh = selection
    before = results(krita)
    painter.click_widget("kld_generate")
    wait(krita, f"c.stats['results'] > {before}", 120)
    state = run(
        krita, "entry = shown()\nresult = {'rect': list(entry.rect), 'mode': entry.recipe.get('mode')}"
    )
    rx, ry, rw, rh = state["rect"]
    assert rx <= sx and ry <= sy and rx + rw >= sx + sw and ry + rh >= sy + sh, (state, selection)
    assert rw < SIZE or rh < SIZE  # only the selection's neighbourhood, not the whole canvas
    painter.click_widget("kld_apply")
    bounds = run(
        krita,
        """
new = [n for n in doc.rootNode().childNodes() if n.name().endswith("seed " + str(shown().recipe["seed"]))]
b = new[-1].bounds()
result = [b.x(), b.y(), b.width(), b.height()]
""",
    )
    bx, by, bw, bh = bounds
    assert sx <= bx and sy <= by and bx + bw <= sx + sw and by + bh <= sy + sh, (bounds, selection)
    run(krita, "doc.setSelection(None)")


def test_backend_restart_keeps_krita_running_and_reconnects(
    krita: KritaSession, painter: Painter, backend: BackendProcess
) -> None:
    backend.kill()
    status = wait(
        krita,
        "'No backend is running' in panel.status.property('plain') and panel.status.property('plain')",
        30,
    )
    assert panel_state(krita) == "bad"
    assert "-m backend" in status and ".venv" in status  # how to start it, as this plugin was installed
    assert krita.alive() and run(krita, "result = 1 + 1") == 2  # Krita answers: nothing froze
    time.sleep(1.0)
    backend.start()
    wait(krita, "panel.status.property('state') == 'ok'", 40)
    painter.select_brush_tool()
    run(krita, "doc.setActiveNode(by_name('Painting'))")
    before = results(krita)
    painter.click_widget("kld_live")
    painter.stroke([(200, 30), (230, 60)])
    wait(krita, f"c.stats['results'] > {before}")
    painter.click_widget("kld_live")


def test_panel_screenshots(krita: KritaSession, artifacts: Path) -> None:
    """The panel at Krita's default docker width, and the result docker floated big beside the canvas, as a
    painter with a second screen would use it (the screenshots go to the README: look at them)."""
    default_width = run(krita, "result = [docker.width(), panel.horizontalScrollBar().isVisible()]")
    assert not default_width[1], default_width  # no horizontal scrolling at the width Krita gives it
    layout = """
from PyQt5.QtCore import Qt
from PyQt5.QtWidgets import QApplication
win = app.activeWindow() or app.windows()[0]
result_docker = next(d for d in app.dockers() if d.objectName() == "krita_live_diffusion_result")
for other in app.dockers():
    if other not in (docker, result_docker) and other.isVisible():
        other.hide()
result_docker.show()
result_docker.setFloating(True)
result_docker.setGeometry(40, 110, 430, 460)  # beside the canvas, as on a second screen
win.qwindow().resizeDocks([docker], [300], Qt.Horizontal)
panel.verticalScrollBar().setValue(0)
QApplication.processEvents()
result = docker.width()
"""
    run(krita, layout)
    time.sleep(0.5)
    panel_png, screen_png = artifacts / "panel.png", artifacts / "screen.png"
    run(krita, f"docker.grab().save({str(panel_png)!r})\nresult = 1")
    krita.screenshot(screen_png)
    assert panel_png.exists()
    if os.environ.get("KLD_UPDATE_SCREENSHOT") == "1":
        shutil.copy(screen_png if screen_png.exists() else panel_png, REPO / "docs" / "screenshot-panel.png")
        shutil.copy(panel_png, REPO / "docs" / "screenshot-docker.png")


def test_no_exception_escaped_the_plugin(krita: KritaSession) -> None:
    assert krita.errors() == ""
    assert "Traceback" not in krita.log_tail(2000)
