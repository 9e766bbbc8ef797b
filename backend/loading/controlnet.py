"""SD1.5 ControlNet single files (ControlNet 1.1 `control_model.` prefix, or without it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from backend.loading.configs import controlnet_config_dir
from backend.loading.files import describe_load_error, ensure_materialized, finish, read_tensors
from backend.model_store import ModelError

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
        model = ControlNetModel.from_single_file(
            tensors, config=str(controlnet_config_dir(config_dir)), local_files_only=True
        )
    except Exception as e:  # converter errors on foreign files: KeyError/RuntimeError/ValueError
        raise ModelError(
            f"ControlNet {path.name} doesn't fit the SD1.5 ControlNet ({describe_load_error(e)})."
        ) from e
    ensure_materialized(model, f"ControlNet {path.name}")
    return finish(model, device, dtype)
