"""Acting in real Krita as a painter does, for end-to-end tests.

API calls such as `setPixelData` on a layer the test activated itself skip what a painter meets: a stroke goes
to whatever layer Krita has active, through the active tool, and lands in the undo history. `Painter` acts
with the hand (xdotool: real pointer strokes and clicks on this session's X display) and reads what the
painter sees (the History docker, the active layer, the layers' pixels, the saved files) through
KritaSession's control channel. Measured on Krita 5.1.5 under Xvfb; see test_painter_harness.py for the proof
of each helper.

Krita 5.1.5 facts this relies on:
- The libkis View has no flakeToCanvasTransform (5.2+). The mapping is rebuilt from the canvas widget's global
  position, the pan (the canvas controller's scroll bar values, in screen pixels) and the zoom.
- `Canvas.setZoomLevel(z)` sets z screen pixels per document pixel, but `Canvas.zoomLevel()` reads back
  z * xRes / 72 (a 300 ppi document at 100 % reads 4.1667): the scale is `zoomLevel() * 72 / xRes()`.
- `ManagedColor.setComponents` takes the colour space's channel order: B, G, R, A for RGBA/U8.
- `Document.exportImage` pops the PNG options dialog unless `Krita.setBatchmode(True)`; `saveAs` renames the
  document (like File > Save As).
- A .kra stores layer pixels as 64x64 tiles, LZF-compressed channel by channel ("VERSION 2" tile files);
  `uuid` and layer file names are bookkeeping, and documentinfo.xml changes its dates on every save.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
from PIL import Image

from tests.e2e.krita_session import KritaError, KritaSession, tools_available

Point = tuple[float, float]

PRE = """
import sys, types, base64
from krita import Krita, InfoObject, ManagedColor
from PyQt5.QtCore import QEvent, QObject, QPoint
from PyQt5.QtWidgets import (QAbstractItemView, QAbstractScrollArea, QApplication, QMdiArea, QScrollArea,
    QWidget)
app = Krita.instance()
doc = app.activeDocument()
# State that must outlive one snippet (the input probe) lives in a module of its own.
state = sys.modules.setdefault("_kld_painter_state", types.ModuleType("_kld_painter_state"))
def node(name):
    found = doc.nodeByName(name)
    if found is None:
        raise LookupError(f"no layer named {name!r}")
    return found
def history_docker():
    docker = next(d for d in app.dockers() if d.objectName() == "History")
    if not docker.isVisible():  # a painter reads it on screen; the model fills either way
        docker.show()
        docker.raise_()
    return docker.findChildren(QAbstractItemView)[0]
"""

# Counts what Krita has handled, so the harness waits for events rather than for time. `releases`: the pointer
# releases Qt has dispatched (xdotool returns once the X server has an event, not when Krita handled it).
# `history_changes`: the History model's resets, one or more per pushed, undone or redone step; unlike the
# step count it also grows when a full undo stack (kritarc undoStackLimit, 30 by default) drops its oldest
# step to take a new one.
PROBE = """
if not hasattr(state, "probe"):
    class Probe(QObject):
        def __init__(self):
            super().__init__()
            self.releases = 0
            self.history_changes = 0
        def eventFilter(self, watched, event):
            if event.type() == QEvent.MouseButtonRelease:
                self.releases += 1
            return False
        def history_changed(self):
            self.history_changes += 1
    state.probe = Probe()
    QApplication.instance().installEventFilter(state.probe)
    history_docker().model().modelReset.connect(state.probe.history_changed)
"""

MAPPING = """
win = app.activeWindow()
kis_view = win.qwindow().findChild(QMdiArea).activeSubWindow().widget()
scroller = next(w for w in kis_view.findChildren(QAbstractScrollArea)
                if w.metaObject().className() == "KisCanvasController")
canvas_widget = next(w for w in kis_view.findChildren(QWidget)
                     if w.metaObject().className() in ("KisOpenGLCanvas2", "KisQPainterCanvas"))
