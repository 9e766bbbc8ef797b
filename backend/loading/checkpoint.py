"""SD1.5 checkpoints: original-layout single files (.safetensors, .ckpt) and diffusers folders."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from backend.loading.configs import (
    SCHEDULER_CONFIG,
    TEXT_ENCODER_CONFIG,
    UNET_CONFIG,
    read_json,
    sd_config_dir,
)
from backend.loading.files import (
    ModuleT,
    Tensors,
    describe_load_error,
    ensure_materialized,
    finish,
    from_single_file,
    has_prefix,
    read_tensors,
    strip_prefix,
)
from backend.loading.tokenizer import load_tokenizer
from backend.model_errors import ModelError

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
CONV_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
# The first cross-attention key projection: its input width is the text encoder's (768 for SD1.5, 1024 SD2).
CROSS_ATTENTION_KEY = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
SUPPORTED_IN_CHANNELS = {4: "text-to-image", 9: "inpainting"}


@dataclass(frozen=True, eq=False)
class PipelineComponents:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    is_inpaint: bool
    name: str


def load_checkpoint(
    path: Path,
    device: torch.device,
    dtype: torch.dtype,
    config_dir: Path | None = None,
    name: str | None = None,
) -> PipelineComponents:
    """Load a checkpoint file or diffusers folder.

    `config_dir` holds diffusers configs (unet/, vae/, text_encoder/, scheduler/) for single files; by
    default the shipped SD1.5 configs, with the inpainting variant picked from the UNet's input channels.
    """
    return place_checkpoint(read_checkpoint(path, dtype, config_dir, name), device, dtype)


def read_checkpoint(
    path: Path, dtype: torch.dtype, config_dir: Path | None = None, name: str | None = None
) -> PipelineComponents:
    """Build and check a checkpoint on the CPU, in memory this process owns; nothing goes to the device.

    Every way a file can be unusable shows here, so a caller can keep its working model until this succeeds.
    `dtype` is a hint for formats that can be cast while loading; place_checkpoint() casts the rest.
    """
    name = name or path.name
    if path.is_dir():
        return _load_diffusers_folder(path, dtype, config_dir, name)
    return _load_single_file(path, config_dir, name)


def place_checkpoint(
    components: PipelineComponents, device: torch.device, dtype: torch.dtype
) -> PipelineComponents:
    """The components on the device and dtype they run at, ready for inference."""
    return replace(
        components,
        unet=finish(components.unet, device, dtype),
        vae=finish(components.vae, device, dtype),
        text_encoder=finish(components.text_encoder, device, dtype),
    )


def _describe_wrong_file(tensors: Tensors, filename: str) -> str:
    keys = list(tensors)
    if any("lora_" in k for k in keys[:50]):
        return f"{filename} is a LoRA, not a checkpoint: put it in the loras folder."
    if any(k.startswith(("control_model.", "input_hint_block.", "controlnet_")) for k in keys):
        return f"{filename} is a ControlNet, not a checkpoint: put it in the controlnet folder."
    if "encoder.conv_in.weight" in tensors or "decoder.conv_in.weight" in tensors:
        return f"{filename} is a VAE, not a checkpoint: put it in the vae folder."
    return f"{filename} is not an SD1.5 checkpoint (it has no UNet weights)."


def check_sd15_single_file(tensors: Tensors, filename: str) -> int:
    """Refuse non-SD1.5 files with a reason; return the UNet's input channels (4, or 9 for inpainting)."""
    if has_prefix(tensors, "conditioner.embedders."):
        raise ModelError(f"{filename} is an SDXL checkpoint; only SD1.5 checkpoints are supported.")
    if has_prefix(tensors, "cond_stage_model.model."):
        raise ModelError(f"{filename} is an SD2.x checkpoint; only SD1.5 checkpoints are supported.")
    if CONV_IN_KEY not in tensors:
        raise ModelError(_describe_wrong_file(tensors, filename))
    in_channels = int(tensors[CONV_IN_KEY].shape[1])
    if in_channels not in SUPPORTED_IN_CHANNELS:
        raise ModelError(
            f"{filename} has a UNet with {in_channels} input channels; only SD1.5 text-to-image (4) "
            "and inpainting (9) checkpoints are supported."
        )
    if not has_prefix(tensors, VAE_PREFIX) or not has_prefix(tensors, CLIP_PREFIX):
        raise ModelError(
            f"{filename} lacks its VAE or text encoder weights; "
            "only complete SD1.5 checkpoints are supported."
        )
    return in_channels


