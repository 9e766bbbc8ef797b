"""End to end in real Krita: the installed plugin, the real backend on tiny models, under Xvfb.

One Krita and one backend serve the whole module; the tests run in order, each building on the document the
previous ones left (paint -> live -> guidance layers -> apply -> inpaint -> backend restart). Skipped when
Krita or Xvfb is missing (CI installs them: apt-get install krita python3-pyqt5 xvfb x11-utils imagemagick).

Artifacts (screenshots, Krita and backend logs) go to $KLD_E2E_ARTIFACTS, or a temporary folder; with
KLD_UPDATE_SCREENSHOT=1 the panel screenshot is also copied to docs/screenshot-panel.png.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.krita_session import REPO, KritaSession, tools_available

pytestmark = [pytest.mark.krita, pytest.mark.slow, pytest.mark.timeout(600)]

missing = tools_available()
if missing:
    pytest.skip(f"end-to-end tests need Krita and Xvfb: {missing}", allow_module_level=True)

from tests.e2e.backend_process import BackendProcess, build_models  # noqa: E402 - needs torch; after the skip

SIZE = 128  # the tiny models' native size: fast on a CPU
PROMPT = "a red apple on a table"
PRE = """
from krita import Krita, Selection
app = Krita.instance()
doc = app.activeDocument()
c = controller
def by_name(name):
    return next(n for n in doc.rootNode().childNodes() if n.name() == name)
def preview():
    return c.results.find_preview(doc)
"""


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("KLD_E2E_ARTIFACTS") or tmp_path_factory.mktemp("e2e-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, artifacts: Path):
    models, config = build_models(tmp_path_factory.mktemp("tiny-models"))
    process = BackendProcess(models, config, artifacts / "backend.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def krita(tmp_path_factory: pytest.TempPathFactory, backend: BackendProcess, artifacts: Path):
    session = KritaSession(tmp_path_factory.mktemp("krita"))
    try:
        session.start()
        yield session
    finally:
        session.stop()
        shutil.copy(session.log_path, artifacts / "krita.log")
        for name in ("errors.log",):
            if (session.control / name).exists():
                shutil.copy(session.control / name, artifacts / name)


def run(krita: KritaSession, code: str, timeout: float = 30.0):
    return krita.run(PRE + code, timeout)


def wait(krita: KritaSession, expression: str, timeout: float = 90.0):
    return krita.wait_until(expression, timeout, setup=PRE)


def results(krita: KritaSession) -> int:
    return run(krita, "result = c.stats['results']")


def test_plugin_loads_and_connects(krita: KritaSession, backend: BackendProcess) -> None:
    setup = f"""
win = app.activeWindow() or app.windows()[0]
win.qwindow().setGeometry(0, 0, 1600, 1000)
doc = app.createDocument({SIZE}, {SIZE}, "e2e", "RGBA", "U8", "", 72.0)
win.addView(doc)
app.setActiveDocument(doc)
layer = doc.createNode("Painting", "paintlayer")
doc.rootNode().addChildNode(layer, None)
doc.setActiveNode(layer)
docker.show()
docker.raise_()
panel.address.setText("127.0.0.1:{backend.port}")
panel.connect_button.click()
panel.prompt.setPlainText("{PROMPT}")
panel.steps.setValue(2)
panel.seed.setValue(1234)
result = [n.name() for n in doc.rootNode().childNodes()]
"""
    assert run(krita, setup) == ["Background", "Painting"]
    wait(krita, "panel.status.property('state') == 'ok'", 60)
    models = run(krita, "result = [panel.checkpoint.itemData(i) for i in range(panel.checkpoint.count())]")
    assert "tiny-sd15.safetensors" in models  # the checkpoint list comes from the backend's Welcome
    assert (
        run(krita, "result = [d.objectName() for d in app.dockers()].count('krita_live_diffusion_docker')")
        == 1
    )


def test_canvas_sent_is_the_image_without_the_preview(krita: KritaSession) -> None:
    """The plugin composites the layers itself (no re-render); it must match Krita's own projection."""
    check = """
from krita_live_diffusion.capture import image_without
from krita_live_diffusion.nodes import node_id
glaze = doc.createNode("Glaze", "paintlayer")
glaze.setPixelData(bytes([200, 120, 30, 160]) * (40 * 128), 0, 88, 128, 40)
glaze.setOpacity(140)
doc.rootNode().addChildNode(glaze, by_name("Painting"))
fake_preview = doc.createNode("Live Diffusion preview", "paintlayer")
fake_preview.setPixelData(bytes([0, 255, 0, 255]) * (128 * 128), 0, 0, 128, 128)
doc.rootNode().addChildNode(fake_preview, None)
doc.refreshProjection()
doc.waitForDone()
ours = image_without(doc, {node_id(fake_preview)})
fake_preview.setVisible(False)
doc.refreshProjection()
doc.waitForDone()
krita_view = bytes(doc.pixelData(0, 0, 128, 128))
fake_preview.remove()
doc.setActiveNode(by_name("Painting"))
doc.refreshProjection()
result = max(abs(a - b) for a, b in zip(ours, krita_view))
"""
    assert run(krita, check) <= 2  # rounding only


