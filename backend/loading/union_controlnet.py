"""Union ControlNets: one SDXL ControlNet for many control kinds (xinsir's controlnet-union-sdxl-1.0 and its
"promax" variant), in diffusers' ControlNetUnionModel layout (`task_embedding`, `transformer_layes.*`,
`control_add_embedding.*` beside a plain ControlNet's layers).

Published as a folder (`config.json` naming ControlNetUnionModel beside the weights); a lone weights file is
read with the family's ControlNet config plus the number of modes its `task_embedding` holds. Each control
tells it which kind it is by a mode number (protocol/registry.py `ControlKind.union_mode`; the engine's
backend/engine/union_controlnet.py drives it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from backend.loading.configs import controlnet_config_dir
from backend.loading.files import Tensors, ensure_materialized, finish
from backend.model_errors import ModelError
from backend.model_families import ModelFamily

if TYPE_CHECKING:
    from diffusers import ControlNetUnionModel

UNION_MARKER = "task_embedding"  # [modes, channels]: the one tensor every union ControlNet has
UNION_CLASS = "ControlNetUnionModel"
PROJECTION = "spatial_ch_projs.weight"  # [projected channels, transformer channels]


def is_union(tensors: Tensors) -> bool:
    return UNION_MARKER in tensors


def union_config(
    tensors: Tensors, own_config: Path | None, config_dir: Path | None, family: ModelFamily
) -> dict[str, Any]:
    """The folder's own config, or the family's ControlNet config with the file's number of modes."""
    folder = own_config or controlnet_config_dir(config_dir, family)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if own_config is None:
        # The sizes its tensors tell; the attention heads they don't (the published models' 8, the default).
        modes, channels = tensors[UNION_MARKER].shape
        projected = tensors[PROJECTION].shape[0] if PROJECTION in tensors else channels
        config.update(
            _class_name=UNION_CLASS,
            num_control_type=int(modes),
            num_trans_channel=int(channels),
            num_proj_channel=int(projected),
        )
        config.pop("mid_block_type", None)  # a plain ControlNet's option the union class doesn't take
    return config


def load_union_controlnet(
    tensors: Tensors,
    shown: str,
    own_config: Path | None,
    config_dir: Path | None,
    family: ModelFamily,
    device: torch.device,
    dtype: torch.dtype,
) -> ControlNetUnionModel:
    from accelerate import init_empty_weights
    from diffusers import ControlNetUnionModel

    config = union_config(tensors, own_config, config_dir, family)
    with init_empty_weights():
        model = cast(ControlNetUnionModel, ControlNetUnionModel.from_config(config))
    try:
        model.load_state_dict(dict(tensors), strict=True, assign=True)
    except RuntimeError as error:
        detail = str(error).split("\n\t", 2)[1] if "\n\t" in str(error) else str(error)
        raise ModelError(
            f"Union ControlNet {shown} doesn't fit its {'folder' if own_config else family.label} config "
            f"({detail[:200]}): put it in a folder of its own with the config.json it was published with."
        ) from error
    ensure_materialized(model, f"Union ControlNet {shown}", family.label)
    return finish(model, device, dtype)
