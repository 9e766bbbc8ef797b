"""Pixels between wire frames and numpy arrays (RGBA uint8 H x W x 4, masks H x W)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from protocol import ErrorCode, ImageEncoding, ImageFrame, ProtocolError

# Decompression bombs: a PNG may claim any size in its header; we compare with the declared size first.
Image.MAX_IMAGE_PIXELS = None


def frame_to_array(frame: ImageFrame) -> np.ndarray:
    """RGBA (H, W, 4) for colour encodings, (H, W) for gray8."""
    shape = (frame.height, frame.width)
    if frame.encoding is ImageEncoding.GRAY8:
        return np.frombuffer(frame.payload, dtype=np.uint8).reshape(shape).copy()
    if frame.encoding is ImageEncoding.RGBA8:
        return np.frombuffer(frame.payload, dtype=np.uint8).reshape(*shape, 4).copy()
    if frame.encoding is ImageEncoding.BGRA8:
        return np.frombuffer(frame.payload, dtype=np.uint8).reshape(*shape, 4)[..., [2, 1, 0, 3]].copy()
    return _decode_png(frame)


def _decode_png(frame: ImageFrame) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(frame.payload)) as image:
            if image.size != (frame.width, frame.height):
                raise ProtocolError(
                    ErrorCode.BAD_FRAME,
                    f"PNG is {image.size[0]}x{image.size[1]} but the frame declares "
                    f"{frame.width}x{frame.height}.",
                )
            return np.asarray(image.convert("RGBA"), dtype=np.uint8).copy()
    except ProtocolError:
        raise
    except UnidentifiedImageError:
        # PIL's own words name its in-memory file object ("<_io.BytesIO object at 0x...>"): useless to anyone.
        raise ProtocolError(ErrorCode.BAD_FRAME, _png_problem(frame, "is not a PNG file")) from None
    except Exception as error:  # noqa: BLE001 - PIL raises many kinds for broken files
        detail = f"is damaged ({type(error).__name__}: {str(error)[:80]})"
        raise ProtocolError(ErrorCode.BAD_FRAME, _png_problem(frame, detail)) from None


def _png_problem(frame: ImageFrame, detail: str) -> str:
    return (
        f"Image {frame.slot!r} {detail}: its frame must carry the bytes of one whole PNG file "
        "(or send the pixels as rgba8)."
    )


def array_to_payload(rgba: np.ndarray, encoding: str) -> bytes:
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"expected an RGBA uint8 array, got {rgba.dtype} {rgba.shape}")
    if encoding == "rgba8":
        return np.ascontiguousarray(rgba).tobytes()
    if encoding == "bgra8":
        return np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]).tobytes()
    if encoding == "png":
        buffer = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    raise ValueError(f"unknown result encoding {encoding!r}")