canvas = win.activeView().canvas()
corner = canvas_widget.mapToGlobal(QPoint(0, 0))
result = {
    "widget": [corner.x(), corner.y(), canvas_widget.width(), canvas_widget.height()],
    "offset": [scroller.horizontalScrollBar().value(), scroller.verticalScrollBar().value()],
    "zoom_level": canvas.zoomLevel(), "x_res": doc.xRes(),
    "rotation": canvas.rotation(), "mirror": canvas.mirror(),
    "size": [doc.width(), doc.height()],
}
"""

BRUSH_TOOL = "KritaShape/KisToolBrush"
# documentinfo.xml fields that change on every save of the same content.
VOLATILE_INFO = {"date", "creation-date", "editing-time", "editing-cycles"}
# Layer attributes that are bookkeeping: uuids differ between two documents built alike, and file names follow
# a counter of the saving session. Layers are matched by their place in the tree instead.
VOLATILE_LAYER_ATTRIBUTES = {"uuid", "filename"}
KRA_NS = "{http://www.calligra.org/DTD/krita}"
INFO_NS = "{http://www.calligra.org/DTD/document-info}"


def painter_tools_available() -> str | None:
    """None when real Krita can be driven by hand here; otherwise why not."""
    missing = tools_available()
    if missing:
        return missing
    if shutil.which("xdotool") is None:
        return "xdotool is not installed (apt-get install xdotool)"
    return None


@dataclass(frozen=True)
class CanvasMapping:
    """Document pixels to screen pixels for the active view (no rotation or mirroring)."""

    left: int  # the canvas widget's top-left corner on screen
    top: int
    width: int
    height: int
    offset_x: float  # the view's pan, in screen pixels (where document (0, 0) sits: left - offset_x)
    offset_y: float
    scale: float  # screen pixels per document pixel

    def to_screen(self, x: float, y: float) -> Point:
        return self.left + x * self.scale - self.offset_x, self.top + y * self.scale - self.offset_y

    def to_doc(self, sx: float, sy: float) -> Point:
        return (sx - self.left + self.offset_x) / self.scale, (sy - self.top + self.offset_y) / self.scale

    def on_canvas(self, sx: float, sy: float) -> bool:
        return self.left <= sx < self.left + self.width and self.top <= sy < self.top + self.height


@dataclass(frozen=True)
class History:
    """The History docker's list: `names` every step shown, `done` how many of them are not undone."""

    names: list[str]
    done: int

    @property
    def applied(self) -> list[str]:
        return self.names[: self.done]