def _load_single_file(path: Path, config_dir: Path | None, name: str) -> PipelineComponents:
    tensors = read_tensors(path, "Checkpoint")
    in_channels = check_sd15_single_file(tensors, path.name)
    configs = sd_config_dir(config_dir, inpaint=in_channels == 9)
    unet_config = read_json(configs / UNET_CONFIG)
    cross = tensors.get(CROSS_ATTENTION_KEY)
    if cross is not None and cross.shape[1] != unet_config["cross_attention_dim"]:
        raise ModelError(
            f"{path.name} expects text features of width {cross.shape[1]}, SD1.5 uses "
            f"{unet_config['cross_attention_dim']}: it is not an SD1.5 checkpoint."
        )
    # A caller-given config folder has one UNet config; the weights say if this is the inpaint variant.
    overrides = {"in_channels": in_channels} if unet_config["in_channels"] != in_channels else {}

    from diffusers import AutoencoderKL, UNet2DConditionModel

    # Loaded in the file's dtype and cast once by finish(): diffusers' own cast fails on missing weights
    # before they can be reported.
    unet = _from_single_file(UNet2DConditionModel, tensors, configs, "unet", path.name, **overrides)
    vae = _from_single_file(AutoencoderKL, tensors, configs, "vae", path.name)
    text_encoder = load_text_encoder(strip_prefix(tensors, CLIP_PREFIX), configs, path.name)
    del tensors
    return PipelineComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_tokenizer(),
        scheduler_config=read_json(configs / SCHEDULER_CONFIG),
        is_inpaint=in_channels == 9,
        name=name,
    )


def _from_single_file(
    cls: type[ModuleT], tensors: Tensors, configs: Path, subfolder: str, filename: str, **overrides: Any
) -> ModuleT:
    """diffusers' converter and loader, given the tensors already read and a local config (never the hub)."""
    try:
        model = from_single_file(
            cls, tensors, config=str(configs), subfolder=subfolder, local_files_only=True, **overrides
        )
    except ModelError:
        raise
    except Exception as e:  # the converters raise KeyError/RuntimeError/ValueError/TypeError on foreign files
        raise ModelError(
            f"{filename}: its {subfolder} weights don't fit the SD1.5 architecture "
            f"({describe_load_error(e)})."
        ) from e
    ensure_materialized(model, f"{filename} ({subfolder})")
    return model


def load_text_encoder(tensors: Tensors, configs: Path, filename: str) -> CLIPTextModel:
    """CLIP text model from `text_model.*` weights (the original layout needs only its prefix removed).

    Done here rather than through diffusers so missing or mis-shaped weights fail loudly.
    """
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(
        str((configs / TEXT_ENCODER_CONFIG).parent), local_files_only=True
    )
    with init_empty_weights():  # parameters on meta: no time spent on random init; buffers stay real
        model = CLIPTextModel(config)
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
        raise ModelError(f"{filename}: text encoder weights missing ({', '.join(missing[:5])}).")
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelError(
            f"{filename}: the text encoder doesn't fit SD1.5's CLIP ({describe_load_error(e)})."
        ) from e
    return model


def _variant(folder: Path, stem: str) -> str | None:
    """Folders that hold only `*.fp16.safetensors` weights need `variant="fp16"` to load."""
    if (folder / f"{stem}.safetensors").is_file():
        return None
    return "fp16" if (folder / f"{stem}.fp16.safetensors").is_file() else None


def _load_diffusers_folder(
    path: Path, dtype: torch.dtype, config_dir: Path | None, name: str
) -> PipelineComponents:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    # disable_mmap: the weights are read into memory instead of mapped, which a rewrite of the file in place
    # would turn into SIGBUS on the CPU (see owned_safetensors).
    try:
        unet = UNet2DConditionModel.from_pretrained(
            path,
            subfolder="unet",
            torch_dtype=dtype,
            local_files_only=True,
            use_safetensors=True,
            disable_mmap=True,
            variant=_variant(path / "unet", "diffusion_pytorch_model"),
        )
        vae = AutoencoderKL.from_pretrained(
            path,
            subfolder="vae",
            local_files_only=True,
            use_safetensors=True,
            disable_mmap=True,
            variant=_variant(path / "vae", "diffusion_pytorch_model"),
        )
        text_encoder = CLIPTextModel.from_pretrained(
            path / "text_encoder",
            dtype=dtype,
            local_files_only=True,
            use_safetensors=True,
            disable_mmap=True,
            variant=_variant(path / "text_encoder", "model"),
        )
    except Exception as e:  # diffusers/transformers raise OSError/ValueError/EnvironmentError variously
        raise ModelError(
            f"Diffusers folder {path.name} can't be loaded ({e}). It needs unet/, vae/ and text_encoder/ "
            "with .safetensors weights."
        ) from e
    in_channels = unet.config["in_channels"]
    expected_width = read_json(sd_config_dir(config_dir, inpaint=False) / UNET_CONFIG)["cross_attention_dim"]
    if in_channels not in SUPPORTED_IN_CHANNELS or unet.config["cross_attention_dim"] != expected_width:
        raise ModelError(f"Diffusers folder {path.name} is not an SD1.5 model.")
    scheduler = path / SCHEDULER_CONFIG
    if not scheduler.is_file():
        scheduler = sd_config_dir(config_dir, inpaint=in_channels == 9) / SCHEDULER_CONFIG
    return PipelineComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_tokenizer(),
        scheduler_config=read_json(scheduler),
        is_inpaint=in_channels == 9,
        name=name,
    )
