"""Guidance layers: which layers the panel offers for scribble and pose, and creating a new scribble layer.

The plugin's own guidance layers (made with the panel's "New" buttons) come first; applied results are never
offered (they are results, not guidance). Choices live in the document (document_state), so they survive
switching documents and restarting Krita.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .document_state import DocumentState, read_state, remember_guidance
from .nodes import find_node, is_layer, node_id, walk
from .pose_layer import is_pose_layer

SCRIBBLE_LAYER_NAME = "Scribble (Live Diffusion)"

Choice = tuple[str, str]  # (layer id, label)


@dataclass
class LayerChoices:
    scribble: list[Choice]
    pose: list[Choice]


def layer_choices(doc: Any, state: DocumentState | None = None) -> LayerChoices:
    state = state or read_state(doc)
    ours = set(state.guidance_layers)
    applied = set(state.applied)
    scribble_first: list[Choice] = []
    scribble_rest: list[Choice] = []
    pose: list[Choice] = []
    for node in walk(doc.rootNode()):
        uid = node_id(node)
        if not is_layer(node) or uid in applied:
            continue
        if node.type() == "vectorlayer" and is_pose_layer(node):
            pose.append((uid, node.name()))
        elif node.type() in ("paintlayer", "vectorlayer"):
            (scribble_first if uid in ours else scribble_rest).append((uid, node.name()))
    return LayerChoices(scribble_first + scribble_rest, pose)


def chosen(doc: Any, state: DocumentState | None = None) -> tuple[str, str]:
    """The document's stored (scribble, pose) choice, each "" when unset or its layer is gone."""
    state = state or read_state(doc)
    scribble = state.scribble if find_node(doc, state.scribble) is not None else ""
    pose = state.pose if find_node(doc, state.pose) is not None else ""
    return scribble, pose


def create_scribble_layer(doc: Any) -> Any:
    """A new paint layer on top for guidance lines; the painter asked for it, so it becomes the active layer
    (they create it to draw on it). One undo step ("Add Layer")."""
    layer = doc.createNode(SCRIBBLE_LAYER_NAME, "paintlayer")
    doc.rootNode().addChildNode(layer, None)
    doc.setActiveNode(layer)
    remember_guidance(doc, scribble=node_id(layer), created=node_id(layer))
    return layer
