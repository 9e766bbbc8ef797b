"""ControlNets of every served family, in the layouts painters download them in.

- SD1.5 ControlNet 1.1 single files: original names with or without the `control_model.` prefix, or
  diffusers names; read with the shipped SD1.5 ControlNet config.
- SDXL ControlNets (the community scribble/openpose/... models): diffusers names
  (`controlnet_cond_embedding.*`, `add_embedding.*`), either a lone .safetensors file read with the shipped
  SDXL ControlNet config, or the folder they are published as: `config.json` beside
  `diffusion_pytorch_model.safetensors`. A folder's own config wins, since variants ("small", "mid") differ
  from the base layout.

The family is told from the file (backend/model_families.py: the width of its cross-attention; where the width
is of no known family, as in tests' tiny models, by whether it has SDXL's text_time addition embedding); the
engine compares it with the checkpoint's (backend/engine/controlnet.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from backend.loading.configs import CONFIGS_DIR, controlnet_config_dir, family_config_dir
from backend.loading.files import (
    describe_load_error,
    ensure_materialized,
    finish,
    from_single_file,
    read_tensors,
)
from backend.loading.union_controlnet import UNION_CLASS, is_union, load_union_controlnet
from backend.model_errors import ModelError
from backend.model_families import (
    FAMILIES,
    SD15,
    SDXL,
    UNSERVED_WIDTHS,
    ModelFamily,
    UnservedFamily,
    adapter_family,
    cross_attention_width,
)

if TYPE_CHECKING:
    from diffusers import ControlNetModel, ControlNetUnionModel

# Any of these identifies a ControlNet: original layout with or without prefix, or diffusers naming.
CONTROLNET_MARKERS = (
    "control_model.input_hint_block.0.weight",
    "input_hint_block.0.weight",
    "controlnet_cond_embedding.conv_in.weight",
)
# SDXL's UNet, and so its ControlNets, embed the pooled text and the size numbers (`text_time`); SD1.5's
# don't.
SDXL_ADDED_EMBEDDING_MARKERS = (
    "add_embedding.linear_1.weight",  # diffusers names
    "label_emb.0.0.weight",  # original names
    "control_model.label_emb.0.0.weight",
)
# The weights file of a diffusers model folder, in the order preferred when a folder holds both.
FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
FOLDER_CONFIG = "config.json"
SERVED = " and ".join(family.label for family in FAMILIES.values())

Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class ControlNetFiles:
    """Where a ControlNet's weights are and, for a diffusers folder, the config that came with them."""

    weights: Path
    own_config: Path | None  # the folder holding config.json; None: a lone file, read with a family config
    shown: str  # the name messages use: the file, or folder/file for a folder's weights


def controlnet_files(path: Path) -> ControlNetFiles:
    """A ControlNet file, a diffusers ControlNet folder, or the weights file inside one (the model lists name
    a folder's weights by their path inside the controlnet folder:
    `folder/diffusion_pytorch_model.safetensors`)."""
    if path.is_dir():
        if not (path / FOLDER_CONFIG).is_file():
            raise ModelError(
                f"ControlNet folder {path.name} has no config.json: put the folder there as downloaded "
                "(config.json beside diffusion_pytorch_model.safetensors)."
            )
        for name in FOLDER_WEIGHTS:
            if (path / name).is_file():
                return ControlNetFiles(path / name, path, f"{path.name}/{name}")
        raise ModelError(
            f"ControlNet folder {path.name} has no diffusion_pytorch_model.safetensors: download it again."
        )
    if path.name in FOLDER_WEIGHTS and (path.parent / FOLDER_CONFIG).is_file():
        return ControlNetFiles(path, path.parent, f"{path.parent.name}/{path.name}")
    return ControlNetFiles(path, None, path.name)


def controlnet_family(shapes: Shapes, shown: str) -> ModelFamily:
    """The family a ControlNet file is made for, from its tensors' names and shapes.

    Raises ModelError for ControlNets of architectures no family serves (SD2.x, Flux)."""
    try:
        found = adapter_family(shapes)
    except UnservedFamily as error:
        if cross_attention_width(shapes) in UNSERVED_WIDTHS:
            raise ModelError(
                f"ControlNet {shown} is {error}; only {SERVED} ControlNets are supported."
            ) from None
        found = None  # a width no architecture is known by (a test's tiny model): its structure says
    if found is not None:
        return found
    return SDXL if any(marker in shapes for marker in SDXL_ADDED_EMBEDDING_MARKERS) else SD15


