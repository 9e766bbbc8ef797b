"""Selection masks: validation, grow, inward feathering, bounding boxes, and the latent-resolution mask.

Feathering only ever softens the selection inward: a pixel where the (grown) mask is 0 stays 0, so it comes
back bit-identical. `grow` is how a painter widens the redrawn area on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .images import LATENT_SCALE


def check_mask(mask: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """The mask as H x W uint8 (255 = redraw); raises ValueError for anything else."""
    if mask is None:
        raise ValueError("An inpaint job needs a mask (H x W uint8, 255 = redraw).")
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"The mask must be an H x W uint8 array, got {mask.dtype} {mask.shape}.")
    if mask.shape != (height, width):
        raise ValueError(f"The mask is {mask.shape[1]}x{mask.shape[0]} but the canvas is {width}x{height}.")
    return mask


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x, y, width, height) of the non-zero pixels, or None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def expand_box(
    box: tuple[int, int, int, int], margin: int, width: int, height: int
) -> tuple[int, int, int, int]:
    """The box grown by `margin` on every side, clipped to the canvas."""
    x, y, w, h = box
    x0, y0 = max(0, x - margin), max(0, y - margin)
    x1, y1 = min(width, x + w + margin), min(height, y + h + margin)
    return x0, y0, x1 - x0, y1 - y0


def _sliding_max(array: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Maximum over a window of 2 * radius + 1 along `axis` (zeros beyond the edges), in O(n log radius)."""
    if radius <= 0:
        return array
    window = 2 * radius + 1
    current = np.moveaxis(array, axis, 0)
    current = np.pad(current, [(radius, radius)] + [(0, 0)] * (array.ndim - 1))
    span = 1
    # Doubling: current[i] becomes the max over [i, i + span); two overlapping spans cover the window.
    while span * 2 <= window:
        current = np.maximum(current[:-span], current[span:])
        span *= 2
    n = array.shape[axis]
    result = np.maximum(current[:n], current[window - span : window - span + n])
    return np.moveaxis(result, 0, axis)


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate the mask by `pixels` (square neighbourhood; soft values spread as their maximum)."""
    if pixels <= 0:
        return mask
    box = bounding_box(mask)
    if box is None:
        return mask
    # Only the selection's neighbourhood can change: work there, not on the whole (maybe 4k) canvas.
    x, y, w, h = expand_box(box, pixels, mask.shape[1], mask.shape[0])
    window = mask[y : y + h, x : x + w]
    grown = _sliding_max(_sliding_max(window, pixels, 0), pixels, 1)
    out = mask.copy()
    out[y : y + h, x : x + w] = grown
    return out


MAX_FEATHER_STEPS = 16  # erosion passes per feather; wider feathers run on a coarser grid


def _erode(inside: np.ndarray, square: bool) -> np.ndarray:
    """One erosion step; beyond the array counts as inside, so the canvas border does not erode."""
    p = np.pad(inside, 1, constant_values=True)
    out = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    if square:
        out &= p[:-2, :-2] & p[:-2, 2:] & p[2:, :-2] & p[2:, 2:]
    return out


def _depth(inside: np.ndarray, limit: int) -> np.ndarray:
    """How many erosions each pixel survives, up to `limit`: its distance into the selection.

    Alternating square and cross steps makes octagonal distance contours, close to round ones.
    """
    depth = np.zeros(inside.shape, dtype=np.float32)
    current = inside
    for step in range(limit):
        depth += current
        eroded = _erode(current, square=step % 2 == 1)
        if np.array_equal(eroded, current):  # nothing left to erode: the rest survives every pass
            depth += current * (limit - step - 1)
            break
        current = eroded
    return depth


def feather(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Soften the selection's edge over about `pixels` inward; pixels that are 0 stay exactly 0.

    Each selected pixel is weighted by its distance into the selection over the feather width, so the edge
    ramps up from 0. Where the selection is thinner than the ramp (a small blob, a thin stroke) the width
    shrinks to the local thickness, so every part keeps a fully redrawn core. The canvas border counts as
    inside: a selection that touches it is not faded there.
    """
    box = bounding_box(mask)
    if box is None or pixels <= 0:
        return mask
    x, y, w, h = expand_box(box, 1, mask.shape[1], mask.shape[0])
    window = mask[y : y + h, x : x + w]
    grid = -(-pixels // MAX_FEATHER_STEPS)  # coarse grid cell for wide feathers
    inside = window > 0
    if inside.all():
        return mask  # the selection has no edge inside the canvas: nothing to soften
    if grid > 1:
        pad = ((0, -h % grid), (0, -w % grid))
        blocks = np.pad(inside, pad, mode="edge")
        cells = blocks.reshape(blocks.shape[0] // grid, grid, blocks.shape[1] // grid, grid)
        inside = np.asarray(cells.all(axis=(1, 3)))  # an array (stubs allow a scalar for any axis)
    limit = -(-pixels // grid)
    depth = _depth(inside, limit)
    # Local thickness: the deepest point nearby; thin parts ramp over their own half-width.
    thickness = _sliding_max(_sliding_max(depth, limit, 0), limit, 1)
    ramp = depth / np.maximum(np.minimum(thickness, limit), 1)
    if grid > 1:
        ramp = np.asarray(
            Image.fromarray(ramp).resize(
                (ramp.shape[1] * grid, ramp.shape[0] * grid), Image.Resampling.BILINEAR
            )
        )[:h, :w]
    out = mask.copy()
    out[y : y + h, x : x + w] = np.round(window * np.clip(ramp, 0, 1)).astype(np.uint8)
    return out


def latent_mask(pixel_mask: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """1 x 1 x H/8 x W/8 binary mask: a latent cell is redrawn if any of its 8x8 pixels is (even slightly)."""
    selected = torch.from_numpy((pixel_mask > 0).astype(np.float32))[None, None]
    cells = torch.nn.functional.max_pool2d(selected, LATENT_SCALE)
    return cells.to(device=device, dtype=dtype)


def pixel_mask_tensor(pixel_mask: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """1 x 1 x H x W binary mask (1 where the mask is non-zero)."""
    return torch.from_numpy((pixel_mask > 0).astype(np.float32))[None, None].to(device=device, dtype=dtype)


def selection_layer(canvas_rgba: np.ndarray, generated_rgb: np.ndarray, soft_mask: np.ndarray) -> np.ndarray:
    """The layer to place over the canvas: generated colour where the mask is non-zero, alpha = the mask.

    Placed with normal alpha blending it gives canvas * (1 - m) + generated * m: the mask's linear blend.
    Where the mask is 0 the layer is transparent and carries the canvas's own RGB, bit for bit, so either way
    of reading it (flattened, or RGB alone) leaves those pixels untouched.
    """
    layer = np.empty((*canvas_rgba.shape[:2], 4), dtype=np.uint8)
    layer[..., :3] = np.where(soft_mask[..., None] > 0, generated_rgb, canvas_rgba[..., :3])
    layer[..., 3] = soft_mask
    return layer


def place_layer(canvas_rgba: np.ndarray, layer: np.ndarray, bounds: tuple[int, int, int, int]) -> np.ndarray:
    """The canvas with `layer` placed at `bounds` by normal alpha blending (what the painting app does).

    For checking results; canvas alpha is kept, only colour is blended (the layer sits over an opaque paint).
    """
    x, y, w, h = bounds
    out = canvas_rgba.copy()
    under = out[y : y + h, x : x + w, :3].astype(np.uint32)
    alpha = layer[..., 3:4].astype(np.uint32)
    blended = (layer[..., :3].astype(np.uint32) * alpha + under * (255 - alpha) + 127) // 255
    out[y : y + h, x : x + w, :3] = blended.astype(np.uint8)
    return out


@dataclass
class PreparedSelection:
    box: tuple[int, int, int, int] | None  # bounding box of the grown mask; None when nothing is selected
    soft: np.ndarray  # grown and feathered mask, canvas-sized


class SelectionPreparer:
    """Grow + feather with a one-entry cache: live painting sends the same selection with every frame, and
    preparing a large one costs tens of milliseconds while comparing it costs a few."""

    def __init__(self) -> None:
        self._key: tuple[int, int] | None = None
        self._mask: np.ndarray | None = None
        self._prepared: PreparedSelection | None = None

    def prepare(self, mask: np.ndarray, grow_pixels: int, feather_pixels: int) -> PreparedSelection:
        key = (grow_pixels, feather_pixels)
        if (
            self._prepared is not None
            and self._key == key
            and self._mask is not None
            and self._mask.shape == mask.shape
            and np.array_equal(self._mask, mask)
        ):
            return self._prepared
        grown = grow(mask, grow_pixels)
        box = bounding_box(grown)
        prepared = PreparedSelection(box, feather(grown, feather_pixels) if box is not None else grown)
        self._key, self._mask, self._prepared = key, mask.copy(), prepared
        return prepared
