"""SD1.5 ControlNet single files (ControlNet 1.1 `control_model.` prefix, or without it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from backend.loading.configs import CONTROLNET_CONFIG_DIR, controlnet_config_dir
from backend.loading.files import (
    describe_load_error,
    ensure_materialized,
    finish,
    from_single_file,
    read_tensors,
)
from backend.model_errors import ModelError

if TYPE_CHECKING:
    from diffusers import ControlNetModel

# Any of these identifies a ControlNet: original layout with or without prefix, or diffusers naming.
CONTROLNET_MARKERS = (
    "control_model.input_hint_block.0.weight",
    "input_hint_block.0.weight",
    "controlnet_cond_embedding.conv_in.weight",
)


def load_controlnet(
    path: Path, device: torch.device, dtype: torch.dtype, config_dir: Path | None = None
) -> ControlNetModel:
    from diffusers import ControlNetModel

    tensors = read_tensors(path, "ControlNet")
    if not any(marker in tensors for marker in CONTROLNET_MARKERS):
        hint = " (it looks like a LoRA)" if any("lora_" in k for k in list(tensors)[:50]) else ""
        raise ModelError(
            f"{path.name} is not an SD1.5 ControlNet{hint}. Put ControlNet files in the controlnet folder."
        )
    try:
        model = from_single_file(
            ControlNetModel, tensors, config=str(controlnet_config_dir(config_dir)), local_files_only=True
        )
    except Exception as e:  # converter errors on foreign files: KeyError/RuntimeError/ValueError
        raise ModelError(misfit_message(path.name, e, config_dir)) from e
    ensure_materialized(model, f"ControlNet {path.name}")
    return finish(model, device, dtype)


def misfit_message(name: str, error: Exception, config_dir: Path | None) -> str:
    """Why a ControlNet file didn't load into its config, and what to do, for the painter and the operator.
    diffusers' own words advise its API's arguments (low_cpu_mem_usage, ignore_mismatched_sizes): not theirs
    to act on. The --model-config folder is named by its option, never by its path (clients read this)."""
    mismatch = SHAPE_MISMATCH.search(str(error))
    if mismatch is not None:
        layer, wanted, found = mismatch.group(1), _shape(mismatch.group(2)), _shape(mismatch.group(3))
        detail = f"its layer {layer} is {found}, the config's is {wanted}"
    else:
        detail = describe_load_error(error).split(". If you want", 1)[0][:200]
    if config_dir is None:
        config, fix = "the SD1.5 ControlNet config", "use an SD1.5 ControlNet"
    elif controlnet_config_dir(config_dir) != CONTROLNET_CONFIG_DIR:
        config = "the ControlNet config of --model-config"
        fix = "fix controlnet/config.json in that folder to match this ControlNet"
    else:
        config = "the SD1.5 ControlNet config"
        fix = "put this ControlNet's config.json in the --model-config folder as controlnet/config.json"
    return f"ControlNet {name} doesn't fit {config} ({detail}): {fix}."


SHAPE_MISMATCH = re.compile(
    r"(\S+) expected shape torch\.Size\(\[([\d, ]*)\]\), but got torch\.Size\(\[([\d, ]*)\]\)"
)


def _shape(dims: str) -> str:
    return "x".join(d.strip() for d in dims.split(",") if d.strip()) or "a scalar"
