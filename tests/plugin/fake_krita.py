"""A small in-memory stand-in for the parts of Krita's Python API the plugin uses (tests without Krita).

Pixels are BGRA8 like Krita's RGBA/U8 documents; vector shapes live in points (1/72 inch) like Krita's.
Every call that is an undo step in real Krita (adding, removing nodes and shapes) is appended to
`Document.undo_log`, so tests can count the plugin's undo steps.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from typing import Any

from krita_plugin.qt import QPointF, QRect, QRectF, QTransform


class FakeUuid:
    def __init__(self) -> None:
        self._text = "{" + str(uuid.uuid4()) + "}"

    def toString(self) -> str:
        return self._text


class Node:
    def __init__(self, doc: Document, name: str, node_type: str = "paintlayer") -> None:
        self._doc = doc
        self._name = name
        self._type = node_type
        self._uuid = FakeUuid()
        self._visible = True
        self._opacity = 255
        self._blend = "normal"
        self._inherit_alpha = False
        self._locked = False
        self._pass_through = False
        self._pixels = bytearray(doc.width() * doc.height() * 4)
        self._children: list[Node] = []
        self._parent: Node | None = None
        self.writes = 0  # setPixelData calls, to prove the plugin never writes the painter's layers

    # identity and properties
    def name(self) -> str:
        return self._name

    def setName(self, name: str) -> None:
        self._name = name

    def type(self) -> str:
        return self._type

    def uniqueId(self) -> FakeUuid:
        return self._uuid

    def visible(self) -> bool:
        return self._visible

    def setVisible(self, visible: bool) -> None:
        self._visible = visible

    def opacity(self) -> int:
        return self._opacity

    def setOpacity(self, value: int) -> None:
        self._opacity = value

    def blendingMode(self) -> str:
        return self._blend

    def setBlendingMode(self, mode: str) -> None:
        self._blend = mode

    def locked(self) -> bool:
        return self._locked

    def setLocked(self, locked: bool) -> None:
        self._locked = locked

    def mergeDown(self) -> Node | None:
        """Like Krita: this layer composited onto the one below into a new node that replaces both."""
        parent = self._parent
        if parent is None:
            return None
        index = parent._children.index(self)
        if index == 0:
            return None
        below = parent._children[index - 1]
        merged = Node(self._doc, below.name(), below.type())
        merged._pixels = self._doc._composite([below, self])
        parent._children[index - 1 : index + 1] = [merged]
        merged._parent = parent
        self._parent = below._parent = None
        self._doc.undo_log.append(("merge down", below.name()))
        return merged

    def inheritAlpha(self) -> bool:
        return self._inherit_alpha

    def passThroughMode(self) -> bool:
        return self._pass_through

    # tree
    def childNodes(self) -> list[Node]:
        return list(self._children)

    def parentNode(self) -> Node | None:
        return self._parent

    def addChildNode(self, child: Node, above: Node | None) -> bool:
        if above is None:
            self._children.append(child)
        else:
            index = next(i for i, n in enumerate(self._children) if n is above)
            self._children.insert(index + 1, child)
        child._parent = self
        self._doc.undo_log.append(("add", child.name()))
        return True

    def remove(self) -> bool:
        if self._parent is None:
            return False
        self._parent._children.remove(self)
        self._parent = None
        self._doc.undo_log.append(("remove", self.name()))
        return True

    # pixels
    def pixelData(self, x: int, y: int, w: int, h: int) -> bytes:
        return _read(self._pixels, self._doc.width(), self._doc.height(), x, y, w, h)

    def projectionPixelData(self, x: int, y: int, w: int, h: int) -> bytes:
        if self._type == "grouplayer":
            return _read(
                self._doc._composite(self._children), self._doc.width(), self._doc.height(), x, y, w, h
            )
        return self.pixelData(x, y, w, h)

    def setPixelData(self, data: bytes, x: int, y: int, w: int, h: int) -> bool:
        self.writes += 1
        width, height = self._doc.width(), self._doc.height()
        for row in range(h):
            for col in range(w):
                px, py = x + col, y + row
                if 0 <= px < width and 0 <= py < height:
                    src = (row * w + col) * 4
                    dst = (py * width + px) * 4
                    self._pixels[dst : dst + 4] = data[src : src + 4]
        return True

    def bounds(self) -> QRect:
        width = self._doc.width()
        xs, ys = [], []
        for index in range(3, len(self._pixels), 4):
            if self._pixels[index]:
                pixel = index // 4
                xs.append(pixel % width)
                ys.append(pixel // width)
        if not xs:
            return QRect()
        return QRect(min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1)


class Shape:
    def __init__(self, layer: VectorLayer, name: str, local: QRectF, transform: QTransform) -> None:
        self._layer = layer
        self._name = name
        self._local = local
        self._transform = transform
        self._visible = True
        self.updates = 0

    def update(self) -> None:
        self.updates += 1

    def name(self) -> str:
        return self._name

    def type(self) -> str:
        return "KoPathShape"

    def boundingBox(self) -> QRectF:
        return self._transform.mapRect(self._local)

    def position(self) -> QPointF:
        return self.boundingBox().topLeft()

    def setPosition(self, point: QPointF) -> None:
        box = self.boundingBox()
        shift = QTransform.fromTranslate(point.x() - box.x(), point.y() - box.y())
        self._transform = self._transform * shift

    def transformation(self) -> QTransform:
        return QTransform(self._transform)

    def setTransformation(self, transform: QTransform) -> None:
        self._transform = QTransform(transform)

    def visible(self) -> bool:
        return self._visible

    def setVisible(self, visible: bool) -> None:
        self._visible = visible

    def remove(self) -> bool:
        self._layer._shapes.remove(self)
        self._layer._doc.undo_log.append(("remove shape", self._name))
        return True


class VectorLayer(Node):
    def __init__(self, doc: Document, name: str) -> None:
        super().__init__(doc, name, "vectorlayer")
        self._shapes: list[Shape] = []

    def shapes(self) -> list[Shape]:
        return list(self._shapes)

    def addShapesFromSvg(self, svg: str) -> list[Shape]:
        """Circles and 'M0,0 LX,0' paths, in an SVG in points (as the plugin writes them)."""
        root = ET.fromstring(svg)
        added = []
        for element in root.iter():
            tag = element.tag.split("}")[-1]
            name = element.get("id", "")
            if tag == "circle":
                cx, cy, r = (float(element.get(k, "0")) for k in ("cx", "cy", "r"))
                shape = Shape(
                    self, name, QRectF(0, 0, 2 * r, 2 * r), QTransform.fromTranslate(cx - r, cy - r)
                )
            elif tag == "path":
                length = float(re.findall(r"L\s*([-\d.]+)", element.get("d", "L0"))[0])
                shape = Shape(
                    self, name, QRectF(0, 0, length, 0), _parse_matrix(element.get("transform", ""))
                )
            else:
                continue
            self._shapes.append(shape)
            added.append(shape)
        self._doc.undo_log.append(("add shapes", self.name()))
        return added


def _parse_matrix(text: str) -> QTransform:
    match = re.match(r"matrix\(([^)]*)\)", text.strip())
    if not match:
        return QTransform()
    a, b, c, d, e, f = (float(v) for v in match.group(1).replace(",", " ").split())
    return QTransform(a, b, c, d, e, f)


class Selection:
    def __init__(self) -> None:
        self._rect = QRect()
        self._pixels: dict[tuple[int, int], int] = {}

    def select(self, x: int, y: int, w: int, h: int, value: int) -> None:
        for py in range(y, y + h):
            for px in range(x, x + w):
                self._pixels[(px, py)] = value
        self._rect = self._rect.united(QRect(x, y, w, h)) if not self._rect.isNull() else QRect(x, y, w, h)

    def x(self) -> int:
        return self._rect.x()

    def y(self) -> int:
        return self._rect.y()

    def width(self) -> int:
        return self._rect.width()

    def height(self) -> int:
        return self._rect.height()

    def pixelData(self, x: int, y: int, w: int, h: int) -> bytes:
        return bytes(self._pixels.get((px, py), 0) for py in range(y, y + h) for px in range(x, x + w))


class Document:
    def __init__(self, width: int, height: int, resolution: float = 300.0, color_model: str = "RGBA") -> None:
        self._width = width
        self._height = height
        self._resolution = resolution
        self._color_model = color_model
        self.undo_log: list[tuple[str, str]] = []
        self.refreshes = 0
        self._annotations: dict[str, tuple[str, bytes]] = {}
        self._selection: Selection | None = None
        self._root = Node(self, "root", "grouplayer")
        background = Node(self, "Background")
        background.setPixelData(b"\xff\xff\xff\xff" * width * height, 0, 0, width, height)
        background.writes = 0
        self._root._children.append(background)
        background._parent = self._root
        self._active: Node | None = background
        self.busy_checks = 0  # how many more idle checks find Krita still rendering a stroke
        self.locked = False

    def width(self) -> int:
        return self._width

    def height(self) -> int:
        return self._height

    def xRes(self) -> float:
        return self._resolution

    def yRes(self) -> float:
        return self._resolution

    def resolution(self) -> int:
        return int(self._resolution)

    def colorModel(self) -> str:
        return self._color_model

    def colorDepth(self) -> str:
        return "U8"

    def rootNode(self) -> Node:
        return self._root

    def createNode(self, name: str, node_type: str) -> Node:
        return Node(self, name, node_type)

    def createVectorLayer(self, name: str) -> VectorLayer:
        return VectorLayer(self, name)

    def activeNode(self) -> Node | None:
        return self._active

    def setActiveNode(self, node: Node) -> None:
        self._active = node

    def selection(self) -> Selection | None:
        return self._selection

    def setSelection(self, selection: Selection | None) -> None:
        self._selection = selection

    def pixelData(self, x: int, y: int, w: int, h: int) -> bytes:
        return _read(self._composite(self._root._children), self._width, self._height, x, y, w, h)

    def scaleImage(self, w: int, h: int, xres: int, yres: int, strategy: str) -> bool:
        """Like Krita's Scale Image: every layer resampled to the new size (nearest neighbour here)."""
        old_w, old_h = self._width, self._height
        nodes = [self._root]
        while nodes:
            node = nodes.pop()
            nodes.extend(node._children)
            node._pixels = bytearray(
                b"".join(
                    bytes(node._pixels[((y * old_h // h) * old_w + x * old_w // w) * 4 :][:4])
                    for y in range(h)
                    for x in range(w)
                )
            )
        self._width, self._height = w, h
        self.undo_log.append(("scale image", f"{w}x{h} {strategy}"))
        return True

    def refreshProjection(self) -> None:
        self.refreshes += 1

    def waitForDone(self) -> None:
        self.busy_checks = 0

    def tryBarrierLock(self) -> bool:
        if self.busy_checks > 0 or self.locked:
            self.busy_checks = max(0, self.busy_checks - 1)
            return False
        self.locked = True
        return True

    def unlock(self) -> None:
        self.locked = False

    def annotationTypes(self) -> list[str]:
        return list(self._annotations)

    def annotation(self, kind: str) -> bytes:
        return self._annotations[kind][1]

    def setAnnotation(self, kind: str, description: str, data: bytes) -> None:
        self._annotations[kind] = (description, bytes(data))

    def find(self, name: str) -> Node:
        return next(n for n in self._root._children if n.name() == name)

    def names(self) -> list[str]:
        return [n.name() for n in self._root._children]

    def _composite(self, nodes: list[Node]) -> bytearray:
        """Normal-mode 'over' compositing with layer opacity (all the fake needs)."""
        out = bytearray(self._width * self._height * 4)
        for node in nodes:
            if not node.visible() or not node.type().endswith("layer"):
                continue
            src = node.projectionPixelData(0, 0, self._width, self._height)
            opacity = node.opacity() / 255.0
            for i in range(0, len(out), 4):
                sa = src[i + 3] / 255.0 * opacity
                if sa == 0:
                    continue
                da = out[i + 3] / 255.0
                oa = sa + da * (1 - sa)
                for c in range(3):
                    value = (src[i + c] * sa + out[i + c] * da * (1 - sa)) / oa
                    out[i + c] = round(value)
                out[i + 3] = round(oa * 255)
        return out


def _read(pixels: bytes | bytearray, width: int, height: int, x: int, y: int, w: int, h: int) -> bytes:
    out = bytearray(w * h * 4)
    for row in range(h):
        py = y + row
        if not 0 <= py < height:
            continue
        for col in range(w):
            px = x + col
            if 0 <= px < width:
                src = (py * width + px) * 4
                dst = (row * w + col) * 4
                out[dst : dst + 4] = pixels[src : src + 4]
    return bytes(out)


class Notifier:
    def __init__(self) -> None:
        from krita_plugin.qt import QObject, pyqtSignal

        class _Signals(QObject):
            applicationClosing = pyqtSignal()

        self._signals = _Signals()
        self.applicationClosing = self._signals.applicationClosing


class Krita:
    _instance: Krita | None = None

    def __init__(self) -> None:
        self._documents: list[Document] = []
        self.active: Document | None = None
        self.settings: dict[tuple[str, str], str] = {}
        self.extensions: list[Any] = []
        self.docker_factories: list[Any] = []
        self.docks: list[Any] = []  # the dockers of the window (tests add the ones they build)
        self._notifier = Notifier()

    @classmethod
    def instance(cls) -> Krita:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def documents(self) -> list[Document]:
        return list(self._documents)

    def activeDocument(self) -> Document | None:
        return self.active

    def setActiveDocument(self, doc: Document | None) -> None:
        self.active = doc

    def createDocument(
        self, w: int, h: int, name: str, model: str, depth: str, profile: str, res: float
    ) -> Document:
        doc = Document(w, h, res, model)
        self._documents.append(doc)
        return doc

    def readSetting(self, group: str, key: str, default: str) -> str:
        return self.settings.get((group, key), default)

    def writeSetting(self, group: str, key: str, value: str) -> None:
        self.settings[(group, key)] = value

    def addExtension(self, extension: Any) -> None:
        self.extensions.append(extension)

    def addDockWidgetFactory(self, factory: Any) -> None:
        self.docker_factories.append(factory)

    def dockers(self) -> list[Any]:
        return list(self.docks)

    def notifier(self) -> Notifier:
        return self._notifier


def install_module() -> Any:
    """Puts a fake `krita` module into sys.modules (for importing the plugin's Krita-facing modules)."""
    import sys
    import types

    from krita_plugin.qt import QDockWidget

    module = types.ModuleType("krita")

    class DockWidget(QDockWidget):
        def canvas(self) -> None:
            return None

    class DockWidgetFactoryBase:
        DockRight = 2

    class DockWidgetFactory:
        def __init__(self, docker_id: str, area: int, cls: type) -> None:
            self.docker_id, self.area, self.cls = docker_id, area, cls

    class Extension:
        def __init__(self, parent: Any) -> None:
            self.parent = parent

    module.Krita = Krita  # type: ignore[attr-defined]
    module.DockWidget = DockWidget  # type: ignore[attr-defined]
    module.DockWidgetFactory = DockWidgetFactory  # type: ignore[attr-defined]
    module.DockWidgetFactoryBase = DockWidgetFactoryBase  # type: ignore[attr-defined]
    module.Extension = Extension  # type: ignore[attr-defined]
    module.Selection = Selection  # type: ignore[attr-defined]
    sys.modules["krita"] = module
    return module