def test_live_preview_shows_the_backends_pixels(krita: KritaSession) -> None:
    paint = """
layer = by_name("Painting")
layer.setPixelData(bytes([40, 40, 200, 255]) * (64 * 64), 32, 32, 64, 64)
doc.refreshProjection()
panel.mode.setCurrentIndex(panel.mode.findData("live"))
panel.live.setChecked(True)
result = True
"""
    run(krita, paint)
    wait(krita, "c.stats['results'] >= 1")
    check = """
last = c.last_result
node = preview()
x, y, w, h = last.result.bounds
shown = bytes(node.pixelData(x, y, w, h))
top = doc.rootNode().childNodes()[-1]
result = {
    "job": last.result.job_id,
    "bounds": [x, y, w, h],
    "same_pixels": shown == last.frame.payload,
    "on_top": top.uniqueId() == node.uniqueId(),
    "differs_from_canvas": shown != bytes(by_name("Painting").pixelData(x, y, w, h)),
    "projection_shows_it": bytes(doc.pixelData(60, 60, 1, 1)) == bytes(node.pixelData(60, 60, 1, 1)),
    "checkpoint": last.result.params.get("checkpoint"),
    "sent": c.stats["sent"],
}
"""
    state = run(krita, check)
    assert state["bounds"] == [0, 0, SIZE, SIZE]
    assert (
        state["same_pixels"]
        and state["on_top"]
        and state["differs_from_canvas"]
        and state["projection_shows_it"]
    )
    # The preview does not feed back: an unchanged canvas is not sent again.
    time.sleep(2.0)
    assert run(krita, "result = c.stats['sent']") == state["sent"]
    # A new stroke is followed by a new image.
    before = results(krita)
    run(krita, "by_name('Painting').setPixelData(bytes([200, 40, 40, 255]) * 100, 5, 5, 10, 10)\nresult = 1")
    wait(krita, f"c.stats['results'] > {before}")
    assert run(krita, "result = [n.name() for n in doc.rootNode().childNodes()].count(preview().name())") == 1


def test_scribble_and_pose_reach_the_backend(krita: KritaSession, artifacts: Path) -> None:
    before = results(krita)
    setup = """
lines = doc.createNode("Scribble", "paintlayer")
row = bytes([0, 0, 0, 255]) * 100
for y in (20, 60, 100):
    lines.setPixelData(row, 14, y, 100, 1)
doc.rootNode().addChildNode(lines, by_name("Painting"))
c.slow_tick()
from krita_live_diffusion.nodes import node_id
panel.select_scribble_layer(node_id(lines))
panel.new_pose.click()
pose_layer = next(n for n in doc.rootNode().childNodes() if n.type() == "vectorlayer")
result = {"pose_layer": pose_layer.name(), "picked": panel.pose_layer.currentData() == node_id(pose_layer),
          "undo_layers": [n.name() for n in doc.rootNode().childNodes()]}
"""
    state = run(krita, setup)
    assert state["picked"] and state["pose_layer"] == "Pose (Live Diffusion)"
    # Move the left wrist joint 10 px right: the keypoint follows, and so does the forearm bone (next tick).
    move = """
from PyQt5.QtCore import QPointF
from krita_live_diffusion.pose_layer import read_pose
pose_layer = next(n for n in doc.rootNode().childNodes() if n.type() == "vectorlayer")
before = read_pose(pose_layer, doc.xRes(), doc.yRes())[0][7]
wrist = next(s for s in pose_layer.shapes() if s.name() == "kld-joint-0-7")
box = wrist.boundingBox()
wrist.update()
wrist.setPosition(QPointF(box.x() + 10 * 72.0 / doc.xRes(), box.y()))  # as the shape tool would drag it
wrist.update()
after = read_pose(pose_layer, doc.xRes(), doc.yRes())[0][7]
result = [list(before), list(after)]
"""
    before_wrist, after_wrist = run(krita, move)
    assert after_wrist[0] == pytest.approx(before_wrist[0] + 10, abs=0.05)
    assert after_wrist[1] == pytest.approx(before_wrist[1], abs=0.05)
    bone = """
from PyQt5.QtCore import QPointF
pose_layer = next(n for n in doc.rootNode().childNodes() if n.type() == "vectorlayer")
bone = next(s for s in pose_layer.shapes() if s.name() == "kld-bone-0-6-7")
wrist = next(s for s in pose_layer.shapes() if s.name() == "kld-joint-0-7")
end = bone.transformation().map(QPointF(100, 0))
centre = wrist.boundingBox().center()
result = abs(end.x() - centre.x()) < 0.01 and abs(end.y() - centre.y()) < 0.01
"""
    assert krita.wait_until("ok", 5, setup=PRE + bone.replace("result =", "ok ="))
    # A later live job carries both guidance layers (with the moved wrist); the backend echoes them and names
    # the ControlNets it ran.
    echoed = wait(
        krita,
        f"c.stats['results'] > {before} and len(c.last_result.result.params.get('controls', [])) == 2 "
        f"and abs(c.last_result.result.params['controls'][1]['pose'][0][7][0] - {after_wrist[0]}) < 0.05 "
        "and c.last_result.result.params",
    )
    kinds = {control["kind"]: control for control in echoed["controls"]}
    assert kinds["scribble"]["image"] == "scribble"
    assert kinds["pose"]["pose"][0][7][0] == pytest.approx(after_wrist[0], abs=0.05)
    assert set(echoed.get("controlnets", [])) == {"tiny-scribble.safetensors", "tiny-openpose.safetensors"}
    sent_scribble = run(krita, "result = c.stats['sent']")
    assert sent_scribble >= 3
    shoot(krita, artifacts)


