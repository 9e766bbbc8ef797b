"""Names of SD1.5 and SDXL UNet layers in the original (LDM, `openaimodel.py`) layout, from diffusers names.

LoRAs trained with kohya's scripts on original checkpoints name layers the LDM way
(`lora_unet_input_blocks_1_1_proj_in`, `..._output_blocks_3_0_emb_layers_1`); diffusers' SD1.5 path can't map
all of them, so the LoRA loader looks names up in a table built from this function. SDXL's UNet numbers its
blocks by the same rules (three levels instead of four, deeper transformers inside the same block slots) and
adds `label_emb`, the embedding of the pooled text and size conditioning. The test fixtures use the
same function to write checkpoints in the original layout, and a round trip through diffusers' own converter
checks it key for key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Inside a ResnetBlock2D; attention blocks keep the same inner names in both layouts.
RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
TOP_LEVEL_TO_LDM = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    # SDXL's `text_time` addition embedding: an MLP of Linear, SiLU, Linear inside a Sequential at index 0
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

_BLOCK = re.compile(
    r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.(.*))?$"
)
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$")


@dataclass(frozen=True)
class UNetShape:
    """The parts of a UNet config that decide LDM block numbering."""

    layers_per_block: int
    up_block_types: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UNetShape:
        layers = config["layers_per_block"]
        if not isinstance(layers, int):
            # Per-block layer counts exist in diffusers, not in SD1.5; the numbering below assumes one count.
            raise ValueError("per-block layers_per_block is not supported")
        return cls(layers, tuple(config["up_block_types"]))


def _resnet_inner(rest: str | None) -> str | None:
    if rest is None:
        return ""
    head, _, tail = rest.partition(".")
    if head not in RESNET_TO_LDM:
        return None
    return RESNET_TO_LDM[head] + ("." + tail if tail else "")


def _join(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


def unet_name_to_ldm(name: str, shape: UNetShape) -> str | None:
    """LDM name for a diffusers UNet module or parameter name (`down_blocks.0.resnets.1.conv1.weight`).

    Returns None for names with no LDM counterpart (containers such as `down_blocks.0`).
    """
    for prefix, ldm in TOP_LEVEL_TO_LDM.items():
        if name == prefix or name.startswith(prefix + "."):
            return ldm + name[len(prefix) :]
    per_block = shape.layers_per_block + 1  # each LDM level holds its layers plus one resampler slot
    if m := _BLOCK.match(name):
        side, block, part, index, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if side == "down_blocks":
            if part == "downsamplers":
                # diffusers' `downsamplers.0.conv` is the LDM `op` conv in the slot after the block's layers
                slot = 1 + block * per_block + shape.layers_per_block
                if rest is None or not rest.startswith("conv"):
                    return None
                return _join(f"input_blocks.{slot}.0.op", rest[len("conv") :].lstrip("."))
            slot = 1 + block * per_block + index
        else:
            if part == "upsamplers":
                slot = block * per_block + shape.layers_per_block
                # the upsampler sits after the attention in blocks that have one
                upsample_index = 2 if shape.up_block_types[block].startswith("CrossAttn") else 1
                return _join(f"output_blocks.{slot}.{upsample_index}", rest)
            slot = block * per_block + index
        ldm_side = "input_blocks" if side == "down_blocks" else "output_blocks"
        if part == "resnets":
            inner = _resnet_inner(rest)
            return None if inner is None else _join(f"{ldm_side}.{slot}.0", inner)
        if part == "attentions":
            return _join(f"{ldm_side}.{slot}.1", rest)
        return None
    if m := _MID.match(name):
        part, index, rest = m.group(1), int(m.group(2)), m.group(3)
        if part == "attentions":
            return _join(f"middle_block.{2 * index + 1}", rest)
        inner = _resnet_inner(rest)
        return None if inner is None else _join(f"middle_block.{2 * index}", inner)
    return None


def unet_ldm_names(names: Sequence[str], config: Mapping[str, Any]) -> dict[str, str]:
    """Map each mappable diffusers name to its LDM name (names without a counterpart are left out)."""
    shape = UNetShape.from_config(config)
    out: dict[str, str] = {}
    for name in names:
        ldm = unet_name_to_ldm(name, shape)
        if ldm is not None:
            out[name] = ldm
    return out
