"""Which listed model files are known to be unusable, and why, and which model family each is made for, from
what costs next to nothing to read.

The model lists name every file of a usable type in each folder; a painter who picks a half-downloaded file,
a LoRA dropped into checkpoints/ or an SD2 checkpoint learns why only after a job failed. A file's header
(backend/file_headers.py: a .safetensors header, a .ckpt archive's pickle read without unpickling) names its
tensors and, for .safetensors, their shapes, which tells a damaged or incomplete file, most files of the
wrong kind and a .ckpt that torch.load(weights_only=True) would refuse. What can't be judged this way
(pre-1.6 torch files, kinds of LoRA the names don't settle) is not marked: a mark means the loader will
refuse the file, with the same reason, and the server refuses a job naming a marked file when it arrives.

The same names tell the family (backend/model_families.py: a checkpoint by its text encoders, a LoRA or
ControlNet by its cross-attention width), so the lists can say which LoRAs fit which checkpoint, and whether a
checkpoint is an inpainting one (9 UNet input channels), which the backend's default checkpoint avoids.

Stdlib only: this runs on the server's side of the event loop, where torch is never imported. The key names
mirror the loader's own checks (backend/loading/checkpoint.py, lora.py, controlnet.py, vae.py).
"""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.file_headers import HeaderError, read_header, read_pickle_names
from backend.loading.clip_vision import config_from_shapes
from backend.loading.ip_adapter import describe_ip_adapter
from backend.model_families import (
    FAMILIES,
    SD15,
    SDXL,
    UNSERVED_WIDTHS,
    ModelFamily,
    Shapes,
    UnservedFamily,
    adapter_family,
    checkpoint_family,
    cross_attention_width,
)

MAX_CACHED = 4096

# Checkpoints in the original (ldm) layout; see backend/loading/checkpoint.py.
UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_PREFIX = "conditioner.embedders."
SD2_PREFIX = "cond_stage_model.model."
SUPPORTED_IN_CHANNELS = (4, 9)
INPAINT_IN_CHANNELS = 9
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
DAMAGED = "damaged or incomplete ({}): download it again"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")


@dataclass(frozen=True)
class Verdict:
    """What a file's names say about it: why it can't be used (None: it may be), the family it is made for (a
    backend/model_families.py name; None where its names don't say) and, for a checkpoint, whether it is an
    inpainting one (None: unknown, e.g. a file with no UNet input weights the header could size)."""

    reason: str | None = None
    family: str | None = None
    inpaint: bool | None = None


def unusable_reason(kind: str, path: Path) -> str | None:
    """Why `path`, listed under `kind`, can't be used; None if it may be (or that can't be told cheaply)."""
    return judge(kind, path).reason


def judge(kind: str, path: Path) -> Verdict:
    """The verdict on `path`, listed under `kind`, from its header (a folder: its configs) alone."""
    if path.is_dir():
        return _diffusers_folder_verdict(path) if kind == "checkpoints" else Verdict()
    suffix = path.suffix.lower()
    if suffix != ".safetensors" and suffix not in PICKLE_SUFFIXES:
        return Verdict()
    try:
        shapes = _safetensors_shapes(path) if suffix == ".safetensors" else _pickle_shapes(path)
    except HeaderError as error:
        return Verdict(DAMAGED.format(error))
    except UnsafePickle as error:
        return Verdict(str(error))
    except OSError as error:
        return Verdict(f"can't be read ({error.strerror or type(error).__name__})")
    judge_kind = JUDGES.get(kind)
    return judge_kind(shapes) if judge_kind is not None and shapes is not None else Verdict()


def _safetensors_shapes(path: Path) -> Shapes:
    return {name: spec["shape"] for name, spec in read_header(path).items() if name != "__metadata__"}


def _pickle_shapes(path: Path) -> Shapes | None:
    """A torch.save archive's names, with the UNet input's size (it tells inpainting checkpoints) and no
    other; None where it can't be judged."""
    found = read_pickle_names(path, sizes_of=(UNET_CONV_IN,))
    if found is None:
        return None
    if found.unsafe:
        shown = ", ".join(sorted(found.unsafe)[:3]) + (" ..." if len(found.unsafe) > 3 else "")
        raise UnsafePickle(
            f"holds Python objects besides weights ({shown}), which are not loaded for safety: "
            "use a .safetensors version of it"
        )
    return {name: found.shapes.get(name, ()) for name in sorted(found.strings)}


