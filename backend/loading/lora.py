"""LoRA files in the namings people actually have, fused into the model weights at chosen strengths.

Namings read (keys per layer: down/up weights and an optional alpha):
- kohya with diffusers block names, as the published LCM-LoRA (`lora_unet_up_blocks_2_attentions_0_proj_in`);
- kohya with ORIGINAL SD block names, as most civitai LoRAs (`lora_unet_input_blocks_1_1_proj_in`,
  resnet layers `..._emb_layers_1`, `..._skip_connection`, text encoder `lora_te_text_model_encoder_...`);
- diffusers/peft (`unet.<module>.lora_A.weight`, `text_encoder.text_model.<module>.lora_B.weight`) and the
  older diffusers attention-processor naming (`...attn1.processor.to_q_lora.down.weight`);
- ComfyUI-style dotted original names (`diffusion_model.input_blocks.1.1.proj_in.lora_down.weight`).

SDXL LoRAs use the same namings for their UNet (original names number SDXL's blocks by the same rules, with
several `transformer_blocks` per attention and `label_emb` for the pooled-text/size embedding) and name their
two text encoders `lora_te1_`/`lora_te2_` (kohya) or `text_encoder.`/`text_encoder_2.` (peft); both encoders
get the clip strength, as one "clip" in ComfyUI and A1111.

A LoRA made for another family than the checkpoint's (backend/model_families.adapter_family) is refused with
both families named, before any name is looked up: its layer names partly coincide with the checkpoint's
(`down_blocks_1_attentions_0` exists in SD1.5 and SDXL alike), so a name-by-name load would fail late on
a shape or, worse, apply the few layers that happen to fit.

Every naming is resolved against a table built from the loaded models' own layer names (both diffusers and LDM
spellings), not by parsing underscores, which are ambiguous (`transformer_blocks_0_attn1_to_out_0`).

Fusing is done here instead of through peft adapters: the layers stay plain `nn.Linear`/`nn.Conv2d`
(nothing extra in the realtime path, and torch.compile/CUDA graphs see the same modules), and each patched
layer's original weight is kept, so any change of strengths recomputes from the original exactly: strength 0
is bit-identical to no LoRA, and sliding a strength back and forth never drifts, even in fp16.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from backend.loading.configs import UNET_CONFIG, family_config_dir, read_json
from backend.loading.files import read_tensors
from backend.loading.ldm_names import UNetShape, unet_name_to_ldm
from backend.model_errors import ModelError
from backend.model_families import (
    FAMILIES,
    SD15,
    UNSERVED_WIDTHS,
    ModelFamily,
    Shapes,
    UnservedFamily,
    adapter_family,
    cross_attention_width,
    describe_mismatch,
)

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

    from backend.loading.components import PipelineComponents

log = logging.getLogger(__name__)

UNET = "unet"
TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"
# How LoRA files name each text encoder: kohya prefixes (SD1.5's single one is `lora_te_`, SDXL's are te1/te2)
# and the diffusers component name peft files use.
TEXT_ENCODER_SPELLINGS = {
    TEXT_ENCODER: (("lora_te_", "lora_te1_"), TEXT_ENCODER),
    TEXT_ENCODER_2: (("lora_te2_",), TEXT_ENCODER_2),
}
# A CLIP text model's own parts; newer transformers drop the `text_model.` level above them that LoRA files
# still name (CLIPTextModel), or keep it (CLIPTextModelWithProjection, whose `text_projection` is outside it).
TEXT_MODEL_PARTS = ("encoder.", "embeddings.", "final_layer_norm")
# The layers a LoRA patches: their weights get original + sum(strength * delta).
WeightedModule = torch.nn.Linear | torch.nn.Conv2d

# Checked in order: longer suffixes first so `.lora.down.weight` isn't read as `.down.weight`.
ROLE_SUFFIXES = (
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".down.weight", "down"),
    (".up.weight", "up"),
    (".alpha", "alpha"),
    (".lora_mid.weight", "mid"),
)
# Other LyCORIS network types: their math differs, so they are reported rather than misapplied.
UNSUPPORTED_MARKERS = {
    ".hada_w1": "LoHa",
    ".lokr_w1": "LoKr",
    ".lora_mid.": "LoCon with a Tucker middle",
    ".dora_scale": "DoRA",
}
FULL_DIFF_SUFFIXES = (".diff", ".diff_b")
# The old diffusers attention-processor naming, mapped onto module names.
LEGACY_ATTENTION = (
    (re.compile(r"\.processor\.to_([qkv])_lora$"), r".to_\1"),
    (re.compile(r"\.processor\.to_out_lora$"), ".to_out.0"),
    (re.compile(r"\.self_attn\.to_([qkv])_lora$"), r".self_attn.\1_proj"),
    (re.compile(r"\.self_attn\.to_out_lora$"), ".self_attn.out_proj"),
)


@dataclass(frozen=True, eq=False)
class LoraLayer:
    target: str  # UNET, TEXT_ENCODER or TEXT_ENCODER_2
    module: str  # module name inside that model
    down: torch.Tensor  # [rank, in] or [rank, in, kh, kw]
    up: torch.Tensor  # [out, rank] or [out, rank, 1, 1]
    scale: float  # alpha / rank; 1 when the file has no alpha

    def add_to(self, total: torch.Tensor, strength: float) -> None:
        """total += strength * scale * (up @ down), for a contiguous fp32 weight-shaped `total`.

        One fused addmm into a flat view: no weight-sized temporaries, which matters for the ~600M UNet
        weights the LCM-LoRA touches.
        """
        up = self.up.to(device=total.device, dtype=torch.float32).flatten(1)
        down = self.down.to(device=total.device, dtype=torch.float32).flatten(1)
        total.view(total.shape[0], -1).addmm_(up, down, alpha=self.scale * strength)


@dataclass(frozen=True, eq=False)
class LoraWeights:
    name: str
    layers: tuple[LoraLayer, ...]
    skipped: tuple[str, ...]  # layer names in the file that this model doesn't have

    def count(self, target: str) -> int:
        return sum(layer.target == target for layer in self.layers)


def _flat(name: str) -> str:
    return name.replace(".", "_")


def _weighted_modules(model: torch.nn.Module) -> Iterator[tuple[str, WeightedModule]]:
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            yield name, module


class LoraTargets:
    """Every spelling a LoRA file may use for each patchable layer of a checkpoint's UNet and text encoders,
    and what the LoRA's family must be (`family`; `widths`: see family_widths)."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: torch.nn.Module,
        text_encoder_2: torch.nn.Module | None = None,
        family: ModelFamily = SD15,
        widths: dict[int, ModelFamily] | None = None,
    ) -> None:
        self.family = family
        self.widths = widths or {}
        self.modules: dict[str, dict[str, WeightedModule]] = {UNET: {}}
        self.lookup: dict[str, tuple[str, str]] = {}
        shape = UNetShape.from_config(unet.config)
        for name, module in _weighted_modules(unet):
            self.modules[UNET][name] = module
            spellings = ["lora_unet_" + _flat(name), "unet." + name]
            ldm = unet_name_to_ldm(name, shape)
            if ldm is not None:
                spellings += ["lora_unet_" + _flat(ldm), "diffusion_model." + ldm]
            for spelling in spellings:
                self.lookup[spelling] = (UNET, name)
        self._add_text_encoder(TEXT_ENCODER, text_encoder)
        if text_encoder_2 is not None:
            self._add_text_encoder(TEXT_ENCODER_2, text_encoder_2)

    @classmethod
    def for_components(cls, components: PipelineComponents, config_dir: Path | None = None) -> LoraTargets:
        """The targets of a loaded checkpoint; `config_dir` as the checkpoint was loaded with."""
        return cls(
            components.unet,
            components.text_encoder,
            components.text_encoder_2,
            components.family,
            family_widths(config_dir),
        )

    def _add_text_encoder(self, target: str, model: torch.nn.Module) -> None:
        kohya_prefixes, component = TEXT_ENCODER_SPELLINGS[target]
        self.modules[target] = {}
        for name, module in _weighted_modules(model):
            self.modules[target][name] = module
            full = "text_model." + name if name.startswith(TEXT_MODEL_PARTS) else name
            spellings = [prefix + _flat(full) for prefix in kohya_prefixes]
            spellings += [f"{component}.{full}", f"{component}.{name}"]
            for spelling in spellings:
                self.lookup[spelling] = (target, name)

    def find(self, base: str) -> tuple[str, str] | None:
        base = base.removeprefix("base_model.model.")
        for pattern, replacement in LEGACY_ATTENTION:
            base = pattern.sub(replacement, base)
        found = self.lookup.get(base)
        if found is None and "." in base and not base.startswith(("unet.", "text_encoder")):
            found = self.lookup.get("unet." + base)  # peft files saved from a bare UNet have no prefix
        return found

    def check_family(self, shapes: Shapes, name: str) -> None:
        """Refuse a LoRA made for another family; one whose names don't tell is left to the name lookup."""
        try:
            found = adapter_family(shapes)
        except UnservedFamily as error:
            width = cross_attention_width(shapes)
            if width in UNSERVED_WIDTHS:
                raise ModelError(
                    f"LoRA {name!r} is {error}; the checkpoint in use is {self.family.label}."
                ) from None
            found = self.widths.get(width) if width is not None else None
        if found is not None and found is not self.family:
            raise ModelError(describe_mismatch(f"LoRA {name!r}", found, self.family))


