"""Reads what a job needs from a Krita document: the image without the guidance layers, the selection as a
mask and the control layers. Never modifies the painter's layers (the exact fallback only hides the guidance
layers left out of the image for a moment, and never while a button is down).

With a selection only the selection and its context are read (the cost follows the selection, not the
document); a region larger than the pixel budget is scaled down before it is sent: the backend renders at the
model's working size anyway, so sending more pixels only costs time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import compose
from ._compat import protocol
from .compose import Buffer
from .nodes import find_node, is_layer, node_id, top_level, walk
from .placement import Rect
from .pose_layer import read_pose
from .request_builder import CanvasCapture, Keypoint

# At resolution 1: 1.5 times the model's native side, so the backend still scales down (no detail the model
# can use is lost) while the transfer stays small (every byte is copied, masked and sent on Krita's machine).
SEND_SIDE_FACTOR = 1.5
SEND_PIXELS = 768 * 768  # SD1.5's (native side 512)


def send_pixels(native_side: int, resolution: float) -> int:
    """The most pixels a capture sends for a model of this native side at this working resolution."""
    return round((SEND_SIDE_FACTOR * native_side * max(1.0, resolution)) ** 2)


SUPPORTED_TYPES = {"paintlayer", "grouplayer", "vectorlayer", "filelayer", "filllayer", "clonelayer"}


class CaptureError(Exception):
    """The document can't be sent as it is; the message says what the painter can do."""


@dataclass
class CaptureRequest:
    exclude: set[str]  # node ids left out of the image (the guidance layers)
    controls: dict[str, str] = field(default_factory=dict)  # control kind name -> its guidance layer's id
    use_selection: bool = True  # a selection makes the job an inpaint of the selection and its context
    max_pixels: int = SEND_PIXELS  # larger regions are scaled down to about this many pixels before sending


def check_document(doc: Any) -> None:
    if doc.colorModel() != "RGBA" or doc.colorDepth() != "U8":
        raise CaptureError(
            "Live Diffusion works on 8-bit RGBA images. "
            "Convert with Image > Convert Image Color Space (RGB/Alpha, 8-bit integer)."
        )


def selection_rect(doc: Any) -> Rect | None:
    """The selection's bounding box within the document, or None without a (non-empty) selection."""
    selection = doc.selection()
    if selection is None or selection.width() <= 0 or selection.height() <= 0:
        return None
    x0, y0 = max(0, selection.x()), max(0, selection.y())
    x1 = min(doc.width(), selection.x() + selection.width())
    y1 = min(doc.height(), selection.y() + selection.height())
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def context_rect(box: Rect, width: int, height: int) -> Rect:
    """The selection plus the context around it that the model sees (a third of its size, at least 64 px)."""
    x, y, w, h = box
    pad = max(64, round(max(w, h) / 3))
    x0, y0 = max(0, x - pad), max(0, y - pad)
    x1, y1 = min(width, x + w + pad), min(height, y + h + pad)
    return x0, y0, x1 - x0, y1 - y0


def selection_mask(doc: Any, rect: Rect) -> bytes | None:
    """The selection over `rect` as gray8 (255 = selected), or None when nothing there is selected."""
    selection = doc.selection()
    if selection is None:
        return None
    data = bytes(selection.pixelData(*rect))
    return data if any(data) else None


def scaled_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def can_compose(node: Any) -> bool:
    if str(node.type()) not in SUPPORTED_TYPES or not compose.supported(str(node.blendingMode())):
        return False
    if node.inheritAlpha():
        return False
    return not (node.type() == "grouplayer" and node.passThroughMode())


def image_without(
    doc: Any,
    exclude: set[str],
    refresh_allowed: Callable[[], bool] = lambda: True,
    rect: Rect | None = None,
) -> Buffer:
    """The document's image (or its `rect`) as if the excluded layers were hidden.

    Krita's own projection when no excluded layer is visible; else composited here from the layers' own
    projections, which needs no re-render of the document. Blend modes QPainter can't reproduce fall back to
    hiding the excluded layers and reading Krita's projection.
    """
    x, y, width, height = rect or (0, 0, doc.width(), doc.height())
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
    hidden = [n for n in top if node_id(n) in exclude and n.visible()] + nested
    if not hidden:
        return doc.pixelData(x, y, width, height)  # a QByteArray: no copy until one is needed
    if not nested and all(can_compose(n) for n in layers):
        stack = [
            compose.LayerPixels(
                n.projectionPixelData(x, y, width, height), n.opacity() / 255.0, n.blendingMode()
            )
            for n in layers
        ]
        return compose.compose(width, height, stack)
    if not refresh_allowed():
        raise CaptureError("busy")  # the caller retries on a later tick
    try:
        for node in hidden:
            node.setVisible(False)
        doc.refreshProjection()
        return doc.pixelData(x, y, width, height)
    finally:
        for node in hidden:
            node.setVisible(True)
        doc.refreshProjection()


def capture(
    doc: Any, request: CaptureRequest, refresh_allowed: Callable[[], bool] = lambda: True
) -> CanvasCapture:
    check_document(doc)
    box = selection_rect(doc) if request.use_selection else None
    rect = (
        context_rect(box, doc.width(), doc.height()) if box is not None else (0, 0, doc.width(), doc.height())
    )
    x, y, width, height = rect
    mask = selection_mask(doc, rect) if box is not None else None
    image_w, image_h = scaled_size(width, height, request.max_pixels)
    control_images: dict[str, bytes] = {}
    control_poses: dict[str, list[list[Keypoint]]] = {}
    for kind, layer_id in request.controls.items():
        control = protocol.CONTROL_KINDS[kind]
        node = find_node(doc, layer_id)
        if node is None:
            raise CaptureError(
                f"The {control.label.lower()} layer is gone. Pick or create another one in the panel."
            )
        if control.input == protocol.KEYPOINTS:
            sx, sy = image_w / width, image_h / height
            people = [
                [None if p is None else ((p[0] - x) * sx, (p[1] - y) * sy) for p in person]
                for person in read_pose(node, doc.xRes(), doc.yRes())
            ]
            if people:  # a pose layer without a figure guides nothing
                control_poses[kind] = people
        else:
            pixels = node.projectionPixelData(x, y, width, height)
            control_images[kind] = _scaled(pixels, width, height, image_w, image_h)
    canvas = _scaled(
        image_without(doc, request.exclude, refresh_allowed, rect), width, height, image_w, image_h
    )
    if mask is not None and (image_w, image_h) != (width, height):
        mask = compose.scale_gray(mask, width, height, image_w, image_h)
    return CanvasCapture(
        x, y, width, height, canvas, mask, control_images, control_poses,
        image_width=image_w, image_height=image_h,
    )  # fmt: skip


def _scaled(bgra: Buffer, width: int, height: int, new_width: int, new_height: int) -> bytes:
    """Krita's pixels (a QByteArray, or bytes), scaled when asked, as the bytes a frame carries. Read through
    the buffer, not copied first: at 2048x2048 each copy of the 16 MiB costs more than the scaling."""
    if (width, height) == (new_width, new_height):
        return bytes(bgra)
    return compose.scale_bgra(bgra, width, height, new_width, new_height)
