"""What a model file holds, read without loading it: a .safetensors header, a torch.save archive's names.

A .safetensors file starts with 8 bytes of length, then JSON: each tensor's name, dtype, shape and place in
the file; the header is checked against the file's size, so a cut-off download shows. A .ckpt/.pt/.pth file
is a zip archive around a pickle (torch.save): the archive's directory shows a cut-off download, and the
pickle's opcodes, read without running them, name the Python objects it would build (the loader's
torch.load(weights_only=True) refuses any but tensors and plain containers) and the tensors' names.

Stdlib only: backend/model_check.py judges files with it on the server's side, where torch is never imported.
"""

from __future__ import annotations

import json
import os
import pickletools
import re
import struct
import zipfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

MAX_HEADER_BYTES = 100 * 1024 * 1024  # as the loader (owned_safetensors) and the safetensors library


DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
    "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip


MAX_PICKLE_BYTES = 64 * 1024 * 1024  # an SD checkpoint's pickle is well under 1 MiB; larger isn't judged
# What torch.load(weights_only=True) builds besides tensors (torch/_weights_only_unpickler.py's allowlist):
# anything else in a pickle makes the loader refuse the file.
SAFE_GLOBALS = {
    "collections.OrderedDict", "collections.Counter", "torch.nn.parameter.Parameter",
    "torch.serialization._get_layout", "torch.Size", "torch.Tensor", "torch.device", "_codecs.encode",
    "builtins.bytearray", "builtins.set", "builtins.complex", "torch._tensor._rebuild_from_type_v2",
    "torch.storage.UntypedStorage", "torch.storage.TypedStorage",
}  # fmt: skip
SAFE_TORCH_NAME = re.compile(
    r"^torch\.(_utils\._rebuild_\w+|(cuda\.)?\w*(Storage|Tensor)"  # rebuild functions, tensor/storage classes
    r"|u?int\d*|float\d*(_\w+)?|bfloat16|half|double|long|short|bool|cfloat|cdouble|chalf|complex\d*"
    r"|q(u)?int\w*|bits\w*|per_(tensor|channel)_\w+)$"  # dtypes, quantization schemes
)
PYTHON2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
INT_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
TUPLE_OPS = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"}
STRING_OPS = {
    "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING", "SHORT_BINSTRING",
}  # fmt: skip


class HeaderError(ValueError):
    pass


def read_header(path: Path) -> dict[str, Any]:
    """The header of a .safetensors file, checked against the file's size (a cut-off download shows)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = f.read(8)
        if len(start) != 8:
            raise HeaderError("the file is too short")
        (length,) = struct.unpack("<Q", start)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise HeaderError("its header is cut short or garbled")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise HeaderError("its header is not valid") from None
    if not isinstance(header, dict):
        raise HeaderError("its header is not valid")
    data_bytes = size - 8 - length
    for name, spec in header.items():
        if name != "__metadata__":
            _check_entry(spec, data_bytes)
    return header


def _check_entry(spec: Any, data_bytes: int) -> None:
    """As the loader checks each tensor: a known dtype, and bytes that match its shape and lie in the file."""
    if not isinstance(spec, dict):
        raise HeaderError("its header is not valid")
    offsets, shape, dtype = spec.get("data_offsets"), spec.get("shape"), spec.get("dtype")
    itemsize = DTYPE_BYTES.get(dtype) if isinstance(dtype, str) else None
    if not _whole_numbers(offsets) or len(offsets) != 2 or not _whole_numbers(shape) or itemsize is None:
        raise HeaderError("its header is not valid")
    begin, end = offsets
    count = 1
    for dim in shape:
        count *= dim
    if begin > end or end - begin != count * itemsize:
        raise HeaderError("its header is not valid")
    if end > data_bytes:
        raise HeaderError("the file is shorter than its header says")


def _whole_numbers(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


@dataclass(frozen=True)
class PickleNames:
    strings: set[str]  # every string in the pickle, the tensors' names among them
    unsafe: set[str]  # the globals torch.load(weights_only=True) refuses to build
    shapes: dict[str, tuple[int, ...]]  # the sizes of the tensors asked for that it holds


def read_pickle_names(path: Path, sizes_of: Collection[str] = ()) -> PickleNames | None:
    """What a torch.save archive's pickle names, read without unpickling, with the sizes of the tensors
    named in `sizes_of`; None for what can't be judged this way (a pre-1.6 file, a huge pickle)."""
    with open(path, "rb") as f:
        start = f.read(4)
        if start != b"PK\x03\x04":
            if start[:1] == b"\x80":
                return None  # a pickle: torch's legacy format, not judged
            raise HeaderError("not a PyTorch file")
        try:
            archive = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, ValueError):
            raise HeaderError("the file is cut short") from None
        with archive:
            pickles = [info for info in archive.infolist() if info.filename.endswith("data.pkl")]
            if len(pickles) != 1:
                raise HeaderError("not a PyTorch checkpoint: no data.pkl in it")
            if pickles[0].file_size > MAX_PICKLE_BYTES:
                return None
            try:
                data = archive.read(pickles[0])
            except (zipfile.BadZipFile, ValueError, EOFError):
                raise HeaderError("its archive is garbled") from None
    try:
        return _scan_pickle(data, frozenset(sizes_of))
    except (ValueError, IndexError, KeyError):
        raise HeaderError("its pickle is garbled") from None