def family_widths(config_dir: Path | None) -> dict[int, ModelFamily]:
    """The text-feature width each family's UNet reads as this loader builds it, for widths no family row
    knows: with a caller-given config folder (the tests' tiny models) these are its configs' widths, so a
    tiny LoRA's family shows as a real one's does. A folder counts for the family whose text encoders it
    configures (a family without a folder of its own falls back to another's, see family_config_dir)."""
    widths: dict[int, ModelFamily] = {}
    if config_dir is None:
        return widths
    for candidate in FAMILIES.values():
        folder = family_config_dir(candidate, config_dir, inpaint=False)
        encoders = tuple(
            e for e in ("text_encoder", "text_encoder_2") if (folder / e / "config.json").is_file()
        )
        if encoders != candidate.text_encoders:
            continue
        try:
            width = read_json(folder / UNET_CONFIG).get("cross_attention_dim")
        except (OSError, ValueError):
            continue
        if isinstance(width, int):
            widths.setdefault(width, candidate)
    return widths


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, role in ROLE_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _unsupported_kinds(tensors: dict[str, torch.Tensor]) -> list[str]:
    kinds = {kind for key in tensors for marker, kind in UNSUPPORTED_MARKERS.items() if marker in key}
    if any(key.endswith(FULL_DIFF_SUFFIXES) for key in tensors):
        kinds.add("full-weight difference")
    return sorted(kinds)


