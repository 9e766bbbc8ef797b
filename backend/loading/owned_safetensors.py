"""Reads .safetensors files into tensors the process owns, with plain reads instead of a memory map.

The safetensors library maps the file, and on the CPU the tensors it returns stay views of that mapping (so do
weights built from them when no dtype or device change copies them). Once the file is truncated while mapped
(`cp`, `curl -o`, `rsync --inplace` over it), every touch of those pages raises SIGBUS and the server dies
without a log line. Read into owned memory, a rewritten file can only make a read come up short, which is
reported like any other damaged file.

The format: 8 bytes little-endian header length N, N bytes of JSON
(`{"name": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`), then the
data, offsets relative to its start.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

import torch

# The safetensors library refuses headers above 100 MB too; SD1.5 checkpoints have about 150 KB.
MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsReadError(ValueError):
    """The file is not a complete, well-formed .safetensors file (or changed while it was read)."""


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the file, in memory owned by this process, on the CPU, in the file's dtype."""
    with open(path, "rb", buffering=0) as f:
        before = os.fstat(f.fileno())
        size = before.st_size
        (header_length,) = struct.unpack("<Q", _read_exactly(f, 8, "the header length"))
        if header_length > min(MAX_HEADER_BYTES, size - 8):
            raise SafetensorsReadError(f"its header claims {header_length} bytes; the file has {size}")
        try:
            header = json.loads(_read_exactly(f, header_length, "the header"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise SafetensorsReadError(f"its header is not valid JSON ({e})") from None
        entries = _entries(header, data_bytes=size - 8 - header_length)
        tensors: dict[str, torch.Tensor] = {}
        data_start = 8 + header_length
        for entry in sorted(entries, key=lambda e: e.begin):  # in file order: sequential reads
            tensor = torch.empty(entry.shape, dtype=entry.dtype)
            if entry.end > entry.begin:
                f.seek(data_start + entry.begin)
                target = tensor.reshape(-1).view(torch.uint8).numpy()
                _read_into(f, target.data, entry.name)  # the array's bytes, as a writable memoryview
            tensors[entry.name] = tensor
        after = os.fstat(f.fileno())
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise SafetensorsReadError("it changed while it was being read (is a copy still in progress?)")
    return tensors


def _entries(header: Any, data_bytes: int) -> list[_Entry]:
    if not isinstance(header, dict):
        raise SafetensorsReadError("its header is not a JSON object")
    entries = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(spec, dict):
            raise SafetensorsReadError(f"tensor {name[:100]!r} has no description")
        dtype = DTYPES.get(spec.get("dtype"))  # type: ignore[arg-type]
        shape = spec.get("shape")
        offsets = spec.get("data_offsets")
        if dtype is None:
            label = str(spec.get("dtype"))[:20]
            raise SafetensorsReadError(f"tensor {name[:100]!r} has an unknown dtype {label!r}")
        if not _whole_numbers(shape) or not _whole_numbers(offsets) or len(offsets) != 2:
            raise SafetensorsReadError(f"tensor {name[:100]!r} has a malformed shape or offsets")
        begin, end = offsets
        expected = math.prod(shape) * dtype.itemsize
        if not begin <= end <= data_bytes or end - begin != expected:
            raise SafetensorsReadError(
                f"tensor {name[:100]!r} needs bytes {begin}..{end} of {data_bytes} "
                f"(the file is incomplete or damaged)"
            )
        entries.append(_Entry(name, dtype, tuple(shape), begin, end))
    return entries


def _whole_numbers(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def _read_exactly(f: BinaryIO, count: int, what: str) -> bytes:
    data = f.read(count)
    if data is None or len(data) != count:
        raise SafetensorsReadError(f"the file ends inside {what}")
    return data


def _read_into(f: BinaryIO, target: memoryview, name: str) -> None:
    filled = 0
    while filled < len(target):
        got = f.readinto(target[filled:])  # type: ignore[attr-defined]
        if not got:
            raise SafetensorsReadError(f"the file ends inside tensor {name[:100]!r} (it was truncated)")
        filled += got
