"""Reference images (IP-Adapter): layers of the document or image files whose look ("reference"), style or
composition the result follows.

The document keeps its references (document_state): a layer by its id, a file by its path, each with its
kind, strength and the part of the schedule it acts in. A file's pixels are read once (FileImages) and kept
for the rest of the session; after a restart the file is read again from its path. A layer's pixels are read
on every job (the painter may paint on it), over the layer's own extent, hidden or not; the plugin never
changes the layer, and a visible reference layer is part of the image as any layer is (hide it to keep it
out).

Every reference is sent as a colour image slot scaled down so its long side is at most MAX_SIDE: the
backend's image encoder sees 224 or 336 pixels, so more only costs transfer time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._compat import protocol
from .document_state import DocumentState, read_state, update_state
from .model_lists import ModelListing
from .nodes import find_node, is_layer, node_id, walk

MAX_SIDE = 768
MAX_REFERENCES = protocol.messages.MAX_REFERENCES
# The protocol's reference kinds (protocol/references.py, not re-exported by the protocol package; a test
# checks they agree) and the words the panel shows for them.
KIND_LABELS = {"reference": "Reference", "style": "Style", "composition": "Composition"}
KINDS = tuple(KIND_LABELS)
DEFAULT_STRENGTH = protocol.messages.ReferenceParam("").strength
LAYER_TYPES = ("paintlayer", "grouplayer", "vectorlayer", "filelayer", "filllayer", "clonelayer")


@dataclass(frozen=True)
class ReferenceEntry:
    """One reference as the document keeps it: a layer (`layer_id`) or a file (`path`)."""

    layer_id: str = ""
    path: str = ""
    kind: str = "reference"
    strength: float = DEFAULT_STRENGTH
    start: float = 0.0
    end: float = 1.0

    def to_json(self) -> dict[str, Any]:
        source = {"layer": self.layer_id} if self.layer_id else {"file": self.path}
        return {**source, "kind": self.kind, "strength": self.strength, "start": self.start, "end": self.end}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReferenceEntry | None:
        """None for an entry that names neither a layer nor a file; out-of-range numbers are clamped."""
        layer_id, path = data.get("layer"), data.get("file")
        if not (isinstance(layer_id, str) and layer_id) and not (isinstance(path, str) and path):
            return None
        kind = data.get("kind")
        start = _number(data.get("start"), 0.0, 0.0, 1.0)
        return cls(
            layer_id=layer_id if isinstance(layer_id, str) else "",
            path=path if isinstance(path, str) and not layer_id else "",
            kind=kind if isinstance(kind, str) and kind in KINDS else "reference",
            strength=_number(data.get("strength"), DEFAULT_STRENGTH, 0.0, 2.0),
            start=start,
            end=max(start, _number(data.get("end"), 1.0, 0.0, 1.0)),
        )


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    bgra: bytes


@dataclass(frozen=True)
class CapturedReference:
    """One reference of a job: its slot, pixels (BGRA8) and what the job's params say of it."""

    slot: str
    image: Image
    entry: ReferenceEntry


class ReferenceError(Exception):
    """A reference can't be added; the message says why."""


def references(doc: Any, state: DocumentState | None = None) -> list[ReferenceEntry]:
    """The document's references, leaving out those whose layer is gone (a file's may be missing: the panel
    says so, the job leaves it out)."""
    state = state or read_state(doc)
    found: list[ReferenceEntry] = []
    for data in state.references:
        entry = ReferenceEntry.from_json(data)
        if entry is not None and (not entry.layer_id or find_node(doc, entry.layer_id) is not None):
            found.append(entry)
    return found


def layer_choices(doc: Any) -> list[tuple[str, str]]:
    """The layers a reference can be read from: (layer id, name)."""
    return [
        (node_id(node), str(node.name()))
        for node in walk(doc.rootNode())
        if is_layer(node) and str(node.type()) in LAYER_TYPES
    ]


def add_reference(doc: Any, entry: ReferenceEntry) -> None:
    """Appends a reference to the document's state (the layers and the undo history stay untouched)."""
    if len(references(doc)) >= MAX_REFERENCES:
        raise ReferenceError(f"At most {MAX_REFERENCES} reference images: remove one first.")

    def add(state: DocumentState) -> None:
        state.references = [data for data in state.references if ReferenceEntry.from_json(data) is not None]
        state.references.append(entry.to_json())

    update_state(doc, add)


