"""Which listed model files are known to be unusable, and why, from what costs next to nothing to read.

The model lists name every file of a usable type in each folder; a painter who picks a half-downloaded file,
a LoRA dropped into checkpoints/ or an SDXL checkpoint learns why only after a job failed. A .safetensors
file says what it holds in its header (8 bytes of length, then JSON: each tensor's name, dtype, shape and
place in the file), so reading that header, never the weights, tells a damaged or incomplete file and most
files of the wrong kind. A .ckpt/.pt/.pth file is a zip archive around a pickle (torch.save): the archive's
directory shows a cut-off download, and the pickle's opcodes, read without running them, name the Python
objects it would build (the loader's torch.load(weights_only=True) refuses any but tensors and plain
containers) and the tensors' names. What can't be judged this way (pre-1.6 torch files, kinds of LoRA the
names don't settle) is not marked: a mark means the loader will refuse the file, with the same reason.

Stdlib only: this runs on the server's side of the event loop, where torch is never imported. The key names
mirror the loader's own checks (backend/loading/checkpoint.py, lora.py, controlnet.py, vae.py).
"""

from __future__ import annotations

import json
import os
import pickletools
import re
import struct
import threading
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeGuard

MAX_HEADER_BYTES = 100 * 1024 * 1024  # as the loader (owned_safetensors) and the safetensors library
MAX_CACHED = 4096

# Checkpoints in the original (ldm) layout; see backend/loading/checkpoint.py.
UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_PREFIX = "conditioner.embedders."
SD2_PREFIX = "cond_stage_model.model."
SUPPORTED_IN_CHANNELS = (4, 9)
CONTROLNET_MARKERS = (
    "control_model.input_hint_block.0.weight",
    "input_hint_block.0.weight",
    "controlnet_cond_embedding.conv_in.weight",
)
VAE_FILE_PREFIXES = ("", "first_stage_model.", "vae.")
# LyCORIS networks whose math the LoRA loader doesn't do (backend/loading/lora.py UNSUPPORTED_MARKERS).
UNSUPPORTED_LORA_MARKERS = {
    ".hada_w1": "LoHa",
    ".lokr_w1": "LoKr",
    ".lora_mid.": "LoCon with a Tucker middle",
    ".dora_scale": "DoRA",
}
LORA_MARKERS = ("lora_", ".lora.", ".hada_w", ".lokr_w")
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
    "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
DAMAGED = "damaged or incomplete ({}): download it again"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")
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
STRING_OPS = {
    "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING", "SHORT_BINSTRING",
}  # fmt: skip


def unusable_reason(kind: str, path: Path) -> str | None:
    """Why `path`, listed under `kind`, can't be used; None if it may be (or that can't be told cheaply)."""
    if path.is_dir():
        return _diffusers_folder_reason(path) if kind == "checkpoints" else None
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _pickle_reason(kind, path)
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        header = read_header(path)
    except HeaderError as error:
        return DAMAGED.format(error)
    except OSError as error:
        return f"can't be read ({error.strerror or type(error).__name__})"
    names = [name for name in header if name != "__metadata__"]
    judge = JUDGES.get(kind)
    return judge(header, names) if judge is not None else None


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


def _has_prefix(names: Iterable[str], prefix: str) -> bool:
    return any(name.startswith(prefix) for name in names)


def _looks_like_lora(names: list[str]) -> bool:
    return any(marker in name for name in names for marker in LORA_MARKERS)


def _other_kind(names: list[str]) -> str | None:
    """The folder a file of another kind belongs in, named for the painter."""
    if UNET_CONV_IN in names:
        return "a checkpoint, not {}: it belongs in checkpoints/"
    if any(marker in names for marker in CONTROLNET_MARKERS) or _has_prefix(names, "control_model."):
        return "a ControlNet, not {}: it belongs in controlnet/"
    if _looks_like_lora(names):
        return "a LoRA, not {}: it belongs in loras/"
    if _vae_reason(names) is None:
        return "a VAE, not {}: it belongs in vae/"
    return None


def _checkpoint_reason(header: dict[str, Any], names: list[str]) -> str | None:
    if _has_prefix(names, SDXL_PREFIX):
        return "an SDXL checkpoint; only SD1.5 checkpoints are supported"
    if _has_prefix(names, SD2_PREFIX):
        return "an SD2.x checkpoint; only SD1.5 checkpoints are supported"
    if UNET_CONV_IN not in names:
        other = _other_kind(names)
        return other.format("a checkpoint") if other else "not an SD1.5 checkpoint (it has no UNet weights)"
    shape = header.get(UNET_CONV_IN, {}).get("shape") or []  # a pickle's names come without shapes
    if len(shape) > 1 and shape[1] not in SUPPORTED_IN_CHANNELS:
        return f"a UNet with {shape[1]} input channels; only SD1.5 text-to-image (4) and inpainting (9) work"
    if not _has_prefix(names, VAE_PREFIX) or not _has_prefix(names, CLIP_PREFIX):
        return "lacks its VAE or text encoder weights; only complete SD1.5 checkpoints are supported"
    return None