class Painter:
    """A painter's hands and eyes on one KritaSession (its active window, view and document)."""

    def __init__(self, session: KritaSession) -> None:
        self.session = session

    def run(self, code: str, timeout: float = 30.0) -> Any:
        return self.session.run(PRE + code, timeout)

    # --- document and view ------------------------------------------------------------------------------

    def new_document(
        self, width: int = 256, height: int = 256, layer: str = "Painting", resolution: float = 72.0
    ) -> None:
        """A new document in the active window with a transparent paint layer `layer` on top, active."""
        self.run(f"""
win = app.activeWindow() or app.windows()[0]
doc = app.createDocument({width}, {height}, "painter", "RGBA", "U8", "", {resolution})
win.addView(doc)
app.setActiveDocument(doc)
layer = doc.createNode({layer!r}, "paintlayer")
doc.rootNode().addChildNode(layer, None)
doc.setActiveNode(layer)
doc.waitForDone()
""")

    def setup_canvas_view(
        self, zoom: float = 1.0, geometry: tuple[int, int, int, int] = (0, 0, 1600, 1000)
    ) -> CanvasMapping:
        """Fixes the window geometry and the view (zoom, no rotation or mirror) so that the whole document is
        on screen at `zoom` screen pixels per document pixel; shows the History docker; returns the
        mapping."""
        self.run(f"""
win = app.activeWindow()
win.qwindow().setGeometry(*{list(geometry)})  # no window manager: showMaximized() does nothing
canvas = win.activeView().canvas()
canvas.setRotation(0.0)
canvas.setMirror(False)
canvas.setZoomLevel({zoom})
history_docker()
QApplication.processEvents()
{PROBE}
""")
        mapping = self.mapping()
        width, height = self.run("result = [doc.width(), doc.height()]")
        for corner in ((0, 0), (width, height)):
            screen = mapping.to_screen(*corner)
            inside = mapping.on_canvas(*screen) or (
                # the far corner is an edge, one past the last pixel
                corner != (0, 0) and mapping.on_canvas(screen[0] - 1, screen[1] - 1)
            )
            if not inside:
                raise KritaError(f"document corner {corner} is off the canvas at {screen}: {mapping}")
        return mapping

    def mapping(self) -> CanvasMapping:
        """The active view's document-to-screen mapping, read from Krita now."""
        found = self.run(MAPPING)
        if found["rotation"] % 360 or found["mirror"]:
            raise KritaError(f"the view is rotated or mirrored ({found}); call setup_canvas_view() first")
        left, top, width, height = found["widget"]
        return CanvasMapping(
            left=left,
            top=top,
            width=width,
            height=height,
            offset_x=found["offset"][0],
            offset_y=found["offset"][1],
            scale=found["zoom_level"] * 72.0 / found["x_res"],  # zoomLevel() reads zoom * xRes / 72
        )

    def doc_to_screen(self, x: float, y: float) -> Point:
        return self.mapping().to_screen(x, y)

    def wait_for_image(self) -> None:
        """Until Krita has finished every stroke and update queued on the image."""
        self.run("doc.waitForDone()", timeout=60)

    # --- tools --------------------------------------------------------------------------------------------

    def select_tool(self, tool: str) -> None:
        """Triggers a tool's action, as its toolbox button does, and checks the toolbox shows it."""
        self.run(f"app.action({tool!r}).trigger()")
        self.session.wait_until(f"{self.active_tool_expression()} == {tool!r}", 10, setup=PRE)

    def select_brush_tool(self) -> None:
        self.select_tool(BRUSH_TOOL)

    @staticmethod
    def active_tool_expression() -> str:
        # The toolbox's buttons are named by tool id; the checked one is the tool the painter holds.
        return (
            "next((b.objectName() for d in app.dockers() if d.objectName() == 'ToolBox' "
            "for b in d.findChildren(QWidget) if getattr(b, 'isChecked', None) and b.isChecked()), None)"
        )

    def active_tool(self) -> str | None:
        return self.run(f"result = {self.active_tool_expression()}")

    def set_brush(
        self,
        preset: str = "b) Basic-1",
        size: float = 10.0,
        color: tuple[int, int, int] = (255, 0, 0),
        opacity: float = 1.0,
    ) -> dict[str, Any]:
        """A plain round preset at a known size, colour and opacity, so a mouse stroke (pressure 1) lays down
        predictable opaque pixels. Returns what the view reports back."""
        red, green, blue = (channel / 255.0 for channel in color)
        return self.run(f"""
view = app.activeWindow().activeView()
presets = app.resources("preset")
if {preset!r} not in presets:
    raise LookupError("no brush preset " + {preset!r})
view.setCurrentBrushPreset(presets[{preset!r}])
view.setBrushSize({size})  # after the preset, which brings its own size
color = ManagedColor("RGBA", "U8", "")
color.setComponents([{blue}, {green}, {red}, 1.0])  # the colour space's channel order: B, G, R, A
view.setForeGroundColor(color)
view.setPaintingOpacity({opacity})
view.setPaintingFlow(1.0)
view.setCurrentBlendingMode("normal")
result = {{"preset": view.currentBrushPreset().name(), "size": view.brushSize(),
          "color": view.foregroundColor().components(), "opacity": view.paintingOpacity()}}
""")

    # --- the hand -----------------------------------------------------------------------------------------

    def stroke(
        self,
        points: Sequence[Point],
        *,
        pause: float = 0.01,
        step: float = 6.0,
        expect_step: bool = True,
        timeout: float = 20.0,
    ) -> list[str]:
        """A real mouse stroke through `points` (document pixels) with the active tool, on whatever layer
        Krita has active. Moves in screen steps of at most `step` pixels, `pause` seconds apart, then waits
        until Krita handled the release and finished the stroke; with `expect_step`, also until the History
        took a new step. Returns the steps the stroke added to the History."""
        if len(points) < 2:
            raise ValueError("a stroke needs at least two points")
        mapping = self.mapping()
        screen = [mapping.to_screen(x, y) for x, y in points]
        for (x, y), (sx, sy) in zip(points, screen, strict=True):
            if not mapping.on_canvas(sx, sy):
                raise KritaError(f"stroke point ({x}, {y}) is off the canvas at ({sx:.0f}, {sy:.0f})")
        before = self.history()
        changes = self.run(PROBE + "result = state.probe.history_changes")
        path = densify(screen, step)
        args = ["mousemove", *pixel(path[0]), "sleep", "0.05", "mousedown", "1"]
        for point in path[1:]:
            args += ["sleep", f"{pause:g}", "mousemove", *pixel(point)]
        args += ["sleep", f"{pause:g}", "mouseup", "1"]
        self._with_release(args, timeout)
        self.wait_for_image()
        if expect_step:
            pushed = f"state.probe.history_changes > {changes}"
            self.session.wait_until(pushed, timeout, setup=PRE, every=0.1)
            self.wait_for_image()
        after = self.history()
        if after.done > before.done:
            return after.applied[before.done :]
        # A full undo stack dropped its oldest step: the new one is the last.
        return after.applied[-1:] if expect_step else []

    def click_widget(self, object_name: str, button: int = 1, timeout: float = 10.0) -> Point:
        """A real click in the middle of the one visible widget named `object_name` (scrolled into view when
        it sits in a scroll area). Fails when another widget covers that spot. Returns the screen point."""
        where = self.run(f"""
found = [w for w in QApplication.allWidgets() if w.objectName() == {object_name!r} and w.isVisible()]
if len(found) != 1:
    raise LookupError(f"{{len(found)}} visible widgets are named {object_name!r}")
widget = found[0]
if not widget.isEnabled():
    raise LookupError(f"{object_name!r} is disabled")
parent = widget.parentWidget()
while parent is not None:
    if isinstance(parent, QScrollArea):
        parent.ensureWidgetVisible(widget)
    parent = parent.parentWidget()
QApplication.processEvents()
centre = widget.mapToGlobal(widget.rect().center())
hit = QApplication.widgetAt(centre)
if hit is not widget and not widget.isAncestorOf(hit):
    name = None if hit is None else (hit.metaObject().className(), hit.objectName())
    raise LookupError(f"{object_name!r} is covered at ({{centre.x()}}, {{centre.y()}}) by {{name}}")
result = [centre.x(), centre.y()]
""")
        x, y = where
        self._with_release(["mousemove", str(x), str(y), "sleep", "0.05", "click", str(button)], timeout)
        return float(x), float(y)

    def click_layer(self, name: str, timeout: float = 10.0) -> None:
        """A real click on the layer's row in Krita's Layers docker, which makes it the active layer."""
        where = self.run(f"""
docker = next(d for d in app.dockers() if d.objectName() == "KisLayerBox")
if not docker.isVisible():
    docker.show()
    docker.raise_()
view = next(v for v in docker.findChildren(QAbstractItemView) if v.isVisible())
model = view.model()
rows = [model.index(r, 0) for r in range(model.rowCount())]
found = [index for index in rows if index.data() == {name!r}]
if len(found) != 1:
    raise LookupError(f"{{len(found)}} top-level rows of the Layers docker are named {name!r}")
view.scrollTo(found[0])
QApplication.processEvents()
rect = view.visualRect(found[0])
centre = view.viewport().mapToGlobal(rect.center())
result = [centre.x(), centre.y()]
""")
        x, y = where
        self._with_release(["mousemove", str(x), str(y), "sleep", "0.05", "click", "1"], timeout)
        self.session.wait_until(f"doc.activeNode().name() == {name!r}", timeout, setup=PRE, every=0.1)

    def _with_release(self, xdotool_args: list[str], timeout: float) -> None:
        """Runs the xdotool commands, then waits until Qt dispatched one more pointer release."""
        count = self.run(PROBE + "result = state.probe.releases")
        self.session.xdotool(*xdotool_args, timeout=timeout)
        self.session.wait_until(f"state.probe.releases > {count}", timeout, setup=PRE, every=0.05)

    # --- what the painter sees -----------------------------------------------------------------------------

    def history(self) -> History:
        """The undo steps as the History docker lists them (its first row, "<empty>", is the clean state)."""
        found = self.run("""
view = history_docker()
model = view.model()
result = {"rows": [model.index(r, 0).data() for r in range(model.rowCount())],
          "current": view.currentIndex().row()}
""")
        return History(names=found["rows"][1:], done=max(found["current"], 0))

    def undo(self, n: int = 1, timeout: float = 20.0) -> History:
        """Edit > Undo n times (the `edit_undo` action), waiting for the image after each."""
        return self._step_history("edit_undo", n, -1, timeout)

    def redo(self, n: int = 1, timeout: float = 20.0) -> History:
        return self._step_history("edit_redo", n, +1, timeout)

    def _step_history(self, action: str, n: int, direction: int, timeout: float) -> History:
        for _ in range(n):
            before = self.history().done
            self.run(f"app.action({action!r}).trigger()")
            done = f"history_docker().currentIndex().row() == {before + direction}"
            self.session.wait_until(done, timeout, setup=PRE, every=0.1)
            self.wait_for_image()
        return self.history()

    def active_layer_name(self) -> str:
        return self.run("result = doc.activeNode().name()")

    def active_layer_id(self) -> str:
        return self.run("result = doc.activeNode().uniqueId().toString()")

    def layer_names(self) -> list[str]:
        """The top-level layers, bottom to top (as Krita's childNodes() lists them)."""
        return self.run("result = [n.name() for n in doc.rootNode().childNodes()]")

    def layer_pixels(self, name: str, rect: tuple[int, int, int, int] | None = None) -> bytes:
        """The layer's own pixels (BGRA for RGBA/U8) over `rect`, by default the whole document."""
        area = list(rect) if rect else None
        encoded = self.run(f"""
x, y, w, h = {area} or [0, 0, doc.width(), doc.height()]
result = base64.b64encode(bytes(node({name!r}).pixelData(x, y, w, h))).decode()
""")
        return base64.b64decode(encoded)

    def projection_pixels(self, rect: tuple[int, int, int, int] | None = None) -> bytes:
        """The image as the canvas shows it, all visible layers merged (BGRA for RGBA/U8)."""
        area = list(rect) if rect else None
        encoded = self.run(f"""
x, y, w, h = {area} or [0, 0, doc.width(), doc.height()]
doc.waitForDone()
result = base64.b64encode(bytes(doc.pixelData(x, y, w, h))).decode()
""")
        return base64.b64decode(encoded)

    def layer_is_blank(self, name: str) -> bool:
        """True when every byte of the layer over the document is zero (fully transparent, as a new layer)."""
        return self.run(f"""
data = bytes(node({name!r}).pixelData(0, 0, doc.width(), doc.height()))
result = not data.strip(bytes(1))
""")

    def document_size(self) -> tuple[int, int]:
        width, height = self.run("result = [doc.width(), doc.height()]")
        return width, height

    def screenshot(self, path: Path) -> bool:
        return self.session.screenshot(path)

    # --- files ----------------------------------------------------------------------------------------------

    def save_kra(self, path: Path) -> None:
        """File > Save As to a .kra (the document takes that file name), without dialogs."""
        self._save("saveAs", path, "")

    def export_png(self, path: Path) -> None:
        """File > Export to PNG with default options, without the options dialog."""
        self._save("exportImage", path, ", InfoObject()")

    def _save(self, method: str, path: Path, extra: str) -> None:
        # Batch mode silences the export options dialog (PNG) and warnings; the painter's setting comes back.
        ok = self.run(
            f"""
doc.waitForDone()
was = app.batchmode(), doc.batchmode()
app.setBatchmode(True)
doc.setBatchmode(True)
try:
    result = doc.{method}({str(path)!r}{extra})
finally:
    app.setBatchmode(was[0])
    doc.setBatchmode(was[1])
""",
            timeout=60,
        )
        if not ok or not Path(path).is_file():
            raise KritaError(f"{method}({path}) failed")


