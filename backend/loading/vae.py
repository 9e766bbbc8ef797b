"""VAE overrides (standalone SD1.5 VAE files) and TAESD, the tiny preview autoencoder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from backend.loading.configs import family_config_dir, taesd_config
from backend.loading.files import (
    Tensors,
    describe_load_error,
    ensure_materialized,
    finish,
    from_single_file,
    read_tensors,
)
from backend.model_errors import ModelError
from backend.model_families import SD15, ModelFamily

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, AutoencoderTiny

# Files saved from a whole checkpoint or from other tools carry one of these in front of the VAE keys.
VAE_FILE_PREFIXES = ("first_stage_model.", "vae.")
VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def vae_weights(tensors: Tensors, filename: str) -> Tensors:
    """Just the autoencoder's weights, without prefixes, EMA copies or training-loss weights.

    The filtering matters: diffusers converts only when the keys differ from its own, so one stray key in a
    diffusers-named file would send it through the original-layout converter.
    """
    for prefix in VAE_FILE_PREFIXES:
        if any(k.startswith(prefix + "encoder.") for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            break
    weights = {k: v for k, v in tensors.items() if k.startswith(VAE_PARTS)}
    if "encoder.conv_in.weight" not in weights or "decoder.conv_in.weight" not in weights:
        raise ModelError(
            f"{filename} is not a VAE (no encoder/decoder weights). Put VAE files in the vae folder."
        )
    return weights


def load_vae(
    path: Path,
    device: torch.device,
    dtype: torch.dtype,
    config_dir: Path | None = None,
    family: ModelFamily = SD15,
) -> AutoencoderKL:
    """A VAE file in the original layout (`encoder.down.0.block.0...`) or diffusers naming, for a checkpoint
    of `family`: SD1.5 and SDXL VAEs share the architecture but not the latent scale (0.18215, 0.13025),
    which the family's config holds (the file doesn't say)."""
    from diffusers import AutoencoderKL

    weights = vae_weights(read_tensors(path, "VAE"), path.name)
    try:
        vae = from_single_file(
            AutoencoderKL,
            weights,
            config=str(family_config_dir(family, config_dir, inpaint=False)),
            subfolder="vae",
            local_files_only=True,
        )
    except Exception as e:  # the converter raises KeyError/RuntimeError on other architectures
        raise ModelError(
            f"VAE {path.name} doesn't fit the {family.label} VAE ({describe_load_error(e)})."
        ) from e
    ensure_materialized(vae, f"VAE {path.name}")
    return finish(vae, device, dtype)


def taesd_state_dict(encoder: Tensors, decoder: Tensors) -> Tensors:
    """TAESD's published files to AutoencoderTiny keys.

    Encoder keys map 1:1 under `encoder.layers.`; the decoder file starts with a parameter-free clamp at
    index 0 that diffusers doesn't count, so its indices shift down by one.
    """
    state: Tensors = {"encoder.layers." + k: v for k, v in encoder.items()}
    for key, tensor in decoder.items():
        index, _, rest = key.partition(".")
        if not index.isdigit() or int(index) < 1:
            raise ModelError(f"TAESD decoder file has an unexpected key {key!r}.")
        state[f"decoder.layers.{int(index) - 1}.{rest}"] = tensor
    return state


def load_taesd(
    encoder_path: Path,
    decoder_path: Path,
    device: torch.device,
    dtype: torch.dtype,
    config_dir: Path | None = None,
) -> AutoencoderTiny:
    from diffusers import AutoencoderTiny

    state = taesd_state_dict(
        read_tensors(encoder_path, "TAESD encoder"), read_tensors(decoder_path, "TAESD decoder")
    )
    config = taesd_config(config_dir)
    # from_config's annotation adds the (model, unused kwargs) pair that only return_unused_kwargs returns
    model = (
        cast(AutoencoderTiny, AutoencoderTiny.from_config(config))
        if config is not None
        else AutoencoderTiny()
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(
            f"TAESD files {encoder_path.name}/{decoder_path.name} don't match TAESD for SD1.5 ({e}). "
            "Use taesd_encoder.pth and taesd_decoder.pth from madebyollin/taesd."
        ) from e
    return finish(model, device, dtype)