def add_layer_reference(doc: Any) -> ReferenceEntry:
    """The active layer as a new reference."""
    node = doc.activeNode()
    if node is None or not is_layer(node) or str(node.type()) not in LAYER_TYPES:
        raise ReferenceError("Select the layer to use as a reference in the Layers docker first.")
    entry = ReferenceEntry(layer_id=node_id(node))
    add_reference(doc, entry)
    return entry


def store_references(doc: Any, entries: list[ReferenceEntry]) -> bool:
    """The panel's references, as the painter edited them, replace the document's (whose layer-gone entries
    stay at the end: undoing the deletion brings them back). Returns whether anything changed."""

    def store(state: DocumentState) -> None:
        shown = {(e.layer_id, e.path) for e in entries}
        kept = [
            data
            for data in state.references
            if (entry := ReferenceEntry.from_json(data)) is not None
            and entry.layer_id
            and find_node(doc, entry.layer_id) is None
            and (entry.layer_id, "") not in shown
        ]
        state.references = [e.to_json() for e in entries] + kept

    return update_state(doc, store)


def scaled_to_fit(bgra: bytes, width: int, height: int, max_side: int = MAX_SIDE) -> Image:
    if max(width, height) <= max_side:
        return Image(width, height, bytes(bgra))
    from . import compose  # Qt, only where pixels are scaled: the rest imports without a Qt binding

    scale = max_side / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return Image(new_w, new_h, compose.scale_bgra(bgra, width, height, new_w, new_h))


def read_image_file(path: str) -> Image | None:
    """A picture file's pixels (any format Qt reads), scaled to fit MAX_SIDE; None when it can't be read."""
    from . import compose

    picture = compose.QImage(path)
    if picture.isNull():
        return None
    bgra = compose.image_bytes(picture)
    return scaled_to_fit(bgra, picture.width(), picture.height())


class FileImages:
    """Reference files' pixels, each read once per session (by path)."""

    def __init__(self, reader: Callable[[str], Image | None] = read_image_file) -> None:
        self.reader = reader
        self._images: dict[str, Image] = {}

    def get(self, path: str) -> Image | None:
        if path not in self._images:
            image = self.reader(path)
            if image is None:
                return None  # tried again next time: the file may come back (a network drive)
            self._images[path] = image
        return self._images[path]


def layer_image(doc: Any, layer_id: str) -> Image | None:
    """A layer's pixels over its extent within the document, scaled to fit; None when it is gone or empty."""
    node = find_node(doc, layer_id)
    if node is None:
        return None
    box = node.bounds()
    x0, y0 = max(0, box.x()), max(0, box.y())
    x1, y1 = min(doc.width(), box.x() + box.width()), min(doc.height(), box.y() + box.height())
    if x1 <= x0 or y1 <= y0:
        return None
    pixels = bytes(node.projectionPixelData(x0, y0, x1 - x0, y1 - y0))
    return scaled_to_fit(pixels, x1 - x0, y1 - y0)


def capture_references(doc: Any, files: FileImages) -> list[CapturedReference]:
    """The references a job sends, in the panel's order (an empty layer or an unreadable file is left out)."""
    captured: list[CapturedReference] = []
    for entry in references(doc)[:MAX_REFERENCES]:
        image = layer_image(doc, entry.layer_id) if entry.layer_id else files.get(entry.path)
        if image is not None:
            captured.append(CapturedReference(f"reference{len(captured)}", image, entry))
    return captured


def reference_params(captured: list[CapturedReference], model: str) -> list[protocol.messages.ReferenceParam]:
    """`model` "": the server picks the IP-Adapter file for the checkpoint's family."""
    return [
        protocol.messages.ReferenceParam(
            image=c.slot,
            kind=c.entry.kind,
            model=model or None,
            strength=round(c.entry.strength, 3),
            start=round(c.entry.start, 3),
            end=round(c.entry.end, 3),
        )
        for c in captured
    ]


def ipadapter_names(listing: ModelListing, checkpoint: str) -> list[str] | None:
    """The IP-Adapter files the picker offers for the chosen checkpoint: those of its family or of a family
    the server can't tell. None when the server lists no IP-Adapter kind (an older one): no picker."""
    if "ipadapter" not in listing.models:
        return None
    wanted = listing.checkpoint_family(checkpoint)
    return [
        name
        for name in listing.names("ipadapter")
        if wanted is None or listing.family("ipadapter", name) in (None, wanted)
    ]


def _number(value: Any, default: float, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return default
    return max(low, min(high, float(value)))
