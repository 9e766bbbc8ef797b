"""img2img: encode the image, noise it to the schedule's first timestep, denoise, decode."""

from __future__ import annotations

import torch

from .context import GenerationContext


def noised_start(ctx: GenerationContext, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(start latents, noise used). The noise is the generator's next draw after the VAE sample."""
    noise = ctx.randn(clean.shape)
    start = ctx.schedule.scheduler.add_noise(clean, noise, ctx.schedule.timesteps[:1])
    return start, noise


def img2img(ctx: GenerationContext, image: torch.Tensor) -> torch.Tensor:
    """image: 1 x 3 x H x W in [-1, 1], H and W multiples of 8 -> decoded image (same shape, ~[-1, 1])."""
    with ctx.timed("encode"):
        clean = ctx.encode(image)
        latents, _ = noised_start(ctx, clean)
    latents = ctx.denoise(latents)
    with ctx.timed("decode"):
        return ctx.decode(latents)