# --- geometry helpers ---------------------------------------------------------------------------------------


def densify(points: Sequence[Point], step: float) -> list[Point]:
    """The polyline with extra points so that no two neighbours are more than `step` apart."""
    out = [points[0]]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        parts = max(1, math.ceil(math.hypot(x1 - x0, y1 - y0) / step))
        out += [(x0 + (x1 - x0) * k / parts, y0 + (y1 - y0) * k / parts) for k in range(1, parts + 1)]
    return out


def pixel(point: Point) -> list[str]:
    return [str(round(point[0])), str(round(point[1]))]


def changed_mask(before: bytes, after: bytes, width: int, height: int, pixel_size: int = 4) -> np.ndarray:
    """Which pixels differ between two pixel buffers of the same area (height x width booleans)."""
    a = np.frombuffer(before, np.uint8).reshape(height, width, pixel_size)
    b = np.frombuffer(after, np.uint8).reshape(height, width, pixel_size)
    return (a != b).any(axis=2)


def distance_to_path(width: int, height: int, points: Sequence[Point]) -> np.ndarray:
    """Each pixel centre's distance to the polyline (document pixels), height x width."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    best = np.full((height, width), np.inf)
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        dx, dy = x1 - x0, y1 - y0
        length2 = dx * dx + dy * dy or 1e-12
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / length2, 0.0, 1.0)
        best = np.minimum(best, np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy)))
    return best


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom), inclusive, of the true pixels; None when there are none."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


# --- what the files hold ------------------------------------------------------------------------------------


def compare_png(a: Path, b: Path) -> list[str]:
    """Differences between the pixels of two images (size, then RGBA values); [] when they show the same."""
    first, second = load_rgba(a), load_rgba(b)
    return compare_pixels("pixels", first, second)


def load_rgba(source: Path | bytes) -> np.ndarray:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return np.asarray(image.convert("RGBA"))


def compare_pixels(label: str, a: np.ndarray, b: np.ndarray) -> list[str]:
    if a.shape != b.shape:
        return [f"{label}: size {a.shape[1]}x{a.shape[0]} != {b.shape[1]}x{b.shape[0]}"]
    differ = (a != b).any(axis=2)
    if not differ.any():
        return []
    return [f"{label}: {int(differ.sum())} pixels differ within {bbox(differ)} (left, top, right, bottom)"]


@dataclass
class KraLayer:
    path: str  # names from the top of the tree, e.g. "Group/Sketch"; masks as "Layer/[mask]Name"
    attributes: dict[str, str]
    files: dict[str, bytes]  # this layer's files in the zip, by suffix after its file name ("", ".icc", ...)


@dataclass
class Kra:
    """A .kra file's parts, keyed so that two saves of the same content compare equal."""

    entries: dict[str, bytes]
    image: ElementTree.Element  # maindoc.xml's IMAGE element
    layers: list[KraLayer]

    @classmethod
    def read(cls, path: Path) -> Kra:
        with zipfile.ZipFile(path) as archive:
            entries = {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}
        root = ElementTree.fromstring(entries["maindoc.xml"])
        image = root.find(f"{KRA_NS}IMAGE")
        if image is None:
            raise ValueError(f"{path}: maindoc.xml has no IMAGE")
        folder = f"{image.get('name')}/layers/"
        return cls(entries, image, list(walk_layers(image, "", folder, entries)))

    def layer(self, path: str) -> KraLayer:
        return next(layer for layer in self.layers if layer.path == path)

    def layer_pixels(self, path: str) -> dict[tuple[int, int], np.ndarray]:
        """A paint layer's stored tiles: (x, y) of a tile's corner -> its pixels (height x width x bytes)."""
        layer = self.layer(path)
        return decode_tiles(layer.files[""])

    def other_entries(self) -> dict[str, bytes]:
        """Entries not compared elsewhere (layers, maindoc, documentinfo, merged image, thumbnail)."""
        skip = {"maindoc.xml", "documentinfo.xml", "mergedimage.png", "preview.png"}
        folder = f"{self.image.get('name')}/layers/"
        return {k: v for k, v in self.entries.items() if k not in skip and not k.startswith(folder)}


