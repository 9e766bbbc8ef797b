"""Composites layer pixels the way Krita does for the common blend modes, with QPainter (no numpy in Krita).

Used to read "the image without the plugin's own layers" without hiding them and re-rendering the document,
which would need a synchronous refresh on every change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .qt import QImage, QPainter, Qt

# Krita's composite op ids -> the QPainter mode with the same (W3C separable) formula.
BLEND_MODES: dict[str, QPainter.CompositionMode] = {
    "normal": QPainter.CompositionMode.CompositionMode_SourceOver,
    "multiply": QPainter.CompositionMode.CompositionMode_Multiply,
    "screen": QPainter.CompositionMode.CompositionMode_Screen,
    "overlay": QPainter.CompositionMode.CompositionMode_Overlay,
    "darken": QPainter.CompositionMode.CompositionMode_Darken,
    "lighten": QPainter.CompositionMode.CompositionMode_Lighten,
    "dodge": QPainter.CompositionMode.CompositionMode_ColorDodge,
    "burn": QPainter.CompositionMode.CompositionMode_ColorBurn,
    "hard_light": QPainter.CompositionMode.CompositionMode_HardLight,
    "soft_light_svg": QPainter.CompositionMode.CompositionMode_SoftLight,
    "diff": QPainter.CompositionMode.CompositionMode_Difference,
    "exclusion": QPainter.CompositionMode.CompositionMode_Exclusion,
}


# Pixels as Krita hands them (QByteArray) or as bytes: anything with the buffer protocol that QImage can view.
Buffer = Any


@dataclass
class LayerPixels:
    bgra: Buffer  # width x height, Krita's BGRA byte order, not premultiplied
    opacity: float = 1.0
    blend_mode: str = "normal"


def supported(blend_mode: str) -> bool:
    return blend_mode in BLEND_MODES


def bgra_view(bgra: Buffer, width: int, height: int) -> QImage:
    """A QImage viewing BGRA pixels without copying them (QImage's ARGB32 is B,G,R,A in memory on
    little-endian machines); valid only while `bgra` lives."""
    return QImage(bgra, width, height, width * 4, QImage.Format.Format_ARGB32)


def bgra_image(bgra: Buffer, width: int, height: int) -> QImage:
    """A QImage owning a copy of BGRA pixels."""
    return bgra_view(bgra, width, height).copy()


def image_bytes(image: QImage) -> bytes:
    image = image.convertToFormat(QImage.Format.Format_ARGB32)
    stride = image.bytesPerLine()
    width = image.width() * 4
    data = _raw_bytes(image)
    if stride == width:
        return data
    return b"".join(data[row * stride : row * stride + width] for row in range(image.height()))


def compose(width: int, height: int, layers: list[LayerPixels]) -> bytes:
    """Bottom-to-top composite over a transparent canvas; every layer must use a supported blend mode."""
    target = QImage(width, height, QImage.Format.Format_ARGB32_Premultiplied)
    target.fill(0)
    painter = QPainter(target)
    try:
        for layer in layers:
            painter.setCompositionMode(BLEND_MODES[layer.blend_mode])
            painter.setOpacity(max(0.0, min(1.0, layer.opacity)))
            painter.drawImage(0, 0, bgra_view(layer.bgra, width, height))  # layers outlive the painting
    finally:
        painter.end()
    return image_bytes(target)


def scale_bgra(bgra: Buffer, width: int, height: int, new_width: int, new_height: int) -> bytes:
    """Smoothly scaled BGRA pixels (not premultiplied, as Krita's are).

    Qt scales smoothly only premultiplied pixels, and converting a large source first costs about twice the
    scaling itself (at 2048x2048 most of a live frame's plugin time). Opaque pixels read the same either way,
    and nearly every canvas is opaque (a white background), so the source is first scaled as if it were
    premultiplied; a result that is not fully opaque shows a source that wasn't, and is scaled again the
    exact way. A pixel whose weight in the result is below Qt's 1/255 step can't show in its alpha, but its
    colour error is below that step too."""
    premultiplied_view = QImage(bgra, width, height, width * 4, QImage.Format.Format_ARGB32_Premultiplied)
    as_if_opaque = _smooth(premultiplied_view, new_width, new_height)
    pixels = _raw_bytes(as_if_opaque)
    if not pixels[3::4].strip(b"\xff"):
        return pixels
    exact = bgra_view(bgra, width, height).convertToFormat(QImage.Format.Format_ARGB32_Premultiplied)
    return image_bytes(_smooth(exact, new_width, new_height))


def _smooth(image: QImage, new_width: int, new_height: int) -> QImage:
    return image.scaled(
        new_width,
        new_height,
        Qt.AspectRatioMode.IgnoreAspectRatio,
        Qt.TransformationMode.SmoothTransformation,
    )


def _raw_bytes(image: QImage) -> bytes:
    """The image's pixels as they are in memory, rows padded to bytesPerLine() (rows of 4-byte pixels
    need no padding)."""
    pointer = image.constBits()
    if pointer is None:  # a null image has no pixels
        return b""
    return pointer.asstring(image.sizeInBytes())


def scale_gray(gray: bytes, width: int, height: int, new_width: int, new_height: int) -> bytes:
    image = QImage(gray, width, height, width, QImage.Format.Format_Grayscale8).copy()
    scaled = image.scaled(
        new_width,
        new_height,
        Qt.AspectRatioMode.IgnoreAspectRatio,
        Qt.TransformationMode.SmoothTransformation,
    ).convertToFormat(QImage.Format.Format_Grayscale8)  # Qt 5's smooth scaling hands back RGB32 pixels
    data, stride = _raw_bytes(scaled), scaled.bytesPerLine()
    if stride == new_width:
        return data
    return b"".join(data[row * stride : row * stride + new_width] for row in range(new_height))
