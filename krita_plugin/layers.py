"""The layers the plugin writes: one preview layer (updated in place, kept on top) and applied result layers.

Writing pixels into the preview is not an undo step (a live preview would flood the history); creating the
preview and applying a result are one undo step each (Krita's node add command). The painter's own layers are
never written.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from .compose import scale_bgra
from .nodes import node_id, top_level
from .placement import Placement, Rect, layer_name, uncovered

PREVIEW_NAME = "Live Diffusion preview"
ANNOTATION_TYPE = "krita-live-diffusion"
ANNOTATION_DESCRIPTION = "Live Diffusion: the parameters that made each applied layer (by layer id)"


@dataclass
class ShownResult:
    preview_id: str
    rect: Rect
    record: dict[str, Any]  # the parameters that made it


class ResultLayers:
    def __init__(self) -> None:
        self.preview_ids: set[str] = set()  # every preview this session made, across documents
        self.shown: dict[str, ShownResult] = {}  # preview id -> what it shows

    # --- preview --------------------------------------------------------------------------------------------

    def find_preview(self, doc: Any) -> Any | None:
        for node in top_level(doc):
            if node_id(node) in self.preview_ids:
                return node
        for node in top_level(doc):  # a preview saved with the document in an earlier session
            if node.name() == PREVIEW_NAME and node.type() == "paintlayer":
                self.preview_ids.add(node_id(node))
                return node
        return None

    def ensure_preview(self, doc: Any, keep_above: frozenset[str] = frozenset()) -> Any:
        """The preview layer, above every layer of the painting.

        Only the guidance layers in `keep_above` (scribble, pose) may stay above it: the painter must see and
        move their lines and joints while the preview shows the result.
        """
        preview = self.find_preview(doc)
        layers = top_level(doc)
        if preview is None:
            preview = doc.createNode(PREVIEW_NAME, "paintlayer")
            doc.rootNode().addChildNode(preview, _highest_except(layers, keep_above))  # one undo step
            self.preview_ids.add(node_id(preview))
            return preview
        ids = [node_id(n) for n in layers]
        above = [n for n in layers[ids.index(node_id(preview)) + 1 :] if node_id(n) not in keep_above]
        if above:
            # Someone put a layer above it: move it back up so the painter sees the result.
            preview.remove()
            doc.rootNode().addChildNode(preview, above[-1])
        return preview

    def show(
        self, doc: Any, placement: Placement, record: dict[str, Any], keep_above: frozenset[str] = frozenset()
    ) -> Any:
        """Puts a result into the preview layer, replacing what it showed."""
        preview = self.ensure_preview(doc, keep_above)
        uid = node_id(preview)
        x, y, w, h = placement.rect
        pixels = placement.pixels
        if placement.needs_scaling:
            src_w, src_h = _source_size(record, w, h)
            pixels = scale_bgra(pixels, src_w, src_h, w, h)
        previous = self.shown.get(uid)
        if previous is not None:
            for sx, sy, sw, sh in uncovered(previous.rect, placement.rect):
                preview.setPixelData(bytes(sw * sh * 4), sx, sy, sw, sh)
        else:  # a preview saved with the document may still show an old result: nothing of it may stay
            old = preview.bounds()
            if old.width() > 0 and old.height() > 0:
                preview.setPixelData(
                    bytes(old.width() * old.height() * 4), old.x(), old.y(), old.width(), old.height()
                )
        preview.setPixelData(pixels, x, y, w, h)
        self.shown[uid] = ShownResult(uid, placement.rect, record)
        doc.refreshProjection()
        return preview

    def clear(self, doc: Any) -> None:
        preview = self.find_preview(doc)
        if preview is None:
            return
        shown = self.shown.pop(node_id(preview), None)
        if shown is not None:
            x, y, w, h = shown.rect
            preview.setPixelData(bytes(w * h * 4), x, y, w, h)
            doc.refreshProjection()

    def current(self, doc: Any) -> ShownResult | None:
        preview = self.find_preview(doc)
        return None if preview is None else self.shown.get(node_id(preview))

    # --- apply ----------------------------------------------------------------------------------------------

    def apply(self, doc: Any) -> Any | None:
        """Copies the shown result into a new paint layer under the preview; None when nothing is shown."""
        preview = self.find_preview(doc)
        shown = self.current(doc)
        if preview is None or shown is None:
            return None
        x, y, w, h = shown.rect
        pixels = bytes(preview.pixelData(x, y, w, h))
        record = shown.record
        layer = doc.createNode(
            layer_name(str(record.get("prompt", "")), int(record.get("seed", 0))), "paintlayer"
        )
        layer.setPixelData(
            pixels, x, y, w, h
        )  # before adding: undoing the add removes the layer with its pixels
        layers = top_level(doc)
        index = [node_id(n) for n in layers].index(node_id(preview))
        below_preview = layers[index - 1] if index > 0 else None
        doc.rootNode().addChildNode(layer, below_preview)  # the one undo step of Apply
        record_parameters(doc, node_id(layer), {**record, "bounds": [x, y, w, h]})
        self.clear(doc)
        return layer


def _highest_except(layers: list[Any], keep_above: frozenset[str]) -> Any | None:
    """The topmost layer not in keep_above (a new preview goes right above it), or None for the very top."""
    for node in reversed(layers):
        if node_id(node) not in keep_above:
            return node
    return None


def _source_size(record: dict[str, Any], default_w: int, default_h: int) -> tuple[int, int]:
    size = record.get("_result_size")
    return (int(size[0]), int(size[1])) if size else (default_w, default_h)


def read_parameters(doc: Any) -> dict[str, Any]:
    """Layer id -> parameters, as stored in the document (survives saving as .kra)."""
    if ANNOTATION_TYPE not in list(doc.annotationTypes()):
        return {}
    try:
        data = json.loads(bytes(doc.annotation(ANNOTATION_TYPE)).decode("utf-8"))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def record_parameters(doc: Any, layer_id: str, record: dict[str, Any]) -> None:
    records = read_parameters(doc)
    clean = {k: v for k, v in record.items() if not k.startswith("_")}
    clean["applied_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    records[layer_id] = clean
    doc.setAnnotation(ANNOTATION_TYPE, ANNOTATION_DESCRIPTION, json.dumps(records, indent=1).encode("utf-8"))