def walk_layers(
    parent: ElementTree.Element, prefix: str, folder: str, entries: dict[str, bytes]
) -> Iterable[KraLayer]:
    """The layers and masks under `parent` in file order (top first), depth first."""
    seen: dict[str, int] = {}
    for container, tag, mark in (("layers", "layer", ""), ("masks", "mask", "[mask]")):
        holder = parent.find(f"{KRA_NS}{container}")
        if holder is None:
            continue
        for element in holder.findall(f"{KRA_NS}{tag}"):
            name = mark + element.get("name", "")
            seen[name] = seen.get(name, 0) + 1
            path = prefix + name + (f"#{seen[name]}" if seen[name] > 1 else "")
            filename = folder + element.get("filename", "")
            files = {
                key[len(filename) :]: value
                for key, value in entries.items()
                if key == filename or key.startswith((filename + ".", filename + "/"))
            }
            attributes = {k: v for k, v in element.attrib.items() if k not in VOLATILE_LAYER_ATTRIBUTES}
            yield KraLayer(path, attributes, files)
            yield from walk_layers(element, path + "/", folder, entries)


def compare_kra(a: Path, b: Path) -> list[str]:
    """What differs between the documents two .kra files hold; [] when they hold the same document.

    The same document: the same image properties (size, colour space, resolution...), the same layer tree
    (names, order, properties), the same pixels in every layer and in the merged image, the same other parts.
    Ignored: what changes between two saves of the same content (documentinfo.xml's dates, editing time and
    cycles), bookkeeping (layer uuids and file names: layers are matched by their place in the tree) and the
    thumbnail preview.png (a resampled copy of the merged image). Tiles are compared decoded, so a different
    compression or tile order of the same pixels is no difference.
    """
    first, second = Kra.read(a), Kra.read(b)
    differences: list[str] = []
    differences += compare_elements("maindoc.xml", strip_layers(first.image), strip_layers(second.image))
    differences += compare_info(first.entries["documentinfo.xml"], second.entries["documentinfo.xml"])
    differences += compare_layers(first.layers, second.layers)
    differences += compare_pixels(
        "mergedimage.png",
        load_rgba(first.entries["mergedimage.png"]),
        load_rgba(second.entries["mergedimage.png"]),
    )
    differences += compare_entries(first.other_entries(), second.other_entries())
    return differences


