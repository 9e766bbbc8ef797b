"""Inpaint of a selection's working area: the few-step loop with the unmasked area held to the original.

A regular (4-channel) UNet sees the whole image and, after every step, has the latents outside the mask reset
to the original noised to the current level. A dedicated inpainting UNet (9 channels) instead gets the mask
and the masked image's latents as extra input, the way it was trained, and is left to run free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .context import GenerationContext
from .img2img import noised_start
from .loop import InpaintChannels, LatentHold


@dataclass
class InpaintInputs:
    image: torch.Tensor  # 1 x 3 x H x W in [-1, 1]: the working area
    pixel_mask: torch.Tensor  # 1 x 1 x H x W, 1 = redraw
    latent_mask: torch.Tensor  # 1 x 1 x H/8 x W/8, 1 = redraw
    dedicated_unet: bool  # a 9-channel inpainting checkpoint
    from_noise: bool  # strength 1: start from pure noise, not from the noised original


def inpaint(ctx: GenerationContext, inputs: InpaintInputs) -> torch.Tensor:
    """Returns the decoded working area (1 x 3 x H x W, about [-1, 1])."""
    if inputs.dedicated_unet:
        return _inpaint_dedicated(ctx, inputs)
    with ctx.timed("encode"):
        # In the standard memory layout, as the pipelines' repeat() leaves their image latents: the layout of
        # what the held latents are blended from picks the UNet's convolution kernels (float results).
        clean = ctx.encode(inputs.image).contiguous()
        latents, noise = noised_start(ctx, clean)
        if inputs.from_noise:
            latents = noise * ctx.schedule.scheduler.init_noise_sigma
    hold = LatentHold(clean, noise, inputs.latent_mask.to(ctx.dtype))
    latents = ctx.denoise(latents, hold=hold)
    with ctx.timed("decode"):
        return ctx.decode(latents)


def masked_image(image: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """What a 9-channel UNet sees of the image: gray (0) where it should paint, the surroundings elsewhere."""
    return image * (1 - pixel_mask.to(image.dtype))


def _inpaint_dedicated(ctx: GenerationContext, inputs: InpaintInputs) -> torch.Tensor:
    masked = masked_image(inputs.image, inputs.pixel_mask)
    with ctx.timed("encode"):
        # The generator's draws in the pipelines' order: the image's VAE sample (unless starting from noise),
        # the start noise, then the masked image's VAE sample.
        if inputs.from_noise:
            shape = (1, ctx.unet.config.out_channels, *(side // 8 for side in inputs.image.shape[-2:]))
            latents = ctx.randn(shape) * ctx.schedule.scheduler.init_noise_sigma
        else:
            latents, _ = noised_start(ctx, ctx.encode(inputs.image).contiguous())  # (as in `inpaint`)
        masked_latents = ctx.encode(masked)
    channels = InpaintChannels(inputs.latent_mask.to(ctx.dtype), masked_latents)
    latents = ctx.denoise(latents, inpaint_channels=channels)
    with ctx.timed("decode"):
        return ctx.decode(latents)
