"""SDXL checkpoints in the original single-file layout that painters download.

The UNet (`model.diffusion_model.`) and VAE (`first_stage_model.`) are named as in SD1.5 files and go through
diffusers' converters; the two text encoders sit under `conditioner.embedders.`: OpenAI's CLIP ViT-L in
transformers' names (`0.transformer.`), OpenCLIP's ViT-bigG in its own layout (`1.model.`).
"""

from __future__ import annotations

from pathlib import Path

from backend.loading.components import (
    CONV_IN_KEY,
    SUPPORTED_IN_CHANNELS,
    VAE_PREFIX,
    PipelineComponents,
    scheduler_config,
    unet_and_vae,
)
from backend.loading.configs import family_config_dir
from backend.loading.files import Tensors, has_prefix, strip_prefix
from backend.loading.text_encoders import load_clip_text_encoder, load_open_clip_text_encoder
from backend.loading.tokenizer import load_tokenizer, load_tokenizer_2
from backend.model_errors import ModelError
from backend.model_families import SDXL

CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."


def check_sdxl_single_file(tensors: Tensors, filename: str) -> int:
    """Refuse incomplete SDXL files with a reason; return the UNet's input channels (4, or 9 for inpainting).

    The caller has seen both text encoders (the family's markers).
    """
    if CONV_IN_KEY not in tensors:
        raise ModelError(
            f"{filename} holds SDXL's text encoders but no UNet weights: it is not a complete checkpoint."
        )
    in_channels = int(tensors[CONV_IN_KEY].shape[1])
    if in_channels not in SUPPORTED_IN_CHANNELS:
        raise ModelError(
            f"{filename} has a UNet with {in_channels} input channels; only SDXL text-to-image (4) "
            "and inpainting (9) checkpoints are supported."
        )
    if not has_prefix(tensors, VAE_PREFIX):
        raise ModelError(f"{filename} lacks its VAE weights; only complete SDXL checkpoints are supported.")
    return in_channels


def load_sdxl_single_file(
    tensors: Tensors, filename: str, config_dir: Path | None, name: str
) -> PipelineComponents:
    in_channels = check_sdxl_single_file(tensors, filename)
    configs = family_config_dir(SDXL, config_dir, inpaint=in_channels == 9)
    unet, vae = unet_and_vae(tensors, configs, filename, SDXL, in_channels)
    text_encoder = load_clip_text_encoder(
        strip_prefix(tensors, CLIP_L_PREFIX), configs / "text_encoder", filename, "SDXL's CLIP ViT-L"
    )
    text_encoder_2 = load_open_clip_text_encoder(
        strip_prefix(tensors, OPEN_CLIP_PREFIX), configs / "text_encoder_2", filename, "SDXL's OpenCLIP bigG"
    )
    return PipelineComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_tokenizer(),
        scheduler_config=scheduler_config(configs, tensors),
        is_inpaint=in_channels == 9,
        name=name,
        family=SDXL,
        text_encoder_2=text_encoder_2,
        tokenizer_2=load_tokenizer_2(),
    )
