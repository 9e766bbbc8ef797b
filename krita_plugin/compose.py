"""Composites layer pixels the way Krita does for the common blend modes, with QPainter (no numpy in Krita).

Used to read "the image without the plugin's own layers" without hiding them and re-rendering the document,
which would need a synchronous refresh on every change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PyQt5.QtCore import Qt
from PyQt5.QtGui import QImage, QPainter

# Krita's composite op ids -> the QPainter mode with the same (W3C separable) formula.
BLEND_MODES: dict[str, QPainter.CompositionMode] = {
    "normal": QPainter.CompositionMode_SourceOver,
    "multiply": QPainter.CompositionMode_Multiply,
    "screen": QPainter.CompositionMode_Screen,
    "overlay": QPainter.CompositionMode_Overlay,
    "darken": QPainter.CompositionMode_Darken,
    "lighten": QPainter.CompositionMode_Lighten,
    "dodge": QPainter.CompositionMode_ColorDodge,
    "burn": QPainter.CompositionMode_ColorBurn,
    "hard_light": QPainter.CompositionMode_HardLight,
    "soft_light_svg": QPainter.CompositionMode_SoftLight,
    "diff": QPainter.CompositionMode_Difference,
    "exclusion": QPainter.CompositionMode_Exclusion,
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
    return QImage(bgra, width, height, width * 4, QImage.Format_ARGB32)


def bgra_image(bgra: Buffer, width: int, height: int) -> QImage:
    """A QImage owning a copy of BGRA pixels."""
    return bgra_view(bgra, width, height).copy()


def image_bytes(image: QImage) -> bytes:
    image = image.convertToFormat(QImage.Format_ARGB32)
    pointer = image.constBits()
    pointer.setsize(image.sizeInBytes())
    stride = image.bytesPerLine()
    width = image.width() * 4
    data = bytes(pointer)
    if stride == width:
        return data
    return b"".join(data[row * stride : row * stride + width] for row in range(image.height()))


def compose(width: int, height: int, layers: list[LayerPixels]) -> bytes:
    """Bottom-to-top composite over a transparent canvas; every layer must use a supported blend mode."""
    target = QImage(width, height, QImage.Format_ARGB32_Premultiplied)
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
    image = bgra_view(bgra, width, height)  # scaled() makes a new image: no copy of the source needed
    scaled = image.scaled(new_width, new_height, Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
    return image_bytes(scaled)


def scale_gray(gray: bytes, width: int, height: int, new_width: int, new_height: int) -> bytes:
    image = QImage(gray, width, height, width, QImage.Format_Grayscale8).copy()
    scaled = image.scaled(new_width, new_height, Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
    pointer = scaled.constBits()
    pointer.setsize(scaled.sizeInBytes())
    data, stride = bytes(pointer), scaled.bytesPerLine()
    if stride == new_width:
        return data
    return b"".join(data[row * stride : row * stride + new_width] for row in range(new_height))