class UnsafePickle(ValueError):
    pass


def _has_prefix(names: Iterable[str], prefix: str) -> bool:
    return any(name.startswith(prefix) for name in names)


def _looks_like_lora(names: Iterable[str]) -> bool:
    return any(marker in name for name in names for marker in LORA_MARKERS)


def _other_kind(names: Shapes) -> str | None:
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


def _unserved(what: str) -> str:
    served = " and ".join(family.label for family in FAMILIES.values())
    return f"{what}, which this backend does not run (it runs {served} models)"


def _checkpoint_family(shapes: Shapes) -> tuple[ModelFamily | None, bool]:
    """The family a checkpoint's names say, and whether it has all of that family's text encoders.

    Raises UnservedFamily for architectures no family row serves."""
    found = checkpoint_family(shapes)
    if found is not None:
        return found, True
    if _has_prefix(shapes, SD2_PREFIX):
        raise UnservedFamily("an SD 2.x checkpoint")
    if _has_prefix(shapes, SDXL_PREFIX):
        return SDXL, False  # an SDXL layout without both of its text encoders
    # SD1.x checkpoints name their one text encoder in more than one way (with or without `text_model.`).
    return (SD15, True) if _has_prefix(shapes, CLIP_PREFIX) else (None, False)


def _checkpoint_verdict(shapes: Shapes) -> Verdict:
    try:
        found, text_encoders = _checkpoint_family(shapes)
    except UnservedFamily as error:
        return Verdict(_unserved(str(error)))
    family = found.name if found is not None else None
    if UNET_CONV_IN not in shapes:
        other = _other_kind(shapes)
        if other is not None:
            return Verdict(other.format("a checkpoint"))
        what = f"a complete {found.label} checkpoint" if found is not None else "a checkpoint"
        return Verdict(f"not {what} (it has no UNet weights)", family)
    shape = shapes[UNET_CONV_IN]  # a pickle's names come without shapes
    channels = shape[1] if len(shape) > 1 else None
    if channels is not None and channels not in SUPPORTED_IN_CHANNELS:
        reason = f"a UNet with {channels} input channels; only text-to-image (4) and inpainting (9) ones work"
        return Verdict(reason, family)
    if not text_encoders or not _has_prefix(shapes, VAE_PREFIX):
        return Verdict("lacks its VAE or text encoder weights; only complete checkpoints work", family)
    return Verdict(None, family, None if channels is None else channels == INPAINT_IN_CHANNELS)


def _adapter_verdict(shapes: Shapes) -> Verdict:
    """A LoRA's or ControlNet's family, from the width of the text features its cross-attention reads."""
    try:
        found = adapter_family(shapes)
    except UnservedFamily as error:
        if cross_attention_width(shapes) in UNSERVED_WIDTHS:
            return Verdict(_unserved(str(error)))
        return Verdict()  # a width no architecture is known by (a test's tiny model): not judged
    return Verdict(family=found.name if found is not None else None)


def _lora_verdict(shapes: Shapes) -> Verdict:
    for marker, network in UNSUPPORTED_LORA_MARKERS.items():
        if any(marker in name for name in shapes):
            return Verdict(f"a {network} network, which is not supported")
    # LoRA files come in many namings; only a positively recognised other kind is marked.
    if not _looks_like_lora(shapes) and (
        UNET_CONV_IN in shapes or any(marker in shapes for marker in CONTROLNET_MARKERS)
    ):
        other = _other_kind(shapes)
        return Verdict(other.format("a LoRA") if other else None)
    return _adapter_verdict(shapes)


def _controlnet_verdict(shapes: Shapes) -> Verdict:
    if any(marker in shapes for marker in CONTROLNET_MARKERS):
        return _adapter_verdict(shapes)
    other = _other_kind(shapes)
    return Verdict(other.format("a ControlNet") if other else "not a ControlNet (it has no hint encoder)")


