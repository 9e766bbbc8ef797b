"""Which canvas rectangle is generated, at what size, and the mapping between the two.

Generations run at the model's **working size**: about (native side x the job's resolution)² pixels of area,
the rectangle's aspect kept, sides multiples of 8. The native side is the model's own (`native_side`: SD1.5
512, SDXL 1024): a 4096 px canvas costs what a 512 px one does, and a small one is scaled up to where the
model draws well, as painters expect. img2img generates the whole canvas that way, inpaint the selection's
neighbourhood. Either way a UNet needs a minimum latent size (its deepest level must stay at least 2x2), so
no side goes below that, and extreme aspect ratios are bounded on the long side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .images import LATENT_SCALE, resize_gray, resize_rgb

# The long side of a working size is at most this many working sides: a 4096x1 canvas must not turn into a
# 131072 px generation (its area alone would say so); its short side is stretched up to the UNet's minimum
# instead and the result squeezed back.
MAX_LONG_SIDE = 2.0


def unet_min_side(unet: Any) -> int:
    """Smallest image side (pixels) the UNet handles: SD1.5 halves latents 3 times, so 8 * 8 * 2 = 128."""
    downsamples = max(len(getattr(unet.config, "down_block_types", ())) - 1, 0)
    return LATENT_SCALE * (2**downsamples) * 2


def native_side(unet: Any) -> int:
    """The image side (pixels) the model was trained at: its latent `sample_size` times the VAE's 8 (SD1.5:
    64 * 8 = 512; SDXL: 128 * 8 = 1024). The one place the working size comes from."""
    size = unet.config.sample_size
    if isinstance(size, (tuple, list)):  # (height, width) in some configs: the area is what matters
        size = math.sqrt(size[0] * size[1])
    return round(size * LATENT_SCALE)


def _round8(value: float) -> int:
    return max(LATENT_SCALE, round(value / LATENT_SCALE) * LATENT_SCALE)


def _floor8(value: float) -> int:
    return max(LATENT_SCALE, math.floor(value / LATENT_SCALE) * LATENT_SCALE)


def working_size(width: int, height: int, side: float, min_side: int) -> tuple[int, int]:
    """The generation size for a width x height rectangle: area about side², aspect kept, multiples of 8;
    the short side at least `min_side`, the long side at most MAX_LONG_SIDE x side (whichever binds, the other
    side follows the aspect; only past both limits is the aspect given up)."""
    long_limit = max(_floor8(MAX_LONG_SIDE * side), min_side)
    scale = side / math.sqrt(width * height)
    scale = max(scale, min_side / min(width, height))
    scale = min(scale, long_limit / max(width, height))
    return (
        min(long_limit, max(min_side, _round8(width * scale))),
        min(long_limit, max(min_side, _round8(height * scale))),
    )


def long_side_size(width: int, height: int, long_side: float, min_side: int) -> tuple[int, int]:
    """The generation size with the long side about `long_side` (multiples of 8, each side >= min_side)."""
    scale = long_side / max(width, height)
    return max(min_side, _round8(width * scale)), max(min_side, _round8(height * scale))


@dataclass(frozen=True)
class Region:
    x: int
    y: int
    width: int  # canvas pixels
    height: int
    content_width: int  # the rectangle's size in generation pixels
    content_height: int
    gen_width: int  # the generation tensor's size: content plus right/bottom padding to a multiple of 8
    gen_height: int

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.width, self.height

    @property
    def reduced_size(self) -> tuple[int, int]:
        """A result's pixel size when it need not be at canvas resolution: per axis the smaller of the canvas
        rectangle and the generated content. Never enlarged here: the client scales pixels into their bounds
        for free, while upscaling a 512 px render to a 4096 px canvas would cost more than the render."""
        return min(self.width, self.content_width), min(self.height, self.content_height)

    def crop(self, array: np.ndarray) -> np.ndarray:
        return array[self.y : self.y + self.height, self.x : self.x + self.width]

    def rgb_to_generation(self, crop: np.ndarray, fill: str = "edge") -> np.ndarray:
        """This region's pixels (an H x W x 3 crop, see `crop`) -> the generation-sized image.

        fill="edge" repeats border pixels into the padding (images); "zero" pads with black (control hints,
        where black means "no guidance").
        """
        content = resize_rgb(np.ascontiguousarray(crop), self.content_width, self.content_height)
        return self._pad(content, fill)

    def gray_to_generation(self, crop: np.ndarray) -> np.ndarray:
        content = resize_gray(np.ascontiguousarray(crop), self.content_width, self.content_height)
        return self._pad(content, "zero")

    def rgb_from_generation(self, rgb: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """Generation-sized image -> this region at canvas resolution, or at `size` (width, height)."""
        width, height = size or (self.width, self.height)
        content = np.ascontiguousarray(rgb[: self.content_height, : self.content_width])
        return resize_rgb(content, width, height)

    def to_generation_point(self, x: float, y: float) -> tuple[float, float]:
        """Canvas pixel coordinates -> generation pixel coordinates."""
        return (
            (x - self.x) * self.content_width / self.width,
            (y - self.y) * self.content_height / self.height,
        )

    def _pad(self, array: np.ndarray, fill: str) -> np.ndarray:
        pad_h, pad_w = self.gen_height - array.shape[0], self.gen_width - array.shape[1]
        if pad_h == 0 and pad_w == 0:
            return array
        pad = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
        if fill == "edge":
            return np.pad(array, pad, mode="edge")
        return np.pad(array, pad, mode="constant")


def native_region(width: int, height: int, min_side: int) -> Region:
    """The whole canvas at its own size padded to a multiple of 8; scaled up only below the UNet's minimum.
    (What diffusers' pipelines do: the engine's `working_size=False` setting, for comparisons with them.)"""
    if min(width, height) >= min_side:
        gen_w = math.ceil(width / LATENT_SCALE) * LATENT_SCALE
        gen_h = math.ceil(height / LATENT_SCALE) * LATENT_SCALE
        return Region(0, 0, width, height, width, height, gen_w, gen_h)
    scale = min_side / min(width, height)
    gen_w = max(min_side, _round8(width * scale))
    gen_h = max(min_side, _round8(height * scale))
    return Region(0, 0, width, height, gen_w, gen_h, gen_w, gen_h)


def scaled_region(x: int, y: int, width: int, height: int, size: tuple[int, int]) -> Region:
    """A canvas rectangle generated at `size` (width, height; multiples of 8, see working_size)."""
    gen_w, gen_h = size
    return Region(x, y, width, height, gen_w, gen_h, gen_w, gen_h)
