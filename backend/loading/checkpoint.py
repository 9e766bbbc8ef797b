"""Checkpoints: original-layout single files (.safetensors, .ckpt) and diffusers folders, SD1.5 and SDXL.

A single file's family is told by its tensors' names (backend.model_families.checkpoint_family); SD1.5 files
are loaded here, SDXL ones in backend.loading.sdxl, folders of both in backend.loading.diffusers_folder.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from backend.loading.components import (
    CONV_IN_KEY,
    SUPPORTED_IN_CHANNELS,
    VAE_PREFIX,
    PipelineComponents,
    scheduler_config,
    unet_and_vae,
)
from backend.loading.configs import sd_config_dir
from backend.loading.diffusers_folder import load_diffusers_folder
from backend.loading.files import Tensors, finish, has_prefix, read_tensors, strip_prefix
from backend.loading.sdxl import load_sdxl_single_file
from backend.loading.sidecar import sampling_overrides
from backend.loading.text_encoders import load_clip_text_encoder
from backend.loading.tokenizer import load_tokenizer
from backend.model_errors import ModelError
from backend.model_families import FAMILIES, SD15, SDXL, ModelFamily, UnservedFamily, checkpoint_family

__all__ = ["PipelineComponents", "load_checkpoint", "place_checkpoint", "read_checkpoint"]

log = logging.getLogger(__name__)

CLIP_PREFIX = "cond_stage_model.transformer."
SUPPORTED_LABELS = " and ".join(family.label for family in FAMILIES.values())


def load_checkpoint(
    path: Path,
    device: torch.device,
    dtype: torch.dtype,
    config_dir: Path | None = None,
    name: str | None = None,
) -> PipelineComponents:
    """Load a checkpoint file or diffusers folder.

    `config_dir` holds diffusers configs (unet/, vae/, text_encoder*/, scheduler/) for single files, or one
    such folder per family (`sdxl/`, see configs.family_config_dir); by default the shipped configs of the
    file's family, with the inpainting variant picked from the UNet's input channels.
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
    overrides = sampling_overrides(path)  # a broken settings file fails before the weights are read
    if path.is_dir():
        components = load_diffusers_folder(path, dtype, config_dir, name)
    else:
        tensors = read_tensors(path, "Checkpoint")
        family = single_file_family(tensors, path.name)
        if family is SDXL:
            components = load_sdxl_single_file(tensors, path.name, config_dir, name)
        else:
            components = _load_sd15_single_file(tensors, path.name, config_dir, name)
    if not overrides:
        return components
    return replace(components, scheduler_config={**components.scheduler_config, **overrides})


def place_checkpoint(
    components: PipelineComponents, device: torch.device, dtype: torch.dtype
) -> PipelineComponents:
    """The components on the device and dtype they run at, ready for inference."""
    text_encoder_2 = components.text_encoder_2
    return replace(
        components,
        unet=finish(components.unet, device, dtype),
        vae=finish(components.vae, device, dtype),
        text_encoder=finish(components.text_encoder, device, dtype),
        text_encoder_2=None if text_encoder_2 is None else finish(text_encoder_2, device, dtype),
    )


def single_file_family(tensors: Tensors, filename: str) -> ModelFamily:
    """The family whose loader takes this file; files of no family go to SD1.5's, whose checks say why not."""
    try:
        family = checkpoint_family({key: tuple(tensor.shape) for key, tensor in tensors.items()})
    except UnservedFamily as e:
        raise ModelError(f"{filename} is {e}; only {SUPPORTED_LABELS} checkpoints are supported.") from e
    if family is not None:
        return family
    if has_prefix(tensors, "conditioner.embedders."):
        raise ModelError(
            f"{filename} is an incomplete SDXL checkpoint: it lacks one of its two text encoders."
        )
    if has_prefix(tensors, "cond_stage_model.model."):
        raise ModelError(
            f"{filename} is an SD2.x checkpoint; only {SUPPORTED_LABELS} checkpoints are supported."
        )
    return SD15


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


def _load_sd15_single_file(
    tensors: Tensors, filename: str, config_dir: Path | None, name: str
) -> PipelineComponents:
    in_channels = check_sd15_single_file(tensors, filename)
    configs = sd_config_dir(config_dir, inpaint=in_channels == 9)
    unet, vae = unet_and_vae(tensors, configs, filename, SD15, in_channels)
    text_encoder = load_clip_text_encoder(
        strip_prefix(tensors, CLIP_PREFIX), configs / "text_encoder", filename, "SD1.5's CLIP"
    )
    return PipelineComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_tokenizer(),
        scheduler_config=scheduler_config(configs, tensors),
        is_inpaint=in_channels == 9,
        name=name,
    )
