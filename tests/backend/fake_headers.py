"""Model files that look like real ones to anything that reads only their header: the real tensor names of
SD1.5, SDXL, SD2, Flux checkpoints, LoRAs and ControlNets, each tensor cut to the few elements whose shape
still says what the header judge reads (a cross-attention's input width, a UNet's input channels).

Written with the stdlib in the .safetensors layout (8 bytes of header length, the JSON header, zeroed data),
so the files are valid to backend/model_check.py; a loader would refuse them (the shapes are not a model's).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

Shapes = Mapping[str, Sequence[int]]

UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
UNET_CROSS_ATTENTION = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
VAE = {
    "first_stage_model.encoder.conv_in.weight": (1, 3, 1, 1),
    "first_stage_model.decoder.conv_in.weight": (1, 4, 1, 1),
}
SD15_TEXT_ENCODER = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SDXL_TEXT_ENCODERS = (
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",  # CLIP ViT-L
    "conditioner.embedders.1.model.token_embedding.weight",  # OpenCLIP ViT-bigG
)
REFINER_TEXT_ENCODER = "conditioner.embedders.0.model.token_embedding.weight"  # bigG alone
SD2_TEXT_ENCODER = "cond_stage_model.model.token_embedding.weight"  # OpenCLIP ViT-H
FLUX_BLOCK = "double_blocks.0.img_attn.qkv.weight"
KOHYA_CROSS_ATTENTION = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
KOHYA_TE2 = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"


def write_safetensors(path: Path, shapes: Shapes) -> Path:
    """A valid .safetensors file of F16 zeros with these tensor names and shapes."""
    header: dict[str, object] = {}
    offset = 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(offset))
    return path


def sd15_checkpoint(in_channels: int = 4) -> dict[str, Sequence[int]]:
    return {
        SD15_TEXT_ENCODER: (1, 768),
        UNET_CONV_IN: (1, in_channels, 1, 1),
        UNET_CROSS_ATTENTION: (1, 768),
        **VAE,
    }


def sdxl_checkpoint(in_channels: int = 4) -> dict[str, Sequence[int]]:
    return {
        SDXL_TEXT_ENCODERS[0]: (1, 768),
        SDXL_TEXT_ENCODERS[1]: (1, 1280),
        UNET_CONV_IN: (1, in_channels, 1, 1),
        UNET_CROSS_ATTENTION: (1, 2048),
        **VAE,
    }


def sdxl_refiner() -> dict[str, Sequence[int]]:
    return {
        REFINER_TEXT_ENCODER: (1, 1280),
        UNET_CONV_IN: (1, 4, 1, 1),
        UNET_CROSS_ATTENTION: (1, 1280),
        **VAE,
    }


def sd2_checkpoint() -> dict[str, Sequence[int]]:
    return {SD2_TEXT_ENCODER: (1, 1024), UNET_CONV_IN: (1, 4, 1, 1), UNET_CROSS_ATTENTION: (1, 1024), **VAE}


def flux_checkpoint() -> dict[str, Sequence[int]]:
    return {FLUX_BLOCK: (3, 1)}


def kohya_lora(width: int | None, second_text_encoder: bool = False) -> dict[str, Sequence[int]]:
    """A kohya LoRA whose cross-attention reads text features `width` wide (None: of the UNet's
    convolutions only), and of SDXL's second text encoder."""
    shapes: dict[str, Sequence[int]] = {}
    if width is not None:
        shapes[f"{KOHYA_CROSS_ATTENTION}.lora_down.weight"] = (4, width)
        shapes[f"{KOHYA_CROSS_ATTENTION}.lora_up.weight"] = (1, 4)
    else:
        shapes["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"] = (4, 1, 1, 1)
    if second_text_encoder:
        shapes[f"{KOHYA_TE2}.lora_down.weight"] = (4, 1280)
        shapes[f"{KOHYA_TE2}.lora_up.weight"] = (1, 4)
    return shapes


def controlnet(width: int) -> dict[str, Sequence[int]]:
    """A ControlNet 1.1 file (`control_model.` prefix) for a UNet reading text features `width` wide."""
    return {
        "control_model.input_hint_block.0.weight": (1, 3, 1, 1),
        "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (1, width),
    }