def parse_lora(tensors: dict[str, torch.Tensor], name: str, targets: LoraTargets) -> LoraWeights:
    targets.check_family({key: tuple(tensor.shape) for key, tensor in tensors.items()}, name)
    unsupported = _unsupported_kinds(tensors)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        split = _split_key(key)
        if split is not None:
            groups.setdefault(split[0], {})[split[1]] = tensor
    layers: list[LoraLayer] = []
    skipped: list[str] = []
    for base, parts in groups.items():
        if "down" not in parts or "up" not in parts:
            if "down" in parts or "up" in parts:
                raise ModelError(f"LoRA {name!r} is damaged: layer {base} lacks its down or up weights.")
            continue  # a lone alpha belongs to an unsupported layer type
        if "mid" in parts:
            skipped.append(base)  # Tucker-decomposed LoCon: reported as unsupported below
            continue
        found = targets.find(base)
        if found is None:
            skipped.append(base)
            continue
        target, module_name = found
        layers.append(_make_layer(name, base, target, module_name, parts, targets))
    if not layers:
        detail = f" It uses {', '.join(unsupported)}, which is not supported." if unsupported else ""
        others = ", ".join(f.label for f in FAMILIES.values() if f is not targets.family)
        raise ModelError(
            f"LoRA {name!r} has no layers that match this {targets.family.label} checkpoint.{detail} "
            f"It may be a LoRA for another model family ({others}, SD 2.x)."
        )
    if skipped or unsupported:
        log.warning(
            "LoRA %s: %d layers applied, %d not found in this model (e.g. %s)%s",
            name,
            len(layers),
            len(skipped),
            ", ".join(skipped[:3]),
            f"; unsupported parts ignored: {', '.join(unsupported)}" if unsupported else "",
        )
    return LoraWeights(name, tuple(layers), tuple(skipped))


