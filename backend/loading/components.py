"""What a loaded checkpoint hands the engine, and the parts every family's single-file loader shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.loading.configs import SCHEDULER_CONFIG, UNET_CONFIG, read_json
from backend.loading.files import (
    ModuleT,
    Tensors,
    describe_load_error,
    ensure_materialized,
    from_single_file,
)
from backend.model_errors import ModelError
from backend.model_families import SD15, ModelFamily, cross_attention_width

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

# Original-layout single files (SD1.5 and SDXL alike) keep the UNet and VAE under these prefixes.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CONV_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
SUPPORTED_IN_CHANNELS = {4: "text-to-image", 9: "inpainting"}

# Tensors some single files carry to say they were trained for v-prediction, and with the noise schedule
# rescaled to zero terminal SNR (NoobAI-XL and other v-pred SDXL fine-tunes; ComfyUI reads the same keys).
V_PREDICTION_MARKER = "v_pred"
ZERO_TERMINAL_SNR_MARKER = "ztsnr"


@dataclass(frozen=True, eq=False)
class PipelineComponents:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    is_inpaint: bool
    name: str
    family: ModelFamily = SD15
    # SDXL's second text encoder (OpenCLIP bigG with its projection, for the pooled embedding) and its
    # tokenizer; None for families with one text encoder.
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None


def short_label(family: ModelFamily) -> str:
    """The family's name as the loaders' messages write it ("SD1.5", "SDXL")."""
    return family.label.replace(" ", "")


def scheduler_config(configs: Path, tensors: Tensors | None = None) -> dict[str, Any]:
    """The family's scheduler config, with what a single file's marker tensors say about its training."""
    config = read_json(configs / SCHEDULER_CONFIG)
    if tensors is not None and V_PREDICTION_MARKER in tensors:
        config["prediction_type"] = "v_prediction"
    if tensors is not None and ZERO_TERMINAL_SNR_MARKER in tensors:
        config["rescale_betas_zero_snr"] = True
    return config


def single_file_part(
    cls: type[ModuleT],
    tensors: Tensors,
    configs: Path,
    subfolder: str,
    filename: str,
    family: ModelFamily,
    **overrides: Any,
) -> ModuleT:
    """diffusers' converter and loader, given the tensors already read and a local config (never the hub).

    Loaded in the file's dtype and cast once by finish(): diffusers' own cast fails on missing weights before
    they can be reported.
    """
    label = short_label(family)
    try:
        model = from_single_file(
            cls, tensors, config=str(configs), subfolder=subfolder, local_files_only=True, **overrides
        )
    except ModelError:
        raise
    except Exception as e:  # the converters raise KeyError/RuntimeError/ValueError/TypeError on foreign files
        # A KeyError is the converter looking up a weight the file lacks (SDXL's `label_emb`, for one).
        missing = isinstance(e, KeyError) and e.args
        detail = f"missing weights: {e.args[0]}" if missing else describe_load_error(e, label)
        raise ModelError(
            f"{filename}: its {subfolder} weights don't fit the {label} architecture ({detail})."
        ) from e
    ensure_materialized(model, f"{filename} ({subfolder})", label)
    return model


def unet_and_vae(
    tensors: Tensors, configs: Path, filename: str, family: ModelFamily, in_channels: int
) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    """A single file's UNet and VAE with the family's configs, after checking the UNet reads text features of
    the family's width (a file of another family that got this far is named as such)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_config = read_json(configs / UNET_CONFIG)
    unet_shapes = {k: tuple(v.shape) for k, v in tensors.items() if k.startswith(UNET_PREFIX)}
    width = cross_attention_width(unet_shapes)
    if width is not None and width != unet_config["cross_attention_dim"]:
        label = short_label(family)
        raise ModelError(
            f"{filename} expects text features of width {width}, {label} uses "
            f"{unet_config['cross_attention_dim']}: it is not an {label} checkpoint."
        )
    # A caller-given config folder has one UNet config; the weights say if this is the inpaint variant.
    overrides = {"in_channels": in_channels} if unet_config["in_channels"] != in_channels else {}
    unet = single_file_part(UNet2DConditionModel, tensors, configs, "unet", filename, family, **overrides)
    vae = single_file_part(AutoencoderKL, tensors, configs, "vae", filename, family)
    return unet, vae
