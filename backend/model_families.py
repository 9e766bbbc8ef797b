"""Model families: what the backend knows about each base architecture, and how a file says which it is.

A family is one row of FAMILIES. Everything that differs between SD1.5 and SDXL-class models and is a fact
rather than code lives here (where its shipped configs are, its native size, its text encoders, how its UNet
is conditioned); the code that differs is keyed by `conditioning` (backend/engine/conditioning.py) and by the
family's name in the loaders. Adding a family means a row here, its configs in backend/configs/, and an
entry in those tables.

Files are told apart by their tensors' names and shapes alone (a safetensors header holds both), so the
model lists can name a file's family without loading it: the text encoders a checkpoint carries, and the
width of the UNet's cross-attention (the text features it reads: 768 for SD1.5, 1024 for SD2.x, 2048 for
SDXL's two encoders side by side) for LoRAs and ControlNets, which carry no text encoder of their own.

Stdlib only: the server's event loop uses it, where torch is never imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from protocol.registry import MODEL_FAMILIES, family_label

Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class ModelFamily:
    name: str  # on the wire (model lists, results) and in file names of configs
    label: str  # for painters (protocol/registry.py MODEL_FAMILIES)
    configs: str  # backend/configs/<configs>/ holds unet/, vae/, text_encoder*/, scheduler/
    inpaint_configs: str
    controlnet_configs: str
    text_encoders: tuple[str, ...]  # the diffusers component names, in the order their features concatenate
    conditioning: str  # how the UNet is conditioned: a key of backend/engine/conditioning.py's table
    cross_attention_width: int  # the text features' width the UNet's cross-attention reads
    native_side: int  # pixels per side the base model was trained at
    # The preview decoder's files (TAESD's latent space is per family): <stem>_encoder / <stem>_decoder
    preview_decoder: str
    # Tensor names whose presence marks a single-file checkpoint of this family (original layout).
    checkpoint_markers: tuple[str, ...]


SD15 = ModelFamily(
    name="sd15",
    label=family_label("sd15"),
    configs="sd15",
    inpaint_configs="sd15_inpaint",
    controlnet_configs="controlnet_sd15",
    text_encoders=("text_encoder",),
    conditioning="clip",
    cross_attention_width=768,
    native_side=MODEL_FAMILIES["sd15"].native_side,
    preview_decoder="taesd",
    checkpoint_markers=("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",),
)
SDXL = ModelFamily(
    name="sdxl",
    label=family_label("sdxl"),
    configs="sdxl",
    inpaint_configs="sdxl_inpaint",
    controlnet_configs="controlnet_sdxl",
    text_encoders=("text_encoder", "text_encoder_2"),
    conditioning="clip_pooled_time_ids",
    cross_attention_width=2048,
    native_side=MODEL_FAMILIES["sdxl"].native_side,
    preview_decoder="taesdxl",
    checkpoint_markers=(
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "conditioner.embedders.1.model.token_embedding.weight",
    ),
)
FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (SD15, SDXL)}

# Architectures painters have that no row serves yet: named in the refusal instead of "unknown".
UNSERVED_WIDTHS = {1024: "SD 2.x", 4096: "Flux / SD3-class"}
UNSERVED_CHECKPOINT_MARKERS = {
    "cond_stage_model.model.token_embedding.weight": "SD 2.x",
    "conditioner.embedders.0.model.token_embedding.weight": "SDXL refiner",
    "double_blocks.0.img_attn.qkv.weight": "Flux",
    "model.diffusion_model.double_blocks.0.img_attn.qkv.weight": "Flux",
    "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": "SD3",
}
# Where each kind of file keeps its first text cross-attention key projection ([out, in]: `in` is the width).
CROSS_ATTENTION_SUFFIXES = (
    "attn2.to_k.weight",  # diffusers UNets and ControlNets
    "attn2_to_k.lora_down.weight",  # kohya LoRAs
    "attn2.to_k.lora_A.weight",  # peft LoRAs
    "attn2.to_k.lora.down.weight",  # older diffusers LoRAs
    "attn2.to_k_lora.down.weight",  # diffusers attention-processor LoRAs
)


# Names only SDXL-class files have: the second text encoder's LoRA weights, the added (pooled text + time ids)
# embedding of SDXL ControlNets in diffusers' and the original layout.
SDXL_ONLY_PREFIXES = (
    "lora_te2_", "text_encoder_2.", "add_embedding.", "control_model.label_emb.", "label_emb.",
)  # fmt: skip


class UnservedFamily(ValueError):
    """The file is of an architecture no family row serves; the message names it."""


def family(name: str) -> ModelFamily:
    return FAMILIES[name]


def checkpoint_family(shapes: Shapes) -> ModelFamily | None:
    """The family of an original-layout single-file checkpoint; None if it isn't a checkpoint at all.

    Raises UnservedFamily for checkpoints of architectures no row serves.
    """
    for marker, label in UNSERVED_CHECKPOINT_MARKERS.items():
        if marker in shapes:
            article = "an" if label[0] in "AEIOUS" else "a"  # "an SD 2.x": the S of an initialism reads "ess"
            raise UnservedFamily(f"{article} {label} checkpoint")
    for candidate in FAMILIES.values():
        if all(marker in shapes for marker in candidate.checkpoint_markers):
            return candidate
    return None


def cross_attention_width(shapes: Shapes) -> int | None:
    """The text-feature width a UNet, ControlNet or LoRA file's cross-attention reads, where it says."""
    for name, shape in shapes.items():
        if name.endswith(CROSS_ATTENTION_SUFFIXES) and len(shape) >= 2:
            return int(shape[1])
    return None


def family_by_width(width: int) -> ModelFamily:
    for candidate in FAMILIES.values():
        if candidate.cross_attention_width == width:
            return candidate
    label = UNSERVED_WIDTHS.get(width, f"an unknown model (text features {width} wide)")
    raise UnservedFamily(f"made for {label}")


def adapter_family(shapes: Shapes) -> ModelFamily | None:
    """The family a LoRA or ControlNet file was trained for; None when its names don't say (e.g. a LoRA of
    the text encoder only, or of convolutions only).

    A second text encoder's weights (`lora_te2_`, `text_encoder_2.`) or the pooled-text/size embedding
    (`add_embedding`, `label_emb`: SDXL ControlNets) mean SDXL whatever the cross-attention says.
    """
    if any(name.startswith(SDXL_ONLY_PREFIXES) for name in shapes):
        return SDXL
    width = cross_attention_width(shapes)
    return None if width is None else family_by_width(width)


def describe_mismatch(what: str, found: ModelFamily, wanted: ModelFamily) -> str:
    """One sentence for a file of one family used with a model of another."""
    return f"{what} is made for {found.label} models; the checkpoint in use is {wanted.label}."
