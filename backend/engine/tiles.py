"""Tiles over a large image: where they go, the seed each draws its noise from, and seamless blending.

An upscale job's refine pass (backend/engine/upscale.py) runs img2img on tiles of the enlarged image at the
model family's working size, one after another, so the device only ever holds one tile. Neighbouring tiles
overlap by at least `overlap` pixels, spread evenly so that no tile hangs over the image's edge. Each tile is
blended into the result as it comes, in row order, with a weight that rises smoothly from 0 to 1 across its
overlap with the tiles before it (the one to its left and those above): the result is continuous across every
seam, and needs no accumulation buffer beside it (host memory stays the image itself). A pixel no earlier
tile covered gets the tile's own value, and a tile that returns exactly its input changes nothing (the blend
of two equal values is that value, bit for bit).

Noise is one seed for the whole image, drawn per tile: the tile at pixel (x, y) of the enlarged image uses
`tile_seed(seed, x, y)`, which is the job's seed itself for the tile at (0, 0), so an image that fits one tile
is exactly an img2img of it with the job's seed, and the same job gives the same image whatever else ran.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .jobs import JobCancelled

SEED_MODULUS = 2**63  # the protocol's seeds are 0..2^63-1
# Odd 64-bit constants (the golden ratio's and a murmur3 finalizer's): distinct tile positions spread over the
# seed range, and the same position always gives the same seed.
_X_STEP = 0x9E3779B97F4A7C15
_Y_STEP = 0xC2B2AE3D27D4EB4F


def tile_seed(seed: int, x: int, y: int) -> int:
    """The seed of the tile whose top-left pixel is (x, y): `seed` at (0, 0); else
    (seed + x * 0x9E3779B97F4A7C15 + y * 0xC2B2AE3D27D4EB4F) mod 2^63."""
    return (seed + x * _X_STEP + y * _Y_STEP) % SEED_MODULUS


@dataclass(frozen=True)
class Tile:
    index: int
    x: int
    y: int
    width: int
    height: int
    # How far the tile to the left and the tile above reach into this one (0 at the image's edge): the blend
    # rises across these.
    left_overlap: int
    top_overlap: int

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.y : self.y + self.height, self.x : self.x + self.width]


@dataclass(frozen=True)
class TileGrid:
    width: int
    height: int
    tile: int  # the largest tile side
    overlap: int  # the least overlap between neighbours
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)


def spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, size) of the tiles along a side of `length` pixels: as few tiles of `tile` pixels as cover it
    with at least `overlap` between neighbours, spread evenly (the first at 0, the last at the far edge)."""
    if tile <= overlap:
        raise ValueError(f"a tile ({tile} px) must be larger than the overlap ({overlap} px)")
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return [(round(index * (length - tile) / (count - 1)), tile) for index in range(count)]


def plan_tiles(width: int, height: int, tile: int, overlap: int) -> TileGrid:
    """The tiles over a width x height image, in row order."""
    columns, rows = spans(width, tile, overlap), spans(height, tile, overlap)
    tiles: list[Tile] = []
    for row, (y, tile_height) in enumerate(rows):
        top = rows[row - 1][0] + rows[row - 1][1] - y if row else 0
        for column, (x, tile_width) in enumerate(columns):
            left = columns[column - 1][0] + columns[column - 1][1] - x if column else 0
            tiles.append(Tile(len(tiles), x, y, tile_width, tile_height, left, top))
    return TileGrid(width, height, tile, overlap, tuple(tiles))


def ramp(overlap: int, length: int) -> np.ndarray:
    """Blend weights along one side of a tile: a smoothstep from near 0 to near 1 over the first `overlap`
    pixels (sampled at pixel centres, so neither end is exactly 0 or 1), then 1."""
    weights = np.ones(length, dtype=np.float32)
    if overlap > 0:
        t = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        weights[:overlap] = t * t * (3.0 - 2.0 * t)
    return weights


def blend_into(out: np.ndarray, rendered: np.ndarray, tile: Tile) -> None:
    """Writes a rendered tile (h x w x C uint8) into `out` at the tile's place, blended over what the tiles
    before it wrote across its top and left overlaps."""
    if rendered.shape[:2] != (tile.height, tile.width):
        raise ValueError(f"a tile came back {rendered.shape[:2]}, expected {(tile.height, tile.width)}")
    region = tile.crop(out)
    top, left = tile.top_overlap, tile.left_overlap
    region[top:, left:] = rendered[top:, left:]  # weight 1: no earlier tile reaches here
    if top == 0 and left == 0:
        return
    weights = ramp(top, tile.height)[:, None] * ramp(left, tile.width)[None, :]
    for rows, columns in ((slice(0, top), slice(None)), (slice(top, None), slice(0, left))):
        under = region[rows, columns].astype(np.float32)
        weight = weights[rows, columns][..., None]
        mixed = under + weight * (rendered[rows, columns].astype(np.float32) - under)
        region[rows, columns] = np.rint(mixed).clip(0, 255).astype(np.uint8)


TileRenderer = Callable[[np.ndarray, Tile], np.ndarray]


def render_tiles(
    source: np.ndarray,
    grid: TileGrid,
    render: TileRenderer,
    out: np.ndarray,
    is_cancelled: Callable[[], bool],
    on_tile: Callable[[Tile], None] = lambda tile: None,
) -> None:
    """Renders every tile of `source` (H x W x C uint8) and blends it into `out` (H x W x C, another array or
    a view of one), in row order; JobCancelled between tiles once is_cancelled() is True."""
    if source.shape[:2] != (grid.height, grid.width) or out.shape[:2] != (grid.height, grid.width):
        raise ValueError("the tile grid, the source and the output must have the same size")
    for tile in grid.tiles:
        if is_cancelled():
            raise JobCancelled()
        blend_into(out, render(np.ascontiguousarray(tile.crop(source)), tile), tile)
        on_tile(tile)