def _lora_reason(header: dict[str, Any], names: list[str]) -> str | None:
    for marker, network in UNSUPPORTED_LORA_MARKERS.items():
        if any(marker in name for name in names):
            return f"a {network} network, which is not supported"
    if _looks_like_lora(names):
        return None
    # LoRA files come in many namings; only a positively recognised other kind is marked.
    if UNET_CONV_IN in names or any(marker in names for marker in CONTROLNET_MARKERS):
        other = _other_kind(names)
        return other.format("a LoRA") if other else None
    return None


def _controlnet_reason(header: dict[str, Any], names: list[str]) -> str | None:
    if any(marker in names for marker in CONTROLNET_MARKERS):
        return None
    other = _other_kind(names)
    return other.format("a ControlNet") if other else "not an SD1.5 ControlNet"


def _vae_reason(names: list[str]) -> str | None:
    """As the loader: the encoder's and decoder's first layers, bare or under a known prefix (so a whole
    checkpoint serves as a VAE file too)."""
    for prefix in VAE_FILE_PREFIXES:
        if prefix + "encoder.conv_in.weight" in names and prefix + "decoder.conv_in.weight" in names:
            return None
    return "not a VAE (no encoder/decoder weights)"


JUDGES = {
    "checkpoints": _checkpoint_reason,
    "loras": _lora_reason,
    "controlnet": _controlnet_reason,
    "vae": lambda header, names: _vae_reason(names),
}


def _pickle_reason(kind: str, path: Path) -> str | None:
    try:
        found = read_pickle_names(path)
    except HeaderError as error:
        return DAMAGED.format(error)
    except OSError as error:
        return f"can't be read ({error.strerror or type(error).__name__})"
    if found is None:
        return None
    names, unsafe = found
    if unsafe:
        shown = ", ".join(sorted(unsafe)[:3]) + (" ..." if len(unsafe) > 3 else "")
        return (
            f"holds Python objects besides weights ({shown}), which are not loaded for safety: "
            "use a .safetensors version of it"
        )
    judge = JUDGES.get(kind)
    return judge({}, sorted(names)) if judge is not None else None


def read_pickle_names(path: Path) -> tuple[set[str], set[str]] | None:
    """The strings (tensor names among them) and the disallowed globals of a torch.save archive's pickle,
    read without unpickling; None for what can't be judged this way (a pre-1.6 file, a huge pickle)."""
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
        return _scan_pickle(data)
    except (ValueError, IndexError, KeyError):
        raise HeaderError("its pickle is garbled") from None


def _memo_index(arg: object) -> int:
    """A PUT/GET opcode's argument: pickletools decodes it as an int (its annotation allows None for any)."""
    if not isinstance(arg, int):
        raise ValueError(f"memo index {arg!r} is not a number")
    return arg


def _scan_pickle(data: bytes) -> tuple[set[str], set[str]]:
    strings: set[str] = set()
    unsafe: set[str] = set()
    recent: list[str | None] = []  # the last values pushed, as far as STACK_GLOBAL needs them
    memo: dict[int, str | None] = {}
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in STRING_OPS:
            value = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
            strings.add(value)
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
    return strings, unsafe


def _judge_global(module: str, attribute: str, unsafe: set[str]) -> None:
    full = f"{PYTHON2_MODULES.get(module, module)}.{attribute}"
    if full not in SAFE_GLOBALS and not SAFE_TORCH_NAME.match(full):
        unsafe.add(full)


def _diffusers_folder_reason(path: Path) -> str | None:
    missing = [part for part in ("unet", "vae", "text_encoder") if not _has_weights(path / part)]
    if missing:
        folders = ", ".join(part + "/" for part in missing)
        return f"an incomplete diffusers folder: {folders} without .safetensors weights"
    return None


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


class UnusableCache:
    """`unusable_reason` per file, remembered until the file changes (size, mtime, inode): model lists are
    sent at every handshake, headers are read once per file version. Safe to call from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], tuple[tuple[int, ...], str | None]] = {}

    def reason(self, kind: str, path: Path) -> str | None:
        try:
            info = path.stat()
        except OSError as error:
            return f"can't be read ({error.strerror or type(error).__name__})"
        stamp = (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)
        key = (kind, str(path))
        with self._lock:
            known = self._known.get(key)
        if known is not None and known[0] == stamp and not path.is_dir():
            return known[1]
        reason = unusable_reason(kind, path)
        with self._lock:
            if len(self._known) >= MAX_CACHED:
                self._known.clear()
            self._known[key] = (stamp, reason)
        return reason
