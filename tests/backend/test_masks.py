"""Selection masks: grow, inward feathering, bounding boxes, and the layer a selection result becomes."""

from __future__ import annotations

import numpy as np
import pytest

from backend.engine import masks


def naive_grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    padded = np.pad(mask, pixels)
    out = np.zeros_like(mask)
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            out = np.maximum(out, padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]])
    return out


@pytest.mark.parametrize("pixels", [1, 2, 3, 5, 8])
def test_grow_equals_square_dilation(pixels: int) -> None:
    rng = np.random.default_rng(pixels)
    mask = np.zeros((23, 31), dtype=np.uint8)
    mask[rng.integers(0, 23, 6), rng.integers(0, 31, 6)] = rng.integers(1, 256, 6).astype(np.uint8)
    assert np.array_equal(masks.grow(mask, pixels), naive_grow(mask, pixels))


def test_grow_of_empty_and_zero() -> None:
    empty = np.zeros((5, 5), dtype=np.uint8)
    assert not masks.grow(empty, 3).any()
    mask = np.eye(5, dtype=np.uint8) * 255
    assert masks.grow(mask, 0) is mask


def test_feather_is_inward_and_keeps_zero_exact() -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    soft = masks.feather(mask, 8)
    assert not soft[mask == 0].any()  # nothing outside the selection may change
    assert soft[32, 32] == 255  # the core is fully redrawn
    assert 0 < soft[16, 32] < 128  # the edge is soft
    assert (np.diff(soft[32, 16:32].astype(int)) >= 0).all()  # and rises inward


def test_feather_does_not_fade_the_canvas_border() -> None:
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[:, :20] = 255  # touches the top, bottom and left borders
    soft = masks.feather(mask, 6)
    assert (soft[:, 0] == 255).all()
    assert (soft[0, :10] == 255).all()
    assert soft[20, 19] < 128  # the inner edge is feathered


def test_small_selections_keep_a_full_core() -> None:
    one = np.zeros((9, 9), dtype=np.uint8)
    one[4, 4] = 255
    assert np.array_equal(masks.feather(one, 8), one)
    small = np.zeros((40, 40), dtype=np.uint8)
    small[10:22, 10:22] = 255
    assert masks.feather(small, 16)[16, 16] == 255


def test_full_mask_stays_full() -> None:
    full = np.full((30, 50), 255, dtype=np.uint8)
    assert np.array_equal(masks.feather(full, 8), full)


def test_bounding_box_and_expand() -> None:
    mask = np.zeros((20, 30), dtype=np.uint8)
    assert masks.bounding_box(mask) is None
    mask[3:7, 25:30] = 1
    assert masks.bounding_box(mask) == (25, 3, 5, 4)
    assert masks.expand_box((25, 3, 5, 4), 4, 30, 20) == (21, 0, 9, 11)


def test_check_mask() -> None:
    assert masks.check_mask(np.zeros((4, 6, 1), np.uint8), 4, 6).shape == (4, 6)
    with pytest.raises(ValueError, match="needs a mask"):
        masks.check_mask(None, 4, 6)
    with pytest.raises(ValueError, match="but the canvas is"):
        masks.check_mask(np.zeros((6, 4), np.uint8), 4, 6)
    with pytest.raises(ValueError, match="uint8"):
        masks.check_mask(np.zeros((4, 6), np.float32), 4, 6)


def test_selection_layer_blends_linearly_when_placed() -> None:
    rng = np.random.default_rng(0)
    canvas = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    canvas[..., 3] = 255
    generated = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    soft = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    soft[:2] = 0
    soft[-2:] = 255
    layer = masks.selection_layer(canvas, generated, soft)
    assert np.array_equal(layer[..., 3], soft)
    assert np.array_equal(layer[:2, :, :3], canvas[:2, :, :3])  # mask 0: the canvas's own pixels
    placed = masks.place_layer(canvas, layer, (0, 0, 8, 8))
    assert np.array_equal(placed[:2], canvas[:2])
    assert np.array_equal(placed[-2:, :, :3], generated[-2:])
    expected = canvas[..., :3] * (1 - soft[..., None] / 255) + generated * (soft[..., None] / 255)
    assert np.abs(placed[..., :3] - expected).max() <= 1


def test_latent_mask_covers_every_touched_cell() -> None:
    import torch

    pixel = np.zeros((16, 24), dtype=np.uint8)
    pixel[9, 17] = 1  # one faint pixel in cell (1, 2)
    cells = masks.latent_mask(pixel, torch.device("cpu"), torch.float32)
    assert cells.shape == (1, 1, 2, 3)
    assert cells[0, 0].tolist() == [[0, 0, 0], [0, 0, 1]]


def test_selection_preparer_reuses_an_unchanged_selection() -> None:
    preparer = masks.SelectionPreparer()
    mask = np.zeros((30, 30), dtype=np.uint8)
    mask[5:20, 5:20] = 255
    first = preparer.prepare(mask, 2, 4)
    assert preparer.prepare(mask.copy(), 2, 4) is first
    assert first.box == (3, 3, 19, 19)
    assert np.array_equal(first.soft, masks.feather(masks.grow(mask, 2), 4))
    assert preparer.prepare(mask, 2, 5) is not first
    mask[0, 0] = 1  # the painter changed the selection (in place, as a reused buffer might be)
    assert preparer.prepare(mask, 2, 5).box == (0, 0, 22, 22)
    assert preparer.prepare(np.zeros((30, 30), np.uint8), 0, 0).box is None
