from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    ErrorCode,
    ImageEncoding,
    ImageFrame,
    ProtocolError,
    bgra_to_rgba,
    decode_frame,
    encode_frame,
)
from protocol.frames import HEADER, encode_png


def frame(encoding: ImageEncoding = ImageEncoding.BGRA8, width: int = 3, height: int = 2) -> ImageFrame:
    channels = encoding.channels or 4
    return ImageFrame("job-1", "canvas", encoding, width, height, bytes(range(width * height * channels)))


@given(
    width=st.integers(1, 16),
    height=st.integers(1, 16),
    encoding=st.sampled_from([ImageEncoding.RGBA8, ImageEncoding.BGRA8, ImageEncoding.GRAY8]),
    job_id=st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True),
)
def test_raw_frames_round_trip(width: int, height: int, encoding: ImageEncoding, job_id: str) -> None:
    payload = bytes((i * 7) % 256 for i in range(width * height * (encoding.channels or 1)))
    original = ImageFrame(job_id, "canvas", encoding, width, height, payload)
    assert decode_frame(encode_frame(original), 4096, 4096) == original


def test_header_is_small_and_payload_is_not_base64() -> None:
    data = encode_frame(frame())
    assert data.startswith(b"KLDF")
    assert len(data) == HEADER.size + len(b"job-1/canvas") + 3 * 2 * 4
    assert data.endswith(bytes(range(24)))


def expect_bad(data: bytes, code: ErrorCode = ErrorCode.BAD_FRAME, text: str = "") -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_frame(data, 4096, 4096)
    assert caught.value.code is code
    assert text in caught.value.message


def test_truncated_and_padded_payloads_are_refused() -> None:
    data = encode_frame(frame())
    expect_bad(data[:-1], text="declares a 24-byte payload but carries 23")
    expect_bad(data + b"\x00", text="carries 25")
    expect_bad(data[:10], text="shorter than")


def test_declared_length_must_match_image_size() -> None:
    good = frame()
    header = HEADER.pack(b"KLDF", 1, ImageEncoding.BGRA8, len(good.name), 3, 2, 20)
    expect_bad(header + good.name.encode() + good.payload[:20], text="needs 24 bytes")


def test_bad_magic_version_encoding_name() -> None:
    data = bytearray(encode_frame(frame()))
    expect_bad(b"XXXX" + bytes(data[4:]), text="magic")
    expect_bad(bytes(data[:4]) + b"\x09" + bytes(data[5:]), text="version")
    expect_bad(bytes(data[:5]) + b"\x63" + bytes(data[6:]), text="unknown image encoding")
    nameless = HEADER.pack(b"KLDF", 1, 2, 6, 1, 1, 4) + b"noslsh" + b"\x00" * 4
    expect_bad(nameless, text="<job_id>/<slot>")


def test_oversized_images_are_refused_before_reading_pixels() -> None:
    header = HEADER.pack(b"KLDF", 1, ImageEncoding.GRAY8, 5, 5000, 10, 50000)
    expect_bad(header + b"j/can", ErrorCode.TOO_LARGE, "exceeds the server limit")
    zero = HEADER.pack(b"KLDF", 1, ImageEncoding.GRAY8, 5, 0, 10, 0)
    expect_bad(zero + b"j/can", text="empty")


def test_png_frames_must_carry_a_png() -> None:
    png = encode_png(2, 1, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    ok = ImageFrame("j", "canvas", ImageEncoding.PNG, 2, 1, png)
    assert decode_frame(encode_frame(ok), 64, 64).payload == png
    not_png = ImageFrame("j", "canvas", ImageEncoding.PNG, 2, 1, b"GIF89a....")
    expect_bad(encode_frame(not_png), text="not a PNG")


def test_stdlib_png_writer_produces_valid_chunks() -> None:
    rgba = bytes(range(2 * 2 * 4))
    png = encode_png(2, 2, rgba)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", png[8:16])
    assert (length, kind) == (13, b"IHDR")
    idat_length = struct.unpack(">I", png[33:37])[0]
    raw = zlib.decompress(png[41 : 41 + idat_length])
    assert raw == b"\x00" + rgba[:8] + b"\x00" + rgba[8:]


def test_bgra_rgba_swap_is_an_involution() -> None:
    data = bytes([1, 2, 3, 4, 5, 6, 7, 8])
    assert bgra_to_rgba(data) == bytes([3, 2, 1, 4, 7, 6, 5, 8])
    assert bgra_to_rgba(bgra_to_rgba(data)) == data