def load_controlnet(
    path: Path, device: torch.device, dtype: torch.dtype, config_dir: Path | None = None
) -> ControlNetModel | ControlNetUnionModel:
    """A ControlNet of any served family, on `device` in `dtype`. `config_dir` (tests' tiny models, or the
    --model-config folder) may hold the ControlNet config per family (backend/loading/configs.py)."""
    from diffusers import ControlNetModel

    files = controlnet_files(path)
    tensors = read_tensors(files.weights, "ControlNet")
    if not any(marker in tensors for marker in CONTROLNET_MARKERS):
        hint = " (it looks like a LoRA)" if any("lora_" in k for k in list(tensors)[:50]) else ""
        raise ModelError(
            f"{files.shown} is not an SD1.5 ControlNet, nor an SDXL one{hint}. "
            "Put ControlNet files in the controlnet folder."
        )
    family = controlnet_family({key: tuple(tensor.shape) for key, tensor in tensors.items()}, files.shown)
    union = is_union(tensors)
    if files.own_config is not None:
        _check_own_config(files.own_config, files.shown, UNION_CLASS if union else "ControlNetModel")
    if union:
        return load_union_controlnet(
            tensors, files.shown, files.own_config, config_dir, family, device, dtype
        )
    config = files.own_config or controlnet_config_dir(config_dir, family)
    try:
        model = from_single_file(ControlNetModel, tensors, config=str(config), local_files_only=True)
    except Exception as e:  # converter errors on foreign files: KeyError/RuntimeError/ValueError
        raise ModelError(misfit_message(files, e, config_dir, family)) from e
    ensure_materialized(model, f"ControlNet {files.shown}", family.label)
    return finish(model, device, dtype)


def _check_own_config(folder: Path, shown: str, expected: str) -> None:
    """A folder's config.json must describe the ControlNet its weights are (plain or union): other classes
    (ControlNet-XS, ...) have other layers and inputs, which this loader and the engine don't drive."""
    try:
        config = json.loads((folder / FOLDER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"ControlNet {shown}: its config.json can't be read ({e}).") from e
    kind = config.get("_class_name", "ControlNetModel") if isinstance(config, dict) else None
    if kind != expected:
        raise ModelError(
            f"ControlNet {shown}'s config.json names a {kind}, its weights are a {expected}: only plain and "
            "union ControlNets are supported, each with the config.json it was published with."
        )


def misfit_message(
    files: ControlNetFiles, error: Exception, config_dir: Path | None, family: ModelFamily = SD15
) -> str:
    """Why a ControlNet file didn't load into its config, and what to do, for the painter and the operator.
    diffusers' own words advise its API's arguments (low_cpu_mem_usage, ignore_mismatched_sizes): not theirs
    to act on. The --model-config folder is named by its option, never by its path (clients read this)."""
    mismatch = SHAPE_MISMATCH.search(str(error))
    if mismatch is not None:
        layer, wanted, found = mismatch.group(1), _shape(mismatch.group(2)), _shape(mismatch.group(3))
        detail = f"its layer {layer} is {found}, the config's is {wanted}"
    else:
        detail = describe_load_error(error).split(". If you want", 1)[0][:200]
    label = family.label
    shipped = CONFIGS_DIR / family.controlnet_configs
    if files.own_config is not None:
        config = "its folder's config.json"
        fix = "the folder's config.json is not this ControlNet's: download the folder again"
    elif config_dir is not None and controlnet_config_dir(config_dir, family) != shipped:
        config = "the ControlNet config of --model-config"
        fix = f"fix {_config_place(config_dir, family)} in that folder to match this ControlNet"
    elif config_dir is not None:
        config = f"the {label} ControlNet config"
        place = _config_place(config_dir, family)
        fix = f"put this ControlNet's config.json in the --model-config folder as {place}"
    elif family is SD15:
        config, fix = f"the {label} ControlNet config", f"use an {label} ControlNet"
    else:
        # Variants of the base layout ("small", "mid") are published as folders: their config is needed.
        config = f"the {label} ControlNet config"
        fix = (
            "put it in a folder of its own with the config.json it was published with, as "
            "diffusion_pytorch_model.safetensors"
        )
    return f"ControlNet {files.shown} doesn't fit {config} ({detail}): {fix}."


def _config_place(config_dir: Path, family: ModelFamily) -> str:
    """Where in a --model-config folder a family's ControlNet config goes, relative to the folder."""
    folder = family_config_dir(family, config_dir, inpaint=False)
    prefix = "" if folder == config_dir else f"{folder.relative_to(config_dir).as_posix()}/"
    return f"{prefix}controlnet/config.json"


SHAPE_MISMATCH = re.compile(
    r"(\S+) expected shape torch\.Size\(\[([\d, ]*)\]\), but got torch\.Size\(\[([\d, ]*)\]\)"
)


def _shape(dims: str) -> str:
    return "x".join(d.strip() for d in dims.split(",") if d.strip()) or "a scalar"