def strip_layers(image: ElementTree.Element) -> ElementTree.Element:
    copy = ElementTree.Element(image.tag, image.attrib)
    copy.text = image.text
    copy.extend(child for child in image if child.tag != f"{KRA_NS}layers")
    return copy


def compare_elements(where: str, a: ElementTree.Element, b: ElementTree.Element) -> list[str]:
    """Attribute by attribute (their order in the file is Qt's hash order, not content), child by child."""
    here = f"{where}/{local_name(a.tag)}"
    if a.tag != b.tag:
        return [f"{where}: <{local_name(a.tag)}> != <{local_name(b.tag)}>"]
    differences = [
        f"{here}@{key}: {a.get(key)!r} != {b.get(key)!r}"
        for key in sorted(set(a.attrib) | set(b.attrib))
        if a.get(key) != b.get(key)
    ]
    if (a.text or "").strip() != (b.text or "").strip():
        differences.append(f"{here}: text {(a.text or '').strip()!r} != {(b.text or '').strip()!r}")
    children_a, children_b = list(a), list(b)
    if [c.tag for c in children_a] != [c.tag for c in children_b]:
        names = ([local_name(c.tag) for c in children] for children in (children_a, children_b))
        return [*differences, f"{here}: children {next(names)} != {next(names)}"]
    for child_a, child_b in zip(children_a, children_b, strict=True):
        differences += compare_elements(here, child_a, child_b)
    return differences


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def compare_info(a: bytes, b: bytes) -> list[str]:
    def fields(data: bytes) -> dict[str, str]:
        root = ElementTree.fromstring(data)
        return {
            f"{local_name(group.tag)}/{local_name(field.tag)}": (field.text or "").strip()
            for group in root
            for field in group
            if local_name(field.tag) not in VOLATILE_INFO
        }

    first, second = fields(a), fields(b)
    return [
        f"documentinfo.xml {key}: {first.get(key)!r} != {second.get(key)!r}"
        for key in sorted(set(first) | set(second))
        if first.get(key) != second.get(key)
    ]