def _vae_reason(names: Shapes) -> str | None:
    """As the loader: the encoder's and decoder's first layers, bare or under a known prefix (so a whole
    checkpoint serves as a VAE file too)."""
    for prefix in VAE_FILE_PREFIXES:
        if prefix + "encoder.conv_in.weight" in names and prefix + "decoder.conv_in.weight" in names:
            return None
    return "not a VAE (no encoder/decoder weights)"


def _ip_adapter_verdict(shapes: Shapes) -> Verdict:
    """An IP-Adapter's variant must be one the backend serves; its family is its cross-attention width's."""
    try:
        info = describe_ip_adapter(shapes)
    except ValueError as error:
        return Verdict(str(error))
    family = info.family
    return Verdict(family=family.name if family is not None else None)


def _clip_vision_verdict(shapes: Shapes) -> Verdict:
    try:
        config_from_shapes(shapes)
    except ValueError as error:
        return Verdict(str(error))
    return Verdict()


JUDGES: dict[str, Callable[[Shapes], Verdict]] = {
    "checkpoints": _checkpoint_verdict,
    "loras": _lora_verdict,
    "controlnet": _controlnet_verdict,
    "vae": lambda shapes: Verdict(_vae_reason(shapes)),
    "ipadapter": _ip_adapter_verdict,
    "clip_vision": _clip_vision_verdict,
}


def _diffusers_folder_verdict(path: Path) -> Verdict:
    xl = (path / "text_encoder_2").is_dir()
    if xl and not (path / "text_encoder").is_dir():  # OpenCLIP bigG alone, as backend/loading/ tells it
        return Verdict(_unserved("an SDXL refiner (a diffusers folder)"))
    parts = ("unet", "vae", "text_encoder", *(("text_encoder_2",) if xl else ()))
    missing = [part for part in parts if not _has_weights(path / part)]
    if missing:
        folders = ", ".join(part + "/" for part in missing)
        return Verdict(f"an incomplete diffusers folder: {folders} without .safetensors weights")
    config = _read_json(path / "unet" / "config.json")
    width, channels = config.get("cross_attention_dim"), config.get("in_channels")
    if not xl and width in UNSERVED_WIDTHS:
        return Verdict(_unserved(f"a diffusers folder of {UNSERVED_WIDTHS[width]}"))
    family = SDXL if xl else SD15  # as the loader reads it: one text encoder is SD1.x's layout
    if type(channels) is not int:
        return Verdict(family=family.name)  # the loader says what is wrong with the config
    if channels not in SUPPORTED_IN_CHANNELS:
        reason = f"a UNet with {channels} input channels; only text-to-image (4) and inpainting (9) ones work"
        return Verdict(reason, family.name)
    return Verdict(None, family.name, channels == INPAINT_IN_CHANNELS)


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _stamp(path: Path) -> tuple[int, ...]:
    """A file's version: size, mtime, inode. A folder's adds its parts' folders and its UNet config, whose
    changes (a download that finishes, a config rewritten) change its verdict."""
    info = path.stat()
    stamp = [info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev]
    if stat.S_ISDIR(info.st_mode):
        for part in ("unet", "vae", "text_encoder", "text_encoder_2", "unet/config.json"):
            try:
                inner = (path / part).stat()
            except OSError:
                stamp.append(-1)
                continue
            stamp += [inner.st_size, inner.st_mtime_ns, inner.st_ino]
    return tuple(stamp)


class VerdictCache:
    """`judge` per file, remembered until the file changes (_stamp): model lists are sent at every handshake
    and the default checkpoint is chosen per job, headers are read once per file version. Safe to call from
    several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], tuple[tuple[int, ...], Verdict]] = {}

    def verdict(self, kind: str, path: Path) -> Verdict:
        try:
            stamp = _stamp(path)
        except OSError as error:
            return Verdict(f"can't be read ({error.strerror or type(error).__name__})")
        key = (kind, str(path))
        with self._lock:
            known = self._known.get(key)
        if known is not None and known[0] == stamp:
            return known[1]
        verdict = judge(kind, path)
        with self._lock:
            if len(self._known) >= MAX_CACHED:
                self._known.clear()
            self._known[key] = (stamp, verdict)
        return verdict

    def reason(self, kind: str, path: Path) -> str | None:
        return self.verdict(kind, path).reason
