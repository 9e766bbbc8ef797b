"""VAE encode/decode between [-1, 1] images and scaled latents (AutoencoderKL or TAESD's AutoencoderTiny).

**Tiling** (diffusers' own tiled encode/decode of AutoencoderKL: overlapping tiles blended, so memory stays
that of one tile whatever the image's size) is switched on for one call when the whole image ran out of
device memory: the call is repeated tiled (as ComfyUI does) instead of failing the job. A tiled result differs
slightly from the whole-image one (each tile sees only its surroundings), so it is never used where memory
suffices, in low-VRAM mode too (whose results stay identical to the resident ones); the job's result says
when it was (`vae_tiled`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .modules import model_dtype

log = logging.getLogger(__name__)


def scaling_factor(vae: Any) -> float:
    return float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)


def can_tile(vae: Any) -> bool:
    """AutoencoderKL tiles; TAESD (small and fast: the live path's decoder) is never tiled."""
    return hasattr(vae, "use_tiling") and hasattr(vae, "tiled_decode")


@contextmanager
def tiling(vae: Any, on: bool = True) -> Iterator[None]:
    """The VAE's own tiling for the calls inside the block (the model is shared: switched back after)."""
    if not on or not can_tile(vae):
        yield
        return
    before = vae.use_tiling
    vae.use_tiling = True
    try:
        yield
    finally:
        vae.use_tiling = before


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


def release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
