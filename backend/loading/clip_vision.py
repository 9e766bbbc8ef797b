"""CLIP vision encoders (`models/clip_vision/`), the image encoders IP-Adapters read.

Two layouts, as ComfyUI users have them: a single .safetensors file in transformers' layout (`vision_model.*`
and `visual_projection.weight`, e.g. `CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors`), whose config is read off
the tensor shapes; and a folder with transformers' `config.json` beside the weights (`models/image_encoder/`
of the IP-Adapter repository). The header alone says the widths (stdlib only at import: intake picks the
encoder that fits an adapter without loading it); `load_clip_vision` builds transformers'
CLIPVisionModelWithProjection and the CLIPImageProcessor that prepares images for it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.file_headers import HeaderError, read_header
from backend.model_errors import ModelError

Shapes = Mapping[str, Sequence[int]]
PATCH = "vision_model.embeddings.patch_embedding.weight"
POSITIONS = "vision_model.embeddings.position_embedding.weight"
PROJECTION = "visual_projection.weight"
_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.weight$")
# Attention heads can't be read off the shapes: the published encoders' (ViT-B, ViT-L, ViT-H, ViT-bigG),
# else heads of 64 channels, as those of ViT-B and ViT-L are.
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16, 1664: 16}
# OpenAI's ViT-B and ViT-L use quick_gelu; the LAION-trained ViT-H and ViT-bigG the IP-Adapters read, gelu.
QUICK_GELU_WIDTHS = (768, 1024)
FOLDER_WEIGHTS = ("model.safetensors",)


@dataclass(frozen=True)
class EncoderInfo:
    """An encoder's output widths: the projected image embedding and the hidden states."""

    embedding_width: int  # projection_dim: what base IP-Adapters read
    hidden_width: int  # hidden_size: what plus / full-face IP-Adapters read
    image_size: int

    def output_width(self, hidden_states: bool) -> int:
        return self.hidden_width if hidden_states else self.embedding_width


def config_from_shapes(shapes: Shapes) -> dict[str, Any]:
    """A CLIPVisionConfig's fields for a transformers-layout single file; ValueError when it is none."""
    if PATCH not in shapes or POSITIONS not in shapes or PROJECTION not in shapes:
        raise ValueError(
            "it is not a CLIP vision encoder in transformers' layout (vision_model.* and "
            "visual_projection.weight)"
        )
    hidden, channels, patch = (int(n) for n in shapes[PATCH][:3])
    positions = int(shapes[POSITIONS][0])
    side = math.isqrt(positions - 1)
    layers = [int(m.group(1)) for name in shapes if (m := _LAYER.match(name))]
    fc1 = shapes.get("vision_model.encoder.layers.0.mlp.fc1.weight")
    if side * side != positions - 1 or not layers or fc1 is None:
        raise ValueError("its vision transformer's tensors are incomplete")
    return {
        "hidden_size": hidden,
        "num_channels": channels,
        "patch_size": patch,
        "image_size": side * patch,
        "num_hidden_layers": max(layers) + 1,
        "intermediate_size": int(fc1[0]),
        "num_attention_heads": HEADS_BY_WIDTH.get(hidden, max(1, hidden // 64)),
        "projection_dim": int(shapes[PROJECTION][0]),
        "hidden_act": "quick_gelu" if hidden in QUICK_GELU_WIDTHS else "gelu",
        "layer_norm_eps": 1e-5,
    }


def _folder_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"its config.json can't be read ({error})") from None
    if not isinstance(config, dict):
        raise ValueError("its config.json is not a JSON object")
    vision = config.get("vision_config", config)  # a whole CLIPModel's config keeps it under vision_config
    return vision if isinstance(vision, dict) else {}


def encoder_info(path: Path) -> EncoderInfo:
    """The widths of the encoder at `path` (a file or a folder); ValueError saying why it is none."""
    if path.is_dir():
        config = _folder_config(path)
    else:
        try:
            header = read_header(path)
        except HeaderError as error:
            raise ValueError(f"it is damaged or incomplete ({error})") from None
        config = config_from_shapes({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    try:
        return EncoderInfo(
            int(config.get("projection_dim", 512)), int(config["hidden_size"]), int(config["image_size"])
        )
    except (KeyError, TypeError, ValueError):
        raise ValueError("its config has no hidden_size / image_size") from None


def is_encoder_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / name).is_file() for name in FOLDER_WEIGHTS)


@dataclass
class ClipVision:
    """A loaded encoder and the processor that prepares images for it."""

    name: str
    model: Any  # transformers CLIPVisionModelWithProjection
    processor: Any  # transformers CLIPImageProcessor
    info: EncoderInfo


def load_clip_vision(path: Path, name: str, device: Any, dtype: Any) -> ClipVision:
    """Build the encoder at `path`; ModelError naming it when it can't be used."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from .files import finish, read_tensors

    what = f"CLIP vision encoder {name!r}"
    try:
        info = encoder_info(path)
        if path.is_dir():
            config = CLIPVisionConfig(**_folder_config(path))
            tensors = read_tensors(path / FOLDER_WEIGHTS[0], what)
        else:
            tensors = read_tensors(path, what)
            config = CLIPVisionConfig(**config_from_shapes({k: tuple(v.shape) for k, v in tensors.items()}))
    except ValueError as error:
        raise ModelError(f"{what} can't be used: {error}.") from None
    model = CLIPVisionModelWithProjection(config)
    # A whole CLIPModel's file has the text tower too; position_ids are a buffer older exports carry.
    wanted = {k: v for k, v in tensors.items() if k.startswith(("vision_model.", "visual_projection."))}
    wanted.pop("vision_model.embeddings.position_ids", None)
    result = model.load_state_dict(wanted, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith("position_ids")]
    if missing or result.unexpected_keys:
        shown = ", ".join([*missing, *result.unexpected_keys][:4])
        raise ModelError(f"{what} can't be used: its tensors don't fit a CLIP vision encoder ({shown}).")
    size = int(info.image_size)
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return ClipVision(name, finish(model, device, dtype), processor, info)