def shoot(krita: KritaSession, artifacts: Path) -> None:
    """The panel in use: the whole window and the docker alone."""
    layout = """
from PyQt5.QtCore import Qt
from PyQt5.QtWidgets import QApplication
win = app.activeWindow() or app.windows()[0]
# Room for the panel: keep only the Layers docker next to it (a painter's workspace would be similar).
for other in app.dockers():
    if other is not docker and other.objectName() != "KisLayerBox" and other.isVisible():
        other.hide()
win.qwindow().resizeDocks([docker], [440], Qt.Horizontal)
win.qwindow().resizeDocks([docker], [700], Qt.Vertical)
QApplication.processEvents()
result = 1
"""
    run(krita, layout)
    time.sleep(0.5)
    panel_png = artifacts / "panel.png"
    run(krita, f"docker.grab().save({str(panel_png)!r})\nresult = 1")
    screen_png = artifacts / "screen.png"
    krita.screenshot(screen_png)
    assert panel_png.exists()
    if os.environ.get("KLD_UPDATE_SCREENSHOT") == "1":
        source = screen_png if screen_png.exists() else panel_png
        shutil.copy(source, REPO / "docs" / "screenshot-panel.png")


def test_apply_keeps_the_result_as_a_named_layer(krita: KritaSession) -> None:
    run(krita, "panel.live.setChecked(False)\nresult = 1")
    click = """
shown = c.results.current(doc)
assert shown.record["server_params"]["decoder"] == "taesd"  # live frames use the fast decoder
c.apply_before = [n.name() for n in doc.rootNode().childNodes()]
c.apply_seed = shown.record["seed"]
panel.apply.click()
result = c.apply_job
"""
    assert run(krita, click) is not None  # Apply first renders the result again with the full VAE
    wait(krita, "c.apply_job is None and len(doc.rootNode().childNodes()) > len(c.apply_before)")
    apply = """
node = preview()
applied = next(n for n in doc.rootNode().childNodes() if n.name() not in c.apply_before)
final = c.last_result
x, y, w, h = final.result.bounds
from krita_live_diffusion.layers import read_parameters
record = read_parameters(doc).get(applied.uniqueId().toString(), {})
result = {
    "names": [n.name() for n in doc.rootNode().childNodes()], "applied": applied.name(), "seed": c.apply_seed,
    "same": bytes(applied.pixelData(x, y, w, h)) == final.frame.payload,
    "decoder": final.result.params["decoder"],
    "record_prompt": record.get("prompt"), "record_seed": record.get("seed"),
    "record_steps": record.get("steps"),
    "preview_empty": node.bounds().isEmpty(),
}
"""
    state = run(krita, apply)
    assert state["decoder"] == "vae"  # the kept layer is the full-quality render
    assert state["applied"] == f"{PROMPT} · seed {state['seed']}"
    names = state["names"]
    assert (
        names.index("Live Diffusion preview") == names.index(state["applied"]) + 1
    )  # right under the preview
    assert names[-1] == "Pose (Live Diffusion)"  # guidance stays above the preview, to be seen and moved
    assert state["same"] and state["preview_empty"]
    assert (state["record_prompt"], state["record_seed"], state["record_steps"]) == (PROMPT, state["seed"], 2)
    # Apply is one undo step: undo removes exactly that layer; redo brings it back.
    undo = """
before = [n.name() for n in doc.rootNode().childNodes()]
app.action("edit_undo").trigger()
doc.waitForDone()
undone = [n.name() for n in doc.rootNode().childNodes()]
app.action("edit_redo").trigger()
doc.waitForDone()
result = [before, undone, [n.name() for n in doc.rootNode().childNodes()]]
"""
    before, undone, redone = run(krita, undo)
    assert undone == [n for n in before if n != state["applied"]]
    assert redone == before


