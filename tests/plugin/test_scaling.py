"""Scaling a captured region before it is sent: the fast path for opaque canvases gives the exact result's
bytes, and transparent canvases are scaled the exact way."""

from __future__ import annotations

import random

import pytest

from krita_plugin.compose import scale_bgra
from krita_plugin.qt import QImage, Qt, QtCore

pytestmark = pytest.mark.usefixtures("qapp")


def exact_scale(bgra: bytes, width: int, height: int, new_width: int, new_height: int) -> bytes:
    """Qt's smooth scaling on properly premultiplied pixels, converted back: the reference."""
    source = QImage(bgra, width, height, width * 4, QImage.Format.Format_ARGB32)
    premultiplied = source.convertToFormat(QImage.Format.Format_ARGB32_Premultiplied)
    smooth = Qt.TransformationMode.SmoothTransformation
    scaled = premultiplied.scaled(new_width, new_height, Qt.AspectRatioMode.IgnoreAspectRatio, smooth)
    return pixel_bytes(scaled.convertToFormat(QImage.Format.Format_ARGB32))


def pixel_bytes(image: QImage) -> bytes:
    """The image's bytes as they lie in memory (no row padding for 4-byte pixels)."""
    pointer = image.constBits()
    assert pointer is not None
    return pointer.asstring(image.sizeInBytes())


def noise(width: int, height: int, alpha: int | None, seed: int = 3) -> bytearray:
    rng = random.Random(seed)
    pixels = bytearray(rng.getrandbits(8) for _ in range(width * height * 4))
    if alpha is not None:
        pixels[3::4] = bytes([alpha]) * (width * height)
    return pixels


def test_an_opaque_canvas_scales_to_the_exact_bytes() -> None:
    pixels = bytes(noise(300, 200, alpha=255))
    assert scale_bgra(pixels, 300, 200, 113, 75) == exact_scale(pixels, 300, 200, 113, 75)


@pytest.mark.parametrize("where", ["everywhere", "one pixel", "a corner"])
def test_a_canvas_with_transparency_scales_the_exact_way(where: str) -> None:
    width, height = 240, 160
    pixels = noise(width, height, alpha=255)
    if where == "everywhere":
        pixels = noise(width, height, alpha=None)
    elif where == "one pixel":
        offset = (57 * width + 101) * 4
        pixels[offset : offset + 4] = b"\x00\x00\x00\x00"
    else:
        for row in range(40):
            start = row * width * 4
            pixels[start : start + 40 * 4] = b"\xff\xff\xff\x00" * 40  # erased: colour kept, alpha 0
    data = bytes(pixels)
    expected = exact_scale(data, width, height, 90, 60)
    assert scale_bgra(data, width, height, 90, 60) == expected
    # The shortcut would have been wrong here: transparent pixels' colour would have bled into the result.
    shortcut = QImage(data, width, height, width * 4, QImage.Format.Format_ARGB32_Premultiplied).scaled(
        90, 60, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation
    )
    assert pixel_bytes(shortcut) != expected


def test_a_qbytearray_from_krita_is_read_without_a_copy_and_scaled() -> None:
    pixels = bytes(noise(128, 128, alpha=255))
    assert scale_bgra(QtCore.QByteArray(pixels), 128, 128, 50, 50) == exact_scale(pixels, 128, 128, 50, 50)