def _memo_index(arg: object) -> int:
    """A PUT/GET opcode's argument: pickletools decodes it as an int (its annotation allows None for any)."""
    if not isinstance(arg, int):
        raise ValueError(f"memo index {arg!r} is not a number")
    return arg


class _SizeReader:
    """The sizes of the wanted tensors, as torch.save writes each: its name (a dict key), then the rebuild
    call, whose arguments are the storage (a persistent id), the storage offset and the size tuple."""

    def __init__(self, wanted: frozenset[str]) -> None:
        self.wanted = wanted
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._name: str | None = None
        self._ints: list[int] | None = None  # offset and size, from the persistent id on

    def see(self, opcode: str, arg: object) -> None:
        if self._name is None:
            return
        if opcode in ("PERSID", "BINPERSID"):
            self._ints = []
        elif self._ints is not None and opcode in INT_OPS and isinstance(arg, int):
            self._ints.append(arg)
        elif self._ints is not None and opcode in TUPLE_OPS:
            if len(self._ints) >= 2:
                self.shapes[self._name] = tuple(self._ints[1:])
            self._name = self._ints = None

    def see_string(self, value: str) -> None:
        if value in self.wanted:
            self._name, self._ints = value, None


def _scan_pickle(data: bytes, sizes_of: frozenset[str]) -> PickleNames:
    strings: set[str] = set()
    unsafe: set[str] = set()
    sizes = _SizeReader(sizes_of)
    recent: list[str | None] = []  # the last values pushed, as far as STACK_GLOBAL needs them
    memo: dict[int, str | None] = {}
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        sizes.see(name, arg)
        if name in STRING_OPS:
            value = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
            strings.add(value)
            sizes.see_string(value)
            recent.append(value)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[_memo_index(arg)] = recent[-1] if recent else None
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(_memo_index(arg)))
        elif name == "GLOBAL":
            module, _, attribute = str(arg).partition(" ")
            _judge_global(module, attribute, unsafe)
        elif name == "STACK_GLOBAL":
            module, attribute = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
            _judge_global(module or "?", attribute or "?", unsafe)
        else:
            recent.append(None)
        del recent[:-2]
    return PickleNames(strings, unsafe, sizes.shapes)


def _judge_global(module: str, attribute: str, unsafe: set[str]) -> None:
    full = f"{PYTHON2_MODULES.get(module, module)}.{attribute}"
    if full not in SAFE_GLOBALS and not SAFE_TORCH_NAME.match(full):
        unsafe.add(full)
