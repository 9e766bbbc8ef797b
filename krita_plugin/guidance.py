"""Guidance layers, one per control kind of the protocol's table: which layers the panel offers for each
kind, the document's stored choices, the layer the panel's "+" button adds (a paint layer for an image
kind, a pose layer for a keypoints kind) and the one its "from image" button adds (the control image the
backend made of the canvas, control_images.py).

The plugin's own guidance layers (made with the panel's "+" buttons) come first; applied results are never
offered (they are results, not guidance). Choices live in the document (document_state), so they survive
switching documents and restarting Krita.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._compat import protocol
from .apply import keep_active
from .document_state import DocumentState, read_state, remember_guidance
from .nodes import find_node, is_layer, node_id, walk
from .placement import Rect
from .pose_layer import create_pose_layer, is_pose_layer, sync_bones
from .settings import GenerationSettings

Choice = tuple[str, str]  # (layer id, label)


@dataclass
class LayerChoices:
    """For each control kind of the protocol's table, the layers that can guide it."""

    by_kind: dict[str, list[Choice]]

    def of(self, kind: str) -> list[Choice]:
        return self.by_kind.get(kind, [])


def layer_choices(doc: Any, state: DocumentState | None = None) -> LayerChoices:
    """Pose layers for a keypoints kind; paint and vector layers (the plugin's own guidance layers first)
    for an image kind."""
    state = state or read_state(doc)
    ours = set(state.guidance_layers)
    applied = set(state.applied)
    drawn_first: list[Choice] = []
    drawn_rest: list[Choice] = []
    poses: list[Choice] = []
    for node in walk(doc.rootNode()):
        uid = node_id(node)
        if not is_layer(node) or uid in applied:
            continue
        if node.type() == "vectorlayer" and is_pose_layer(node):
            poses.append((uid, node.name()))
        elif node.type() in ("paintlayer", "vectorlayer"):
            (drawn_first if uid in ours else drawn_rest).append((uid, node.name()))
    by_input = {protocol.KEYPOINTS: poses, protocol.IMAGE: drawn_first + drawn_rest}
    return LayerChoices({kind.name: list(by_input[kind.input]) for kind in protocol.CONTROL_KINDS.values()})


def chosen(doc: Any, state: DocumentState | None = None) -> dict[str, str]:
    """The document's stored choice for each kind of the protocol's table: kind name -> layer id, leaving out
    kinds without a choice and choices whose layer is gone."""
    state = state or read_state(doc)
    return {
        kind: layer_id
        for kind, layer_id in state.guidance.items()
        if kind in protocol.CONTROL_KINDS and find_node(doc, layer_id) is not None
    }


def layer_name(kind: str) -> str:
    return f"{protocol.CONTROL_KINDS[kind].label} (Live Diffusion)"


def create_guidance_layer(doc: Any, kind: str) -> str:
    """Adds a layer on top to guide `kind` and chooses it for that kind; one undo step ("Add Layer").
    Returns what the panel tells the painter.

    An image kind's layer is drawn on, so it becomes the active layer; a pose layer's joints are moved with
    the shape tool whatever layer is active, so the painter's layer stays active."""
    control = protocol.CONTROL_KINDS[kind]
    if control.input == protocol.KEYPOINTS:
        active = doc.activeNode()
        layer = create_pose_layer(doc, name=layer_name(kind))  # on top: its joints stay visible and movable
        keep_active(doc, active, layer)
        told = f"{control.label} layer added: move its joints with the shape select tool."
    else:
        layer = doc.createNode(layer_name(kind), "paintlayer")
        doc.rootNode().addChildNode(layer, None)
        doc.setActiveNode(layer)
        told = f"{control.label} layer added and selected: draw what the image should follow."
    remember_guidance(doc, {kind: node_id(layer)}, created=node_id(layer))
    return told


def add_control_layer(doc: Any, kind: str, pixels: bytes, rect: Rect) -> str:
    """Adds the backend's control image for `kind` (BGRA8 at `rect`'s size) as a layer on top and chooses it
    for that kind: one undo step ("Add Layer"), as the "+" button's. The painter's active layer stays active
    (the layer arrives while they may be painting elsewhere). Returns what the panel tells the painter."""
    control = protocol.CONTROL_KINDS[kind]
    x, y, w, h = rect
    active = doc.activeNode()
    layer = doc.createNode(f"{control.label} from image (Live Diffusion)", "paintlayer")
    layer.setPixelData(pixels, x, y, w, h)  # before adding: undoing the add removes the layer with its pixels
    doc.rootNode().addChildNode(layer, None)  # on top, where guidance layers stay visible
    keep_active(doc, active, layer)
    doc.refreshProjection()
    remember_guidance(doc, {kind: node_id(layer)}, created=node_id(layer))
    return f"{control.label} layer made from the image and chosen: edit it as you like."


def sync_pose_layers(doc: Any, settings: GenerationSettings) -> None:
    """Keeps the bones of every chosen pose layer on its joints (the painter moves only the joints)."""
    for kind, choice in settings.chosen_guidance().items():
        if protocol.CONTROL_KINDS[kind].input == protocol.KEYPOINTS:
            node = find_node(doc, choice.node_id)
            if node is not None and is_pose_layer(node):
                sync_bones(node)
