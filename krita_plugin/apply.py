"""Apply: the only way a result enters the painter's document, and only when the painter asks.

Apply puts the pixels the painter saw into the document at once, either as a new layer above the active layer
(one undo step: Krita's "Add Layer") or onto the active paint layer (a layer added above it and merged down:
two undo steps, since Krita's scripting API cannot group them). A fast preview is rendered again at full
quality by the backend; those pixels replace the applied ones in the same layer with no further undo step
(writing a layer's pixels from a script is not an undo step), unless the painter has painted on it meanwhile.
Krita activates layers the plugin adds; the painter's active layer is restored every time.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from .compose import scale_bgra
from .document_state import record_applied
from .history import ResultEntry
from .nodes import find_node, is_layer, node_id
from .placement import Rect, layer_name
from .qt import QTimer
from .safe import guarded

MERGE_PENDING_NAME = "Live Diffusion: applying…"
RESTORE_ACTIVE_MS = (0, 100, 400)


class ApplyError(Exception):
    """The result can't be applied as asked; the message says what the painter can do."""


@dataclass
class AppliedLayer:
    document: str
    layer_id: str
    rect: Rect
    checksum: int  # of the pixels the plugin wrote: a different checksum means the painter painted on it
    merge_into: str = ""  # onto-layer Apply: the painter's layer it is merged into once final
    recipe: dict[str, Any] = field(default_factory=dict)  # what made it (names the layer if it can't merge)


def entry_pixels(entry: ResultEntry) -> bytes:
    """The entry's pixels at its document rectangle's size."""
    _, _, w, h = entry.rect
    if (entry.width, entry.height) == (w, h):
        return entry.pixels
    return scale_bgra(entry.pixels, entry.width, entry.height, w, h)


def _placement(doc: Any) -> tuple[Any, Any | None, Any | None]:
    """(parent, the node to insert above, the painter's active node)."""
    active = doc.activeNode()
    if active is not None and not is_layer(active):  # a mask: the layer it belongs to
        active = active.parentNode()
    if active is None or active.parentNode() is None:
        return doc.rootNode(), None, active
    return active.parentNode(), active, active


def keep_active(doc: Any, active: Any | None, added: Any, *, insist: bool = False) -> None:
    """Gives the painter's active layer back after the plugin added `added` (or merged it away).

    Krita activates an added layer asynchronously (a queued signal), so the layer is restored now and again
    after Krita has had its turn, but only while the active layer is still the one the plugin added (a layer
    the painter picks meanwhile stays) or, with `insist`, whatever Krita picked after a merge. A layer that
    no longer exists (merged away meanwhile) is never restored."""
    if active is None:
        return
    added_id, active_id = node_id(added), node_id(active)

    def restore() -> None:
        try:
            if find_node(doc, active_id) is None:
                return
            current = doc.activeNode()
            if current is None or node_id(current) == added_id or (insist and node_id(current) != active_id):
                doc.setActiveNode(active)
        except RuntimeError:  # the document was closed meanwhile
            pass

    restore()
    later = guarded(restore)  # a timer callback's exception would open Krita's "Script error" dialog
    for delay in RESTORE_ACTIVE_MS:
        QTimer.singleShot(delay, later)


def _add_layer(doc: Any, entry: ResultEntry, name: str) -> tuple[Any, Any | None, int]:
    parent, above, active = _placement(doc)
    x, y, w, h = entry.rect
    pixels = entry_pixels(entry)
    layer = doc.createNode(name, "paintlayer")
    layer.setPixelData(pixels, x, y, w, h)  # before adding: undoing the add removes the layer with its pixels
    parent.addChildNode(layer, above)  # the undo step
    keep_active(doc, active, layer)
    doc.refreshProjection()
    return layer, active, zlib.crc32(bytes(layer.pixelData(x, y, w, h)))


def apply_as_layer(doc: Any, entry: ResultEntry) -> AppliedLayer:
    recipe = {**entry.recipe, "bounds": list(entry.rect)}
    layer, _, checksum = _add_layer(doc, entry, layer_name(str(recipe.get("prompt", "")), entry.record.seed))
    record_applied(doc, node_id(layer), recipe)
    return AppliedLayer(entry.document, node_id(layer), entry.rect, checksum)


def apply_onto_active(doc: Any, entry: ResultEntry, *, merge_now: bool) -> AppliedLayer:
    """Onto the painter's active paint layer. With merge_now False the pixels wait in a layer right above it
    (the painter sees them at once) until `finish_merge`, when the full-quality render has replaced them."""
    active = doc.activeNode()
    if active is None or active.type() != "paintlayer" or active.locked():
        raise ApplyError("Select an unlocked paint layer to apply onto (or use Apply for a new layer).")
    layer, _, checksum = _add_layer(doc, entry, MERGE_PENDING_NAME)
    applied = AppliedLayer(
        entry.document, node_id(layer), entry.rect, checksum, merge_into=node_id(active), recipe=entry.recipe
    )
    if merge_now:
        finish_merge(doc, applied)
    return applied


def finish_merge(doc: Any, applied: AppliedLayer) -> bool:
    """Merges a pending onto-layer Apply down into the painter's layer (Krita's "Merge Down" undo step)."""
    layer = find_node(doc, applied.layer_id)
    target = find_node(doc, applied.merge_into)
    if layer is None or target is None:
        return False  # undone or deleted meanwhile: nothing to merge
    if not _directly_above(layer, target):
        # The layers were moved meanwhile: merging down would paint into some other layer. The result stays a
        # layer of its own, named like any applied result.
        layer.setName(layer_name(str(applied.recipe.get("prompt", "")), int(applied.recipe.get("seed", 0))))
        return False
    active = doc.activeNode()
    was_target = active is not None and node_id(active) in (applied.merge_into, applied.layer_id)
    parent = target.parentNode()
    index = [node_id(n) for n in parent.childNodes()].index(node_id(target))
    merged = layer.mergeDown()
    doc.waitForDone()
    if merged is None:  # Krita 5.1 merges in a stroke and returns nothing: the merged layer takes its place
        siblings = parent.childNodes()
        merged = siblings[index] if index < len(siblings) else None
    if merged is not None and was_target:
        keep_active(doc, merged, layer, insist=True)  # the painter's layer, now holding the result
    elif active is not None:
        keep_active(doc, active, layer, insist=True)
    doc.refreshProjection()
    return True


def _directly_above(layer: Any, below: Any) -> bool:
    siblings = [node_id(n) for n in layer.parentNode().childNodes()]
    index = siblings.index(node_id(layer))
    return index > 0 and siblings[index - 1] == node_id(below)


def replace_pixels(doc: Any, applied: AppliedLayer, entry: ResultEntry) -> bool:
    """The full-quality render replaces the applied preview pixels in place; False when the layer is gone or
    the painter has painted on it (their strokes win)."""
    layer = find_node(doc, applied.layer_id)
    if layer is None:
        return False
    x, y, w, h = applied.rect
    if zlib.crc32(bytes(layer.pixelData(x, y, w, h))) != applied.checksum:
        return False
    layer.setPixelData(entry_pixels(entry), x, y, w, h)
    applied.checksum = zlib.crc32(bytes(layer.pixelData(x, y, w, h)))
    if not applied.merge_into:
        record_applied(doc, applied.layer_id, {**entry.recipe, "bounds": list(entry.rect)})
    doc.refreshProjection()
    return True
