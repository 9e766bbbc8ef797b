"""IP-Adapter files (`models/ipadapter/`) in the layout people download them in.

`ip-adapter_sd15.safetensors` and its kin hold two groups of tensors: `image_proj.*` (the layer that turns a
CLIP vision embedding into a few extra "image tokens") and `ip_adapter.N.to_k_ip.weight` / `to_v_ip.weight`
(the key/value projections of those tokens for the N-th cross-attention, N = 1, 3, 5, ... in the UNet's
attention-processor order). The variant is told from the projection's names:

- base (`image_proj.proj.weight`, `image_proj.norm.weight`): reads the encoder's projected image embedding;
- plus (`image_proj.latents`, `image_proj.proj_in.weight`: a perceiver resampler): reads the encoder's
  penultimate hidden states;
- full face (`image_proj.proj.3.weight`): reads the penultimate hidden states too.

FaceID files need face embeddings from a face-recognition model, which the backend doesn't have: refused.
The header describes everything (stdlib only at import: the model lists judge files with it); the tensors
are read by `load_ip_adapter` and installed into a UNet by diffusers' UNet loader (engine/references.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from backend.model_errors import ModelError
from backend.model_families import FAMILIES, ModelFamily

if TYPE_CHECKING:
    import torch

Shapes = Mapping[str, Sequence[int]]
PROJ = "image_proj."
LAYERS = "ip_adapter."
FACEID = "it is an IP-Adapter FaceID file, which needs face embeddings the backend can't make"
_LAYER_KEY = re.compile(r"^ip_adapter\.(\d+)\.to_k_ip\.weight$")


@dataclass(frozen=True)
class IPAdapterInfo:
    """What an IP-Adapter file needs and fits, from its tensor shapes."""

    variant: str  # "base", "plus" or "full"
    cross_width: int  # the text-feature width of the UNet's cross-attention it was trained with
    layers: int  # cross-attention layers it has weights for
    image_width: int  # the width of what it reads from the CLIP vision encoder
    tokens: int  # image tokens it adds to each cross-attention

    @property
    def hidden_states(self) -> bool:
        """True: it reads the encoder's penultimate hidden states; False: the projected image embedding."""
        return self.variant != "base"

    @property
    def family(self) -> ModelFamily | None:
        """The family whose cross-attention width it has; None for widths no family has (test models)."""
        return next((f for f in FAMILIES.values() if f.cross_attention_width == self.cross_width), None)

    def describe_input(self) -> str:
        what = "hidden states" if self.hidden_states else "image embeddings"
        return f"{self.image_width}-wide {what}"


def describe_ip_adapter(shapes: Shapes) -> IPAdapterInfo:
    """The file's variant and widths; ValueError saying what is wrong when it is no IP-Adapter it serves."""
    layer_keys = [int(m.group(1)) for name in shapes if (m := _LAYER_KEY.match(name))]
    if not layer_keys or not any(name.startswith(PROJ) for name in shapes):
        raise ValueError("it is not an IP-Adapter file (no image_proj.* and ip_adapter.N.to_k_ip weights)")
    if any(".to_q_lora." in name or "perceiver_resampler." in name for name in shapes):
        raise ValueError(
            "it is an IP-Adapter FaceID file, which needs face embeddings the backend can't make"
        )
    cross_width = int(shapes[f"{LAYERS}{min(layer_keys)}.to_k_ip.weight"][1])
    if f"{PROJ}latents" in shapes and f"{PROJ}proj_in.weight" in shapes:
        variant, image_width = "plus", int(shapes[f"{PROJ}proj_in.weight"][1])
        tokens = int(shapes[f"{PROJ}latents"][1])
    elif f"{PROJ}proj.3.weight" in shapes and f"{PROJ}proj.0.weight" in shapes:
        variant, image_width, tokens = "full", int(shapes[f"{PROJ}proj.0.weight"][1]), 257
    elif f"{PROJ}proj.weight" in shapes and f"{PROJ}norm.weight" in shapes:
        variant, image_width = "base", int(shapes[f"{PROJ}proj.weight"][1])
        tokens = int(shapes[f"{PROJ}proj.weight"][0]) // max(1, int(shapes[f"{PROJ}norm.weight"][0]))
    elif f"{PROJ}norm.weight" in shapes:
        raise ValueError(
            "it is an IP-Adapter FaceID file, which needs face embeddings the backend can't make"
        )
    else:
        raise ValueError("its image projection is of no IP-Adapter variant the backend knows")
    return IPAdapterInfo(variant, cross_width, len(layer_keys), image_width, tokens)


@dataclass
class IPAdapterFile:
    """A loaded IP-Adapter: its tensors grouped as diffusers' `_load_ip_adapter_weights` takes them."""

    name: str
    info: IPAdapterInfo
    state_dict: dict[str, dict[str, torch.Tensor]]  # {"image_proj": {...}, "ip_adapter": {...}}


def load_ip_adapter(path: Path, name: str) -> IPAdapterFile:
    """Read an IP-Adapter .safetensors file; ModelError naming it when it is none the backend serves."""
    from .files import read_tensors

    tensors = read_tensors(path, f"IP-Adapter {name!r}")
    try:
        info = describe_ip_adapter({key: tuple(value.shape) for key, value in tensors.items()})
    except ValueError as error:
        raise ModelError(f"IP-Adapter {name!r} can't be used: {error}.") from None
    grouped: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in tensors.items():
        for group in grouped:
            if key.startswith(group + "."):
                grouped[group][key[len(group) + 1 :]] = value
    return IPAdapterFile(name, info, grouped)
