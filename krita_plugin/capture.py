"""Reads what a job needs from a Krita document: the image without the plugin's layers, the selection as a
mask and the control layers. Never modifies the painter's layers (the exact fallback only hides the layers
left out of the image, the plugin's own and the guidance layers, for a moment)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import compose
from .nodes import find_node, is_layer, node_id, top_level, walk
from .pose_layer import read_pose
from .request_builder import CanvasCapture

SUPPORTED_TYPES = {"paintlayer", "grouplayer", "vectorlayer", "filelayer", "filllayer", "clonelayer"}


class CaptureError(Exception):
    """The document can't be sent as it is; the message says what the painter can do."""


@dataclass
class CaptureRequest:
    exclude: set[str]  # node ids left out of the image (preview, control layers)
    with_mask: bool = False
    scribble_id: str = ""
    pose_id: str = ""


def check_document(doc: Any) -> None:
    if doc.colorModel() != "RGBA" or doc.colorDepth() != "U8":
        raise CaptureError(
            "Live Diffusion works on 8-bit RGBA images. "
            "Convert with Image > Convert Image Color Space (RGB/Alpha, 8-bit integer)."
        )


def selection_mask(doc: Any) -> bytes | None:
    """The selection over the whole canvas as gray8 (255 = selected), or None without a selection."""
    selection = doc.selection()
    if selection is None or selection.width() <= 0 or selection.height() <= 0:
        return None
    data = bytes(selection.pixelData(0, 0, doc.width(), doc.height()))
    return data if any(data) else None


def can_compose(node: Any) -> bool:
    if str(node.type()) not in SUPPORTED_TYPES or not compose.supported(str(node.blendingMode())):
        return False
    if node.inheritAlpha():
        return False
    return not (node.type() == "grouplayer" and node.passThroughMode())


def image_without(doc: Any, exclude: set[str], refresh_allowed: Callable[[], bool] = lambda: True) -> bytes:
    """The document's image as if the excluded layers were hidden.

    Usually composited here from the layers' own projections, which needs no re-render of the document. Blend
    modes QPainter can't reproduce fall back to hiding the excluded layers and reading Krita's projection.
    """
    width, height = doc.width(), doc.height()
    top = top_level(doc)
    layers = [n for n in top if is_layer(n) and n.visible() and node_id(n) not in exclude]
    # An excluded layer inside a group (a scribble or pose layer the painter keeps in a folder) shows through
    # its group's projection: only hiding it leaves it out.
    top_ids = {node_id(n) for n in top}
    nested = [
        n
        for n in walk(doc.rootNode())
        if node_id(n) in exclude and node_id(n) not in top_ids and is_layer(n) and n.visible()
    ]
    if not nested and all(can_compose(n) for n in layers):
        stack = [
            compose.LayerPixels(
                bytes(n.projectionPixelData(0, 0, width, height)), n.opacity() / 255.0, n.blendingMode()
            )
            for n in layers
        ]
        return compose.compose(width, height, stack)
    hidden = [n for n in top if node_id(n) in exclude and n.visible()] + nested
    if not hidden:
        return bytes(doc.pixelData(0, 0, width, height))
    if not refresh_allowed():
        raise CaptureError("busy")  # the caller retries on a later tick
    try:
        for node in hidden:
            node.setVisible(False)
        doc.refreshProjection()
        return bytes(doc.pixelData(0, 0, width, height))
    finally:
        for node in hidden:
            node.setVisible(True)
        doc.refreshProjection()


def capture(
    doc: Any, request: CaptureRequest, refresh_allowed: Callable[[], bool] = lambda: True
) -> CanvasCapture:
    check_document(doc)
    width, height = doc.width(), doc.height()
    mask = None
    if request.with_mask:
        mask = selection_mask(doc)
        if mask is None:
            raise CaptureError("Select the area to redraw first: inpaint works inside the selection.")
    scribble = None
    if request.scribble_id:
        node = find_node(doc, request.scribble_id)
        if node is None:
            raise CaptureError("The scribble layer is gone. Pick another one in the panel.")
        scribble = bytes(node.projectionPixelData(0, 0, width, height))
    pose = None
    if request.pose_id:
        node = find_node(doc, request.pose_id)
        if node is None:
            raise CaptureError("The pose layer is gone. Pick or create another one in the panel.")
        pose = read_pose(node, doc.xRes(), doc.yRes()) or None
    canvas = image_without(doc, request.exclude, refresh_allowed)
    return CanvasCapture(0, 0, width, height, canvas, mask, scribble, pose)
