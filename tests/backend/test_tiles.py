"""backend/engine/tiles.py: where the refine tiles go, the seed each uses, and the seamless blend."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from backend.engine.jobs import JobCancelled
from backend.engine.tiles import Tile, blend_into, plan_tiles, ramp, render_tiles, spans, tile_seed


def test_spans_cover_the_side_with_the_overlap_spread_evenly() -> None:
    assert spans(100, 512, 64) == [(0, 100)]  # fits one tile: the tile is the side
    assert spans(512, 512, 64) == [(0, 512)]
    assert spans(1024, 512, 64) == [(0, 512), (256, 512), (512, 512)]  # 448 steps need 3: spread to 256
    for length in (513, 960, 961, 2000, 8192):
        placed = spans(length, 512, 64)
        assert placed[0][0] == 0 and placed[-1][0] + placed[-1][1] == length
        overlaps = [a + size - b for (a, size), (b, _) in itertools.pairwise(placed)]
        assert min(overlaps) >= 64, (length, placed)
        assert len(spans(length, 512, 64)) == -(-(length - 64) // 448)  # as few tiles as can be
    with pytest.raises(ValueError, match="larger than the overlap"):
        spans(100, 64, 64)


def test_the_grid_knows_each_tiles_overlap_with_the_tiles_before_it() -> None:
    grid = plan_tiles(300, 200, 128, 16)
    assert len(grid) == 3 * 2
    first, second, below = grid.tiles[0], grid.tiles[1], grid.tiles[3]
    assert (first.x, first.y, first.left_overlap, first.top_overlap) == (0, 0, 0, 0)
    assert second.left_overlap == first.x + first.width - second.x > 16 and second.top_overlap == 0
    assert below.top_overlap == first.y + first.height - below.y and below.left_overlap == 0
    assert [tile.index for tile in grid.tiles] == list(range(6))


def test_tile_seeds_are_the_job_seed_at_the_origin_and_differ_elsewhere() -> None:
    assert tile_seed(1234, 0, 0) == 1234
    seeds = {tile_seed(1234, x, y) for x in range(0, 4096, 448) for y in range(0, 4096, 448)}
    assert len(seeds) == 10 * 10
    assert all(0 <= seed < 2**63 for seed in seeds)
    assert tile_seed(2**63 - 1, 448, 0) == tile_seed(2**63 - 1, 448, 0)  # deterministic, in range
    assert tile_seed(5, 448, 0) != tile_seed(6, 448, 0)


def test_ramps_rise_smoothly_over_the_overlap_only() -> None:
    weights = ramp(8, 20)
    assert weights.shape == (20,) and np.all(weights[8:] == 1.0)
    assert 0.0 < weights[0] < 0.05 and 0.95 < weights[7] < 1.0
    assert np.all(np.diff(weights[:8]) > 0)
    assert np.all(ramp(0, 5) == 1.0)


def painting(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap"), [(300, 200, 64, 8), (97, 61, 32, 5), (50, 40, 64, 8)]
)
def test_tiles_that_return_their_input_change_nothing(
    width: int, height: int, tile: int, overlap: int
) -> None:
    """The seam check: with an identity 'model', tiling, overlapping and blending give the image back bit
    for bit (into a result of another layout too: the RGB of an RGBA array)."""
    source = painting(height, width)
    grid = plan_tiles(width, height, tile, overlap)
    result = np.zeros((height, width, 4), dtype=np.uint8)
    seen: list[Tile] = []
    render_tiles(
        source, grid, lambda pixels, tile: pixels.copy(), result[..., :3], lambda: False, seen.append
    )
    assert np.array_equal(result[..., :3], source)
    assert seen == list(grid.tiles)


def test_overlaps_blend_smoothly_between_tiles_and_each_tile_keeps_its_own_middle() -> None:
    """Tiles rendering flat values 0, 250, 0, 250, ...: the seams become ramps (no jump larger than a
    smooth step), and pixels that only one tile covers are that tile's value exactly."""
    width, height, side, overlap = 300, 64, 64, 16
    grid = plan_tiles(width, height, side, overlap)
    values = {tile.index: 250 * (tile.index % 2) for tile in grid.tiles}
    out = np.zeros((height, width, 1), dtype=np.uint8)
    source = np.zeros_like(out)
    render_tiles(
        source, grid, lambda pixels, tile: np.full_like(pixels, values[tile.index]), out, lambda: False
    )
    row = out[10, :, 0].astype(int)
    assert np.abs(np.diff(row)).max() <= 250 * 2 / overlap  # a smoothstep's steepest step over 16 px
    for tile, next_tile in itertools.pairwise(grid.tiles):
        alone = row[tile.x + tile.left_overlap : next_tile.x]
        assert alone.size and np.all(alone == values[tile.index])


def test_blend_into_writes_where_no_tile_was_and_mixes_only_the_overlaps() -> None:
    out = np.full((10, 10, 3), 100, dtype=np.uint8)
    tile = Tile(1, 2, 0, 8, 10, left_overlap=4, top_overlap=0)
    blend_into(out, np.full((10, 8, 3), 200, dtype=np.uint8), tile)
    assert np.all(out[:, :2] == 100) and np.all(out[:, 6:] == 200)
    assert np.all((out[:, 2:6] > 100) & (out[:, 2:6] < 200))
    with pytest.raises(ValueError, match="came back"):
        blend_into(out, np.zeros((9, 8, 3), dtype=np.uint8), tile)


def test_cancelled_between_tiles() -> None:
    source = painting(100, 100)
    grid = plan_tiles(100, 100, 40, 8)
    rendered: list[int] = []

    def render(pixels: np.ndarray, tile: Tile) -> np.ndarray:
        rendered.append(tile.index)
        return pixels

    with pytest.raises(JobCancelled):
        render_tiles(source, grid, render, source.copy(), lambda: len(rendered) >= 2)
    assert rendered == [0, 1]
