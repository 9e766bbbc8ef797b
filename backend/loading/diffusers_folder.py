"""Checkpoints saved as diffusers folders (unet/, vae/, text_encoder/, and for SDXL text_encoder_2/).

The family is told by the folder's contents: SDXL has a second text encoder and a UNet conditioned on it
(`addition_embed_type` "text_time"); SD1.5 has neither. The tokenizers are always the shipped ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from backend.loading.components import SUPPORTED_IN_CHANNELS, PipelineComponents, short_label
from backend.loading.configs import SCHEDULER_CONFIG, UNET_CONFIG, family_config_dir, read_json
from backend.loading.tokenizer import load_tokenizer, load_tokenizer_2
from backend.model_errors import ModelError
from backend.model_families import SD15, SDXL, UNSERVED_WIDTHS, ModelFamily

if TYPE_CHECKING:
    from transformers import CLIPTextModelWithProjection

SDXL_ADDITION_EMBEDDING = "text_time"


def _variant(folder: Path, stem: str) -> str | None:
    """Folders that hold only `*.fp16.safetensors` weights need `variant="fp16"` to load."""
    if (folder / f"{stem}.safetensors").is_file():
        return None
    return "fp16" if (folder / f"{stem}.fp16.safetensors").is_file() else None


def load_diffusers_folder(
    path: Path, dtype: torch.dtype, config_dir: Path | None, name: str
) -> PipelineComponents:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    has_second_encoder = (path / "text_encoder_2").is_dir()
    if has_second_encoder and not (path / "text_encoder").is_dir():
        raise ModelError(
            f"Diffusers folder {path.name} is the SDXL refiner (one OpenCLIP text encoder); "
            "only SD1.5 and SDXL base models are supported."
        )
    # disable_mmap: the weights are read into memory instead of mapped, which a rewrite of the file in place
    # would turn into SIGBUS on the CPU (see owned_safetensors).
    common: dict[str, Any] = {"local_files_only": True, "use_safetensors": True, "disable_mmap": True}
    try:
        unet = UNet2DConditionModel.from_pretrained(
            path,
            subfolder="unet",
            torch_dtype=dtype,
            variant=_variant(path / "unet", "diffusion_pytorch_model"),
            **common,
        )
        vae = AutoencoderKL.from_pretrained(
            path, subfolder="vae", variant=_variant(path / "vae", "diffusion_pytorch_model"), **common
        )
        text_encoder = CLIPTextModel.from_pretrained(
            path / "text_encoder", dtype=dtype, variant=_variant(path / "text_encoder", "model"), **common
        )
        text_encoder_2 = _second_text_encoder(path, dtype, common) if has_second_encoder else None
    except Exception as e:  # diffusers/transformers raise OSError/ValueError/EnvironmentError variously
        parts = "unet/, vae/, text_encoder/" + (" and text_encoder_2/" if has_second_encoder else "")
        raise ModelError(
            f"Diffusers folder {path.name} can't be loaded ({e}). It needs {parts} with .safetensors weights."
        ) from e
    family = _folder_family(path.name, unet.config, has_second_encoder)
    in_channels = unet.config["in_channels"]
    configs = family_config_dir(family, config_dir, inpaint=in_channels == 9)
    expected_width = read_json(configs / UNET_CONFIG)["cross_attention_dim"]
    if in_channels not in SUPPORTED_IN_CHANNELS or unet.config["cross_attention_dim"] != expected_width:
        raise ModelError(f"Diffusers folder {path.name} is not an {short_label(family)} model.")
    scheduler = path / SCHEDULER_CONFIG
    if not scheduler.is_file():
        scheduler = configs / SCHEDULER_CONFIG
    return PipelineComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_tokenizer(),
        scheduler_config=read_json(scheduler),
        is_inpaint=in_channels == 9,
        name=name,
        family=family,
        text_encoder_2=text_encoder_2,
        tokenizer_2=load_tokenizer_2() if family is SDXL else None,
    )


def _second_text_encoder(
    path: Path, dtype: torch.dtype, common: dict[str, Any]
) -> CLIPTextModelWithProjection:
    from transformers import CLIPTextModelWithProjection

    folder = path / "text_encoder_2"
    return CLIPTextModelWithProjection.from_pretrained(
        folder, dtype=dtype, variant=_variant(folder, "model"), **common
    )


def _folder_family(folder: str, unet_config: Any, has_second_encoder: bool) -> ModelFamily:
    conditioned_on_pooled_text = unet_config.get("addition_embed_type") == SDXL_ADDITION_EMBEDDING
    if has_second_encoder and conditioned_on_pooled_text:
        return SDXL
    if not has_second_encoder and not conditioned_on_pooled_text:
        unserved = UNSERVED_WIDTHS.get(int(unet_config["cross_attention_dim"]))
        if unserved is not None:
            raise ModelError(
                f"Diffusers folder {folder} is made for {unserved}; only SD1.5 and SDXL models are supported."
            )
        return SD15  # the width is checked against the SD1.5 configs next
    raise ModelError(
        f"Diffusers folder {folder} mixes SDXL and SD1.5 parts (a second text encoder: "
        f"{'yes' if has_second_encoder else 'no'}, a UNet conditioned on it: "
        f"{'yes' if conditioned_on_pooled_text else 'no'}); only SD1.5 and SDXL models are supported."
    )
