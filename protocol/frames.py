"""Binary image frames: a fixed little header, a name, then the raw payload (never base64).

Layout (big-endian):
    magic        4 bytes  b"KLDF"
    version      u8       FRAME_VERSION
    encoding     u8       ImageEncoding
    name_length  u16      length of the UTF-8 name that follows the header
    width        u32
    height       u32
    payload_len  u32      must equal the bytes after the name
    name         name_length bytes: "<job_id>/<slot>", e.g. "job-7/canvas"
    payload      payload_len bytes
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from .errors import ErrorCode, ProtocolError

MAGIC = b"KLDF"
FRAME_VERSION = 1
HEADER = struct.Struct(">4sBBHIII")
MAX_NAME_LENGTH = 200
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageEncoding(IntEnum):
    RGBA8 = 1
    BGRA8 = 2
    PNG = 3
    GRAY8 = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> ImageEncoding:
        try:
            return cls[label.upper()]
        except KeyError:
            known = ", ".join(e.label for e in cls)
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, f"Unknown image encoding {label!r}; known encodings: {known}."
            ) from None

    @property
    def channels(self) -> int | None:
        """Bytes per pixel of the raw encodings; None for compressed ones."""
        return {ImageEncoding.RGBA8: 4, ImageEncoding.BGRA8: 4, ImageEncoding.GRAY8: 1}.get(self)


@dataclass(frozen=True)
class ImageFrame:
    job_id: str
    slot: str
    encoding: ImageEncoding
    width: int
    height: int
    payload: bytes

    @property
    def name(self) -> str:
        return f"{self.job_id}/{self.slot}"


def encode_frame(frame: ImageFrame) -> bytes:
    name = frame.name.encode("utf-8")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"frame name longer than {MAX_NAME_LENGTH} bytes")
    expected = expected_payload_length(frame.encoding, frame.width, frame.height)
    if expected is not None and expected != len(frame.payload):
        raise ValueError(
            f"{frame.encoding.label} payload of {frame.width}x{frame.height} must be {expected} bytes"
        )
    header = HEADER.pack(
        MAGIC, FRAME_VERSION, int(frame.encoding), len(name), frame.width, frame.height, len(frame.payload)
    )
    return b"".join((header, name, frame.payload))


def expected_payload_length(encoding: ImageEncoding, width: int, height: int) -> int | None:
    channels = encoding.channels
    return None if channels is None else width * height * channels


def decode_frame(data: bytes | bytearray | memoryview, max_width: int, max_height: int) -> ImageFrame:
    """Parse and check a binary frame; every way a frame can lie about itself raises ProtocolError."""
    view = memoryview(data)
    if len(view) < HEADER.size:
        raise _bad(f"Binary frame of {len(view)} bytes is shorter than the {HEADER.size}-byte header.")
    magic, version, encoding_value, name_length, width, height, payload_length = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise _bad("Binary frame does not start with the KLDF magic bytes.")
    if version != FRAME_VERSION:
        raise _bad(f"Binary frame version {version} is not supported (expected {FRAME_VERSION}).")
    try:
        encoding = ImageEncoding(encoding_value)
    except ValueError:
        raise _bad(f"Binary frame has unknown image encoding {encoding_value}.") from None
    if name_length == 0 or name_length > MAX_NAME_LENGTH:
        raise _bad(f"Binary frame name length {name_length} is outside 1..{MAX_NAME_LENGTH}.")
    if width == 0 or height == 0:
        raise _bad(f"Image size {width}x{height} is empty.")
    if width > max_width or height > max_height:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"Image of {width}x{height} exceeds the server limit of {max_width}x{max_height}.",
        )
    body_start = HEADER.size + name_length
    actual_payload = len(view) - body_start
    if actual_payload != payload_length:
        raise _bad(
            f"Binary frame declares a {payload_length}-byte payload but carries {max(actual_payload, 0)}."
        )
    expected = expected_payload_length(encoding, width, height)
    if expected is not None and expected != payload_length:
        raise _bad(
            f"A {encoding.label} image of {width}x{height} needs {expected} bytes, "
            f"the frame has {payload_length}."
        )
    if encoding is ImageEncoding.PNG and not bytes(view[body_start : body_start + 8]) == PNG_SIGNATURE:
        raise _bad("Binary frame says PNG but the payload is not a PNG file.")
    try:
        name = bytes(view[HEADER.size : body_start]).decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("Binary frame name is not UTF-8.") from None
    job_id, sep, slot = name.partition("/")
    if not sep or not job_id or not slot:
        raise _bad(f"Binary frame name {name!r} is not of the form '<job_id>/<slot>'.")
    return ImageFrame(job_id, slot, encoding, width, height, bytes(view[body_start:]))


def encode_png(width: int, height: int, rgba: bytes) -> bytes:
    """Minimal stdlib PNG writer (8-bit RGBA, no filtering) for clients without an imaging library."""
    if len(rgba) != width * height * 4:
        raise ValueError("rgba payload size does not match width x height x 4")
    stride = width * 4
    raw = b"".join(b"\x00" + rgba[row * stride : (row + 1) * stride] for row in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    )


def bgra_to_rgba(data: bytes) -> bytes:
    """Swap the blue and red bytes of every pixel (the conversion is its own inverse)."""
    out = bytearray(data)
    out[0::4] = data[2::4]
    out[2::4] = data[0::4]
    return bytes(out)


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FRAME, message)
