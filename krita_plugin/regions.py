"""Regions: a prompt for the part of the image a layer (or group) covers.

The painter makes the active layer a region with the panel's "Add region" and types its prompt; the document
keeps region layer id -> prompt (document_state), so regions survive switching documents and restarting
Krita. A job carries each region as a gray8 mask slot, the layer's coverage (its alpha) over exactly the
rectangle and at exactly the size of the canvas it sends, and `params.regions` naming those slots.

The plugin never changes the region layer itself: Krita's Node.setName and Node.setColorLabel write the node
directly, without an undo step, so a marker put on the layer would be a change the painter can neither undo
nor tell from their own. The panel lists regions by layer name instead.

A region whose layer is gone (deleted) is neither listed nor sent, but stays in the document's state: undoing
the deletion brings back the same layer (same id), and with it the region. A hidden region layer and a region
without a prompt are not sent (neither would change the image: a region's prompt is joined with the
document's, protocol/regions.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._compat import protocol
from .document_state import DocumentState, read_state, update_state
from .nodes import find_node, node_id
from .placement import Rect

MAX_REGIONS = protocol.messages.MAX_REGIONS
REGION_TYPES = ("paintlayer", "grouplayer", "vectorlayer", "filelayer", "filllayer")
MARKER = "◆"  # before a region's layer name in the panel


@dataclass(frozen=True)
class Region:
    layer_id: str
    name: str  # the layer's name now (the panel's label)
    prompt: str


@dataclass(frozen=True)
class RegionMask:
    """One region of a job: its mask (gray8, the sent images' size) and prompt."""

    slot: str
    mask: bytes
    prompt: str


class RegionError(Exception):
    """The active layer can't be a region; the message says why."""


def regions(doc: Any, state: DocumentState | None = None) -> list[Region]:
    """The document's regions whose layer still exists, in adding order."""
    state = state or read_state(doc)
    found: list[Region] = []
    for entry in state.regions:
        layer_id, prompt = entry.get("layer"), entry.get("prompt", "")
        if not isinstance(layer_id, str) or not isinstance(prompt, str):
            continue
        node = find_node(doc, layer_id)
        if node is not None:
            found.append(Region(layer_id, str(node.name()), prompt))
    return found


def add_region(doc: Any) -> Region:
    """Makes the active layer (or group) a region with an empty prompt; a layer that already is one stays as
    it is. Only the document's state changes: no undo step, the layer untouched."""
    node = doc.activeNode()
    if node is None or str(node.type()) not in REGION_TYPES:
        raise RegionError("Select a paint layer or a group in the Layers docker to make it a region.")
    layer_id = node_id(node)
    current = {region.layer_id: region for region in regions(doc)}
    if layer_id in current:
        return current[layer_id]
    if len(current) >= MAX_REGIONS:
        raise RegionError(f"At most {MAX_REGIONS} regions: remove one first.")

    def add(state: DocumentState) -> None:
        state.regions = [e for e in state.regions if e.get("layer") != layer_id]
        state.regions.append({"layer": layer_id, "prompt": ""})

    update_state(doc, add)
    return Region(layer_id, str(node.name()), "")


def set_region_prompt(doc: Any, layer_id: str, prompt: str) -> bool:
    """Stores a region's prompt; returns whether it changed."""

    def change(state: DocumentState) -> None:
        for entry in state.regions:
            if entry.get("layer") == layer_id:
                entry["prompt"] = prompt

    return update_state(doc, change)


def remove_region(doc: Any, layer_id: str) -> None:
    def remove(state: DocumentState) -> None:
        state.regions = [e for e in state.regions if e.get("layer") != layer_id]

    update_state(doc, remove)


def region_slot(index: int) -> str:
    return f"region{index}"


def capture_regions(doc: Any, rect: Rect, image_size: tuple[int, int]) -> list[RegionMask]:
    """The masks of the regions a job sends: each visible region layer with a prompt, its alpha over `rect`
    (the canvas capture's rectangle) scaled to `image_size` (the sent canvas's size), 255 where the layer is
    opaque. All of them, also for an inpaint job: the backend drops those not touching the work area."""
    x, y, width, height = rect
    image_w, image_h = image_size
    masks: list[RegionMask] = []
    for region in regions(doc):
        node = find_node(doc, region.layer_id)
        if node is None or not node.visible() or not region.prompt.strip():
            continue
        pixels = bytes(node.projectionPixelData(x, y, width, height))
        alpha = pixels[3::4]
        if (image_w, image_h) != (width, height):
            from . import compose  # Qt, only where pixels are scaled: the rest imports without a Qt binding

            alpha = compose.scale_gray(alpha, width, height, image_w, image_h)
        masks.append(RegionMask(region_slot(len(masks)), alpha, region.prompt.strip()))
    return masks
