"""Reading tensors from model files, with errors a painter can act on."""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, TypeVar

import torch

from backend.loading.owned_safetensors import read_safetensors
from backend.model_errors import ModelError

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")


def read_tensors(path: Path, what: str) -> Tensors:
    """All tensors of a .safetensors file, or of a pickle file loaded with `weights_only=True`.

    `weights_only` refuses anything but tensors and plain containers, so a .ckpt can't run code; files that
    need more (old training checkpoints with callbacks) get a message asking for a .safetensors version.
    """
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path, what)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path, what)
    raise ModelError(f"{what} {path.name}: unsupported file type {suffix!r}; use a .safetensors file.")


def _read_safetensors(path: Path, what: str) -> Tensors:
    # Read, not memory-mapped: a mapping turns a later in-place rewrite of the file into SIGBUS.
    try:
        return read_safetensors(path)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelError(
            f"{what} {path.name} is not a readable .safetensors file ({e}). "
            "It may be incomplete or damaged: download it again."
        ) from e


def _read_pickle(path: Path, what: str) -> Tensors:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch.save has written zip archives since 1.6; anything else failing here is damaged, not unsafe.
        if not zipfile.is_zipfile(path):
            raise ModelError(
                f"{what} {path.name} is not a readable PyTorch file. It may be damaged: download it again, "
                "or use a .safetensors version."
            ) from e
        raise ModelError(
            f"{what} {path.name} contains Python objects besides weights, which are not loaded for safety. "
            "Use a .safetensors version of it."
        ) from e
    except Exception as e:  # garbage makes the unpickler raise IndexError, KeyError and more
        raise ModelError(
            f"{what} {path.name} is not a readable PyTorch file ({e}). "
            "It may be incomplete: download it again."
        ) from e
    # Training checkpoints nest the weights, sometimes twice.
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelError(f"{what} {path.name} holds no named weights.")
    tensors = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"{what} {path.name} holds no weights.")
    return tensors


def strip_prefix(tensors: Tensors, prefix: str) -> Tensors:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def has_prefix(tensors: Tensors, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in tensors)


def ensure_materialized(model: torch.nn.Module, what: str, family_label: str = "SD1.5") -> None:
    """diffusers' single-file loader leaves missing weights on the meta device instead of failing."""
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelError(f"{what} is incomplete or not an {family_label} model: missing weights {shown}.")


def from_single_file(cls: type[ModuleT], tensors: Tensors, **kwargs: Any) -> ModuleT:
    """diffusers' `from_single_file` on tensors already read; `cls` is a model class with that loader.

    Its annotation takes a path only, while its docs and code take a state dict as well; and its mixin
    (FromOriginalModelMixin) shares no base with nn.Module that `cls` could be typed by: hence `Any`.
    """
    loader: Any = cls
    model: ModuleT = loader.from_single_file(tensors, **kwargs)
    return model


def describe_load_error(error: Exception, family_label: str = "SD1.5") -> str:
    """diffusers fails on missing weights only when moving the half-built model; say what that means."""
    if "meta tensor" in str(error):
        return f"missing weights: the file is incomplete or not an {family_label} model"
    return str(error)


def finish(model: ModuleT, device: torch.device, dtype: torch.dtype) -> ModuleT:
    """Inference only: no autograd state, eval-mode layers, on the target device."""
    # nn.Module.to, not diffusers' override: that one warns about fp32-pinned modules even if there are none.
    torch.nn.Module.to(model, device=device, dtype=dtype)
    return model.eval().requires_grad_(False)
