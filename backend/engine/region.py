"""Which canvas rectangle is generated, at what size, and the mapping between the two.

img2img generates the whole canvas at its own size, padded to a multiple of 8. Inpaint generates the
selection's neighbourhood scaled to a working resolution. Either way a UNet needs a minimum latent size (its
deepest level must stay at least 2x2), so too-small areas are scaled up and the result scaled back down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .images import LATENT_SCALE, resize_gray, resize_rgb


def unet_min_side(unet: Any) -> int:
    """Smallest image side (pixels) the UNet handles: SD1.5 halves latents 3 times, so 8 * 8 * 2 = 128."""
    downsamples = max(len(getattr(unet.config, "down_block_types", ())) - 1, 0)
    return LATENT_SCALE * (2**downsamples) * 2


def _round8(value: float) -> int:
    return max(LATENT_SCALE, round(value / LATENT_SCALE) * LATENT_SCALE)


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
    def scaled(self) -> bool:
        return (self.content_width, self.content_height) != (self.width, self.height)

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

    def rgb_from_generation(self, rgb: np.ndarray) -> np.ndarray:
        """Generation-sized image -> this region at canvas resolution."""
        content = np.ascontiguousarray(rgb[: self.content_height, : self.content_width])
        return resize_rgb(content, self.width, self.height)

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
    """The whole canvas at its own size padded to a multiple of 8; scaled up only below the UNet's minimum."""
    if min(width, height) >= min_side:
        gen_w = math.ceil(width / LATENT_SCALE) * LATENT_SCALE
        gen_h = math.ceil(height / LATENT_SCALE) * LATENT_SCALE
        return Region(0, 0, width, height, width, height, gen_w, gen_h)
    scale = min_side / min(width, height)
    gen_w = max(min_side, _round8(width * scale))
    gen_h = max(min_side, _round8(height * scale))
    return Region(0, 0, width, height, gen_w, gen_h, gen_w, gen_h)


def working_region(x: int, y: int, width: int, height: int, resolution: int, min_side: int) -> Region:
    """A canvas rectangle scaled so its long side is about `resolution` (multiples of 8, each side >=
    min_side)."""
    scale = resolution / max(width, height)
    gen_w = max(min_side, _round8(width * scale))
    gen_h = max(min_side, _round8(height * scale))
    return Region(x, y, width, height, gen_w, gen_h, gen_w, gen_h)
