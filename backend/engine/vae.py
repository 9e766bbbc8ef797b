"""VAE encode/decode between [-1, 1] images and scaled latents (AutoencoderKL or TAESD's AutoencoderTiny)."""

from __future__ import annotations

from typing import Any

import torch

from .modules import model_dtype


def scaling_factor(vae: Any) -> float:
    return float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)


def encode(vae: Any, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Image (N x 3 x H x W in [-1, 1]) -> latents in the UNet's scale.

    AutoencoderKL gives a distribution: we draw from it with the job's generator, as diffusers' pipelines do,
    so that the same seed reproduces their output (and the draw is deterministic per seed anyway).
    """
    output = vae.encode(image.to(dtype=model_dtype(vae)))
    if hasattr(output, "latent_dist"):
        latents = output.latent_dist.sample(generator)
    else:
        latents = output.latents
    return latents * scaling_factor(vae)


def decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> image (N x 3 x H x W, about [-1, 1])."""
    return vae.decode((latents / scaling_factor(vae)).to(dtype=model_dtype(vae)), return_dict=False)[0]