def _make_layer(
    name: str, base: str, target: str, module_name: str, parts: dict[str, torch.Tensor], targets: LoraTargets
) -> LoraLayer:
    down, up = parts["down"], parts["up"]
    weight = targets.modules[target][module_name].weight
    rank = down.shape[0]
    if up.ndim != down.ndim or up.shape[1] != rank or (up.ndim == 4 and up.shape[2:] != (1, 1)):
        raise ModelError(f"LoRA {name!r} is damaged: layer {base} has mismatched down/up shapes.")
    expected = (up.shape[0], *down.shape[1:])
    if tuple(weight.shape) != expected:
        raise ModelError(
            f"LoRA {name!r} doesn't fit this checkpoint: layer {module_name} has shape "
            f"{tuple(weight.shape)}, "
            f"the LoRA expects {expected}. Is it a LoRA for {targets.family.label}?"
        )
    alpha = parts.get("alpha")
    scale = float(alpha) / rank if alpha is not None else 1.0
    return LoraLayer(target, module_name, down, up, scale)


def read_lora(path: Path, name: str, targets: LoraTargets, device: torch.device | None = None) -> LoraWeights:
    """Read and map a LoRA file; its tensors go to `device` so later re-fusing needs no transfers."""
    tensors = read_tensors(path, "LoRA")
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return parse_lora(tensors, name, targets)


class LoraFuser:
    """Fuses weighted LoRAs into one model, keeping each patched layer's original weight.

    The originals stay on the model's device: re-fusing when a painter drags a strength slider then needs no
    host transfers, at the cost of one extra copy of the patched layers.
    """

    def __init__(self, model: torch.nn.Module, target: str) -> None:
        self.target = target
        self.modules = {name: module for name, module in _weighted_modules(model)}
        self.originals: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def apply(self, loras: Sequence[tuple[LoraWeights, float]]) -> None:
        """Make the weights original + sum(strength * delta); replaces whatever was applied before."""
        wanted: dict[str, list[tuple[LoraLayer, float]]] = {}
        for lora, strength in loras:
            if strength == 0:
                continue
            for layer in lora.layers:
                if layer.target == self.target:
                    wanted.setdefault(layer.module, []).append((layer, float(strength)))
        for module_name in [m for m in self.originals if m not in wanted]:
            self.modules[module_name].weight.copy_(self.originals.pop(module_name))
        for module_name, patches in wanted.items():
            weight = self.modules[module_name].weight
            original = self.originals.setdefault(module_name, weight.detach().clone())
            # fp32 so that several small deltas survive a fp16 model
            total = original.to(dtype=torch.float32, copy=True)
            for layer, strength in patches:
                layer.add_to(total, strength)
            # copy_ keeps the parameter's storage: captured CUDA graphs and compiled code see the new weights
            weight.copy_(total.to(weight.dtype))