def compare_layers(a: list[KraLayer], b: list[KraLayer]) -> list[str]:
    paths_a, paths_b = [layer.path for layer in a], [layer.path for layer in b]
    differences = [] if paths_a == paths_b else [f"layers (top first): {paths_a} != {paths_b}"]
    others = {layer.path: layer for layer in b}
    for layer in a:
        other = others.get(layer.path)
        if other is None:
            continue
        differences += [
            f"layer {layer.path!r}@{key}: {layer.attributes.get(key)!r} != {other.attributes.get(key)!r}"
            for key in sorted(set(layer.attributes) | set(other.attributes))
            if layer.attributes.get(key) != other.attributes.get(key)
        ]
        differences += compare_layer_files(layer, other)
    return differences


def compare_layer_files(a: KraLayer, b: KraLayer) -> list[str]:
    differences = []
    for suffix in sorted(set(a.files) | set(b.files)):
        label = f"layer {a.path!r} file {suffix or '(pixels)'}"
        if suffix.endswith(".defaultpixel") and suffix[: -len(".defaultpixel")] in a.files:
            continue  # compared with the tiles it fills
        if suffix not in a.files or suffix not in b.files:
            differences.append(f"{label}: only in {'the first' if suffix in a.files else 'the second'}")
            continue
        data_a, data_b = a.files[suffix], b.files[suffix]
        if data_a.startswith(b"VERSION ") and data_b.startswith(b"VERSION "):
            fill = suffix + ".defaultpixel"
            differences += compare_tiles(
                label, tiled_pixels(data_a, a.files.get(fill)), tiled_pixels(data_b, b.files.get(fill))
            )
        elif data_a != data_b:
            differences.append(f"{label}: {len(data_a)} bytes != {len(data_b)} bytes, contents differ")
    return differences


