"""CLIP text encoders from single files: OpenAI CLIP (transformers names in the file) and OpenCLIP layout.

Built here rather than through diffusers, whose loader leaves weights a file lacks unset and goes on: every
weight the config asks for must be in the file at its shape, or a ModelError names the file. Weights the
model doesn't use (`position_ids`, OpenCLIP's `logit_scale`) are dropped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch

from backend.loading.files import Tensors, describe_load_error
from backend.model_errors import ModelError

if TYPE_CHECKING:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, PreTrainedModel

ModelT = TypeVar("ModelT", bound="PreTrainedModel")

# OpenCLIP's text tower (SDXL's `conditioner.embedders.1.model.`, SD2's `cond_stage_model.model.`) in
# transformers' CLIPTextModelWithProjection names.
OPEN_CLIP_TOP_LEVEL = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
OPEN_CLIP_BLOCK_PARTS = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
OPEN_CLIP_PROJECTION = "text_projection"
_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")


def load_clip_text_encoder(tensors: Tensors, config_folder: Path, filename: str, fits: str) -> CLIPTextModel:
    """CLIPTextModel from `text_model.*` weights (the original layout needs only its prefix removed).

    `fits` names the architecture in errors ("SD1.5's CLIP").
    """
    from transformers import CLIPTextModel

    return _load_strictly(CLIPTextModel, tensors, config_folder, filename, "text encoder", fits)


def load_open_clip_text_encoder(
    tensors: Tensors, config_folder: Path, filename: str, fits: str
) -> CLIPTextModelWithProjection:
    """CLIPTextModelWithProjection from an OpenCLIP text tower's weights, prefix removed."""
    from transformers import CLIPTextModelWithProjection

    weights = open_clip_to_transformers(tensors, filename)
    return _load_strictly(
        CLIPTextModelWithProjection, weights, config_folder, filename, "second text encoder", fits
    )


def open_clip_to_transformers(tensors: Tensors, filename: str) -> Tensors:
    """OpenCLIP text weights in transformers' names.

    OpenCLIP keeps each layer's query, key and value projections stacked in one `in_proj` (in that order,
    along the output dimension) and applies its text projection as `x @ text_projection`, where a Linear
    layer computes `x @ weight.T`: so the stack is split in three and the projection transposed.
    """
    out: Tensors = {}
    for key, tensor in tensors.items():
        if key in OPEN_CLIP_TOP_LEVEL:
            out[OPEN_CLIP_TOP_LEVEL[key]] = tensor
        elif key == OPEN_CLIP_PROJECTION:
            if tensor.ndim != 2:
                raise ModelError(f"{filename}: its text projection has shape {list(tensor.shape)}, not 2-D.")
            out["text_projection.weight"] = tensor.T.contiguous()
        elif m := _RESBLOCK.match(key):
            layer = f"text_model.encoder.layers.{m[1]}"
            part, _, kind = m[2].rpartition(".")
            if m[2] in ("attn.in_proj_weight", "attn.in_proj_bias"):
                out.update(
                    _split_in_proj(tensor, f"{layer}.self_attn", m[2].removeprefix("attn.in_proj_"), filename)
                )
            elif part in OPEN_CLIP_BLOCK_PARTS:
                out[f"{layer}.{OPEN_CLIP_BLOCK_PARTS[part]}.{kind}"] = tensor
            # anything else in a block is unknown to the model; a weight it needs shows as missing
    return out


def _split_in_proj(tensor: torch.Tensor, prefix: str, kind: str, filename: str) -> Tensors:
    if tensor.ndim == 0 or tensor.shape[0] % 3:
        raise ModelError(
            f"{filename}: {prefix} has stacked attention weights of shape {list(tensor.shape)}, "
            "which don't split into query, key and value."
        )
    query, key, value = tensor.chunk(3, dim=0)
    # Copies: a view would keep the whole stack alive and share storage between three parameters.
    return {
        f"{prefix}.q_proj.{kind}": query.clone(),
        f"{prefix}.k_proj.{kind}": key.clone(),
        f"{prefix}.v_proj.{kind}": value.clone(),
    }


def _load_strictly(
    cls: type[ModelT], tensors: Tensors, config_folder: Path, filename: str, what: str, fits: str
) -> ModelT:
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig

    config = CLIPTextConfig.from_pretrained(str(config_folder), local_files_only=True)
    with init_empty_weights():  # parameters on meta: no time spent on random init; buffers stay real
        model = cls(config)
    expected = model.state_dict().keys()
    # transformers >= 5.6 flattened CLIPTextModel: its keys lack the `text_model.` that files carry.
    wrapped = any(k.startswith("text_model.") for k in expected)
    weights = {}
    for key, tensor in tensors.items():
        key = key if wrapped else key.removeprefix("text_model.")
        if key in expected:  # drops `position_ids`, a buffer some files carry (sometimes with broken values)
            weights[key] = tensor
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ModelError(f"{filename}: {what} weights missing ({', '.join(missing[:5])}).")
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelError(f"{filename}: the {what} doesn't fit {fits} ({describe_load_error(e)}).") from e
    return model