def test_inpaint_changes_only_the_selection(krita: KritaSession) -> None:
    before_results = results(krita)
    setup = """
# Kept on the controller between snippets (each snippet has its own scope).
controller.e2e_painter_before = {n.name(): bytes(n.pixelData(0, 0, doc.width(), doc.height()))
                                 for n in doc.rootNode().childNodes() if n.name() != preview().name()}
controller.e2e_image_before = bytes(doc.pixelData(0, 0, doc.width(), doc.height()))
selection = Selection()
selection.select(40, 30, 48, 40, 255)
doc.setSelection(selection)
panel.mode.setCurrentIndex(panel.mode.findData("inpaint"))
panel.generate.click()
result = panel.generate.text()
"""
    assert run(krita, setup) == "Inpaint"
    wait(krita, f"c.stats['results'] > {before_results}", 120)
    check = """
W, H = doc.width(), doc.height()
after = bytes(doc.pixelData(0, 0, W, H))
before = controller.e2e_image_before
sx, sy, sw, sh = 40, 30, 48, 40
changed_outside = 0
for y in range(H):
    for x in range(W):
        if sx <= x < sx + sw and sy <= y < sy + sh:
            continue
        i = (y * W + x) * 4
        if after[i:i + 4] != before[i:i + 4]:
            changed_outside += 1
painter_same = all(bytes(by_name(name).pixelData(0, 0, W, H)) == pixels
                   for name, pixels in controller.e2e_painter_before.items())
node = preview()
b = node.bounds()
last = c.last_result
result = {"changed_outside": changed_outside, "painter_same": painter_same,
          "preview_bounds": [b.x(), b.y(), b.width(), b.height()], "result_bounds": last.result.bounds,
          "mode": last.result.params.get("mode"),
          "changed_inside": after != before}
"""
    state = run(krita, check)
    assert state["mode"] == "inpaint"
    assert state["changed_outside"] == 0, state
    assert state["painter_same"] and state["changed_inside"]
    px, py, pw, ph = state["preview_bounds"]
    assert (
        40 <= px and 30 <= py and px + pw <= 88 and py + ph <= 70
    )  # the layer holds pixels only in the selection
    rx, ry, rw, rh = state["result_bounds"]
    assert (
        rx <= 40 and ry <= 30 and rx + rw >= 88 and ry + rh >= 70
    )  # placed where the backend said, around it
    apply = """
before = [n.name() for n in doc.rootNode().childNodes()]
panel.apply.click()
applied = next(n for n in doc.rootNode().childNodes() if n.name() not in before)
b = applied.bounds()
result = [applied.name(), [b.x(), b.y(), b.width(), b.height()]]
"""
    name, bounds = run(krita, apply)
    assert name.startswith(PROMPT) and bounds == state["preview_bounds"]


def test_backend_restart_keeps_krita_running_and_reconnects(
    krita: KritaSession, backend: BackendProcess
) -> None:
    run(krita, "doc.setSelection(None)\npanel.mode.setCurrentIndex(panel.mode.findData('live'))\nresult = 1")
    backend.kill()
    status = wait(krita, "panel.status.property('state') == 'bad' and panel.status.text()", 30)
    assert "No backend is running" in status or "closed the connection" in status
    assert krita.alive() and run(krita, "result = 1 + 1") == 2  # Krita answers: nothing froze
    time.sleep(1.0)
    backend.start()
    wait(krita, "panel.status.property('state') == 'ok'", 40)
    before = results(krita)
    run(
        krita,
        "panel.live.setChecked(True)\nby_name('Painting').setPixelData(bytes(4) * 64, 0, 0, 8, 8)\n"
        "result = 1",
    )
    wait(krita, f"c.stats['results'] > {before}")
    run(krita, "panel.live.setChecked(False)\nresult = 1")


def test_no_exception_escaped_the_plugin(krita: KritaSession) -> None:
    assert krita.errors() == ""
    assert "Traceback" not in krita.log_tail(2000)