def compare_entries(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    return [
        f"{name}: only in {'the first' if name in a else 'the second'}"
        if name not in a or name not in b
        else f"{name}: contents differ"
        for name in sorted(set(a) | set(b))
        if a.get(name) != b.get(name)
    ]


# --- Krita's tiled pixel files ------------------------------------------------------------------------------


def decode_tiles(data: bytes) -> dict[tuple[int, int], np.ndarray]:
    """A "VERSION 2" tile file: (x, y) of each stored tile's corner -> its pixels (rows x columns x bytes).

    The header gives TILEWIDTH, TILEHEIGHT, PIXELSIZE and DATA (the tile count); each tile is a line
    "x,y,LZF,size" and `size` bytes: a flag byte (1: LZF of the tile's bytes regrouped channel by channel,
    0: the tile's bytes as they are) and the data.
    """
    header: dict[str, int] = {}
    position = 0
    while "DATA" not in header:
        end = data.index(b"\n", position)
        key, value = data[position:end].decode("ascii").split(" ", 1)
        header[key] = int(value)
        position = end + 1
    if header.get("VERSION") != 2:
        raise ValueError(f"unknown tile file version {header.get('VERSION')}")
    width, height, size = header["TILEWIDTH"], header["TILEHEIGHT"], header["PIXELSIZE"]
    tile_bytes = width * height * size
    tiles = {}
    for _ in range(header["DATA"]):
        end = data.index(b"\n", position)
        x, y, method, length = data[position:end].decode("ascii").split(",")
        chunk = data[end + 1 : end + 1 + int(length)]
        position = end + 1 + int(length)
        if chunk[0] == 1:
            if method != "LZF":
                raise ValueError(f"unknown tile compression {method}")
            planar = np.frombuffer(lzf_decompress(chunk[1:], tile_bytes), np.uint8)
            pixels = planar.reshape(size, width * height).T  # channel by channel -> pixel by pixel
        else:
            pixels = np.frombuffer(chunk[1 : 1 + tile_bytes], np.uint8)
        tiles[int(x), int(y)] = pixels.reshape(height, width, size)
    return tiles


def tiled_pixels(data: bytes, default_pixel: bytes | None) -> tuple[dict[tuple[int, int], np.ndarray], bytes]:
    tiles = decode_tiles(data)
    size = next(iter(tiles.values())).shape[2] if tiles else len(default_pixel or b"")
    return tiles, default_pixel if default_pixel is not None else bytes(size)


def compare_tiles(
    label: str,
    a: tuple[dict[tuple[int, int], np.ndarray], bytes],
    b: tuple[dict[tuple[int, int], np.ndarray], bytes],
) -> list[str]:
    """Pixel by pixel, a missing tile standing for one filled with the layer's default pixel."""
    (tiles_a, fill_a), (tiles_b, fill_b) = a, b
    shape = next(iter((tiles_a or tiles_b).values())).shape if (tiles_a or tiles_b) else None
    if shape is None:
        return [] if fill_a == fill_b else [f"{label}: default pixel {fill_a.hex()} != {fill_b.hex()}"]
    count = 0
    box: list[int] = []
    for corner in sorted(set(tiles_a) | set(tiles_b)):
        pixels_a = tiles_a.get(corner, filled(shape, fill_a))
        pixels_b = tiles_b.get(corner, filled(shape, fill_b))
        differ = (pixels_a != pixels_b).any(axis=2)
        if differ.any():
            count += int(differ.sum())
            left, top, right, bottom = bbox(differ) or (0, 0, 0, 0)
            box = merge_box(box, [corner[0] + left, corner[1] + top, corner[0] + right, corner[1] + bottom])
    differences = [f"{label}: {count} pixels differ within {tuple(box)}"] if count else []
    if fill_a != fill_b:
        differences.append(f"{label}: default pixel {fill_a.hex()} != {fill_b.hex()}")
    return differences


def filled(shape: tuple[int, ...], pixel_value: bytes) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(pixel_value, np.uint8), shape)


def merge_box(box: list[int], other: list[int]) -> list[int]:
    if not box:
        return other
    return [min(box[0], other[0]), min(box[1], other[1]), max(box[2], other[2]), max(box[3], other[3])]


def lzf_decompress(data: bytes, expected: int) -> bytes:
    """liblzf's format, as Krita's tile compressor writes it (KisLzfCompression)."""
    out = bytearray()
    position = 0
    while position < len(data):
        control = data[position]
        position += 1
        if control < 32:  # a literal run of control + 1 bytes
            out += data[position : position + control + 1]
            position += control + 1
            continue
        length = control >> 5
        if length == 7:
            length += data[position]
            position += 1
        start = len(out) - ((control & 0x1F) << 8) - data[position] - 1
        position += 1
        length += 2
        if start < 0:
            raise ValueError("corrupt LZF data: reference before the start")
        if start + length <= len(out):
            out += out[start : start + length]
        else:  # the copy overlaps what it writes: byte by byte
            for index in range(length):
                out.append(out[start + index])
    if len(out) != expected:
        raise ValueError(f"LZF data decoded to {len(out)} bytes, expected {expected}")
    return bytes(out)
