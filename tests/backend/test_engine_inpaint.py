"""Selection inpaint: only masked pixels change, compute follows the selection, edge cases don't crash."""

from __future__ import annotations

import numpy as np
import pytest

from backend.engine import Engine, EngineInputError, EngineResult, JobCancelled, masks
from protocol.messages import InpaintParam
from tests.backend.test_engine_support import (
    Recorder,
    count_calls,
    job,
    make_canvas,
    make_engine,
    run,
    tiny_parts,
)

pytestmark = pytest.mark.slow


def inpaint_engine(resolution: int = 64) -> Engine:
    return make_engine(inpaint_resolution=resolution)[0]


def assert_outside_untouched(canvas: np.ndarray, mask: np.ndarray, result: EngineResult) -> None:
    x, y, w, h = result.bounds
    layer = result.image
    assert layer.shape == (h, w, 4)
    crop, mask_crop = canvas[y : y + h, x : x + w], mask[y : y + h, x : x + w]
    outside = mask_crop == 0
    assert np.array_equal(layer[..., :3][outside], crop[..., :3][outside])
    assert not layer[..., 3][outside].any()
    placed = masks.place_layer(canvas, layer, result.bounds)
    assert np.array_equal(placed[mask == 0], canvas[mask == 0])  # flattened too
    assert (mask[:y].sum(), mask[y + h :].sum(), mask[:, :x].sum(), mask[:, x + w :].sum()) == (0, 0, 0, 0)


@pytest.mark.parametrize(("width", "height", "seed"), [(53, 37, 0), (70, 45, 1), (33, 61, 2)])
def test_random_masks_leave_outside_bit_identical(width: int, height: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    canvas = make_canvas(width, height, seed=seed, alpha=None)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(3):  # a few soft-edged blobs, as a feathered Krita selection
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(3, 12)
        yy, xx = np.mgrid[0:height, 0:width]
        blob = np.clip((r - np.hypot(xx - cx, yy - cy)) * 60, 0, 255).astype(np.uint8)
        mask = np.maximum(mask, blob)
    result = run(inpaint_engine(), job(canvas, "inpaint", mask, strength=0.75, seed=seed))
    assert_outside_untouched(canvas, mask, result)
    x, y, w, h = result.bounds
    alpha = result.image[..., 3]
    assert (alpha <= mask[y : y + h, x : x + w]).all()  # feathering only ever softens inward
    assert alpha.max() == 255


def test_without_feather_the_mask_is_the_blend() -> None:
    """feather 0: mask 0 keeps the canvas, 255 is fully generated, values between blend linearly."""
    canvas = make_canvas(40, 32, seed=9)
    mask = np.zeros((32, 40), dtype=np.uint8)
    mask[4:28, 6:34] = np.linspace(0, 255, 28).astype(np.uint8)[None, :]
    result = run(inpaint_engine(), job(canvas, "inpaint", mask, inpaint=InpaintParam(feather=0, padding=4)))
    x, y, w, h = result.bounds
    assert np.array_equal(result.image[..., 3], mask[y : y + h, x : x + w])
    assert_outside_untouched(canvas, mask, result)


def test_bounds_are_the_padded_selection_and_work_follows_it() -> None:
    canvas = make_canvas(200, 150, seed=3)
    mask = np.zeros((150, 200), dtype=np.uint8)
    mask[60:80, 100:130] = 255
    engine = inpaint_engine(64)
    with count_calls(tiny_parts().unet) as calls:
        result = run(
            engine, job(canvas, "inpaint", mask, inpaint=InpaintParam(grow=0, feather=4, padding=10))
        )
    assert result.bounds == (90, 50, 50, 40)
    assert result.params["generation_size"] == [64, 48]  # long side scaled to the working resolution
    assert calls[0][-2:] == (6, 8)  # the UNet saw the selection's area only (latents of 48x64)
    assert_outside_untouched(canvas, mask, result)


def test_selection_at_canvas_edge_and_grow() -> None:
    canvas = make_canvas(48, 40, seed=4)
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[30:, 40:] = 255  # bottom-right corner
    result = run(inpaint_engine(), job(canvas, "inpaint", mask, inpaint=InpaintParam(grow=3, padding=8)))
    assert result.bounds == (29, 19, 19, 21)
    grown = masks.grow(mask, 3)
    assert_outside_untouched(canvas, grown, result)
    assert result.image[-1, -1, 3] == 255  # not faded at the canvas border


def test_one_pixel_selection() -> None:
    canvas = make_canvas(40, 40, seed=5)
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[20, 21] = 255
    result = run(inpaint_engine(), job(canvas, "inpaint", mask, strength=1.0))
    assert result.bounds == (0, 0, 40, 40)  # 1 pixel + 32 padding each side, clipped
    assert_outside_untouched(canvas, mask, result)
    x, y = 21 - result.bounds[0], 20 - result.bounds[1]
    assert result.image[y, x, 3] == 255


def test_full_mask_equals_img2img_of_the_crop() -> None:
    canvas = make_canvas(64, 48, seed=6)
    full = np.full((48, 64), 255, dtype=np.uint8)
    engine = make_engine(inpaint_resolution=64, working_size=False)[0]  # img2img at 64x48 too
    inpainted = run(engine, job(canvas, "inpaint", full, strength=0.6, cfg=2.0, negative_prompt="dull"))
    plain = run(engine, job(canvas, "img2img", strength=0.6, cfg=2.0, negative_prompt="dull"))
    assert inpainted.bounds == plain.bounds == (0, 0, 64, 48)
    assert inpainted.image.tobytes() == plain.image.tobytes()


def test_empty_mask_is_an_immediate_no_op() -> None:
    canvas = make_canvas(30, 20)
    with count_calls(tiny_parts().unet) as calls:
        result = run(inpaint_engine(), job(canvas, "inpaint", np.zeros((20, 30), np.uint8)))
    assert calls == []
    assert result.bounds == (0, 0, 1, 1)
    assert result.image.shape == (1, 1, 4) and not result.image[..., 3].any()
    assert result.params["empty_mask"] is True


def test_strength_zero_changes_nothing() -> None:
    canvas = make_canvas(30, 20)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:15] = 255
    with count_calls(tiny_parts().unet) as calls:
        result = run(inpaint_engine(), job(canvas, "inpaint", mask, strength=0.0))
    assert calls == []
    assert np.array_equal(masks.place_layer(canvas, result.image, result.bounds), canvas)


def test_dedicated_inpainting_checkpoint_gets_nine_channels() -> None:
    canvas = make_canvas(48, 48, seed=7)
    mask = np.zeros((48, 48), np.uint8)
    mask[10:30, 12:40] = 255
    engine = inpaint_engine()
    for strength in (0.5, 1.0):
        with count_calls(tiny_parts().inpaint_unet) as calls:
            result = run(
                engine,
                job(canvas, "inpaint", mask, checkpoint="tiny-inpainting.safetensors", strength=strength),
            )
        assert calls and all(shape[1] == 9 for shape in calls)
        assert_outside_untouched(canvas, mask, result)
    # img2img with an inpainting checkpoint works too (a mask over everything)
    result = run(engine, job(canvas, checkpoint="tiny-inpainting.safetensors"))
    assert result.image.shape == (48, 48, 4)


def test_inpaint_is_deterministic_and_cancellable() -> None:
    canvas = make_canvas(40, 40, seed=8)
    mask = np.zeros((40, 40), np.uint8)
    mask[8:24, 8:30] = 200
    engine = inpaint_engine()
    a = run(engine, job(canvas, "inpaint", mask, seed=1)).image
    b = run(engine, job(canvas, "inpaint", mask, seed=1)).image
    c = run(engine, job(canvas, "inpaint", mask, seed=2)).image
    assert a.tobytes() == b.tobytes() != c.tobytes()
    recorder = Recorder(cancel_after=1)
    with pytest.raises(JobCancelled):
        run(engine, job(canvas, "inpaint", mask, steps=8), recorder)
    assert recorder.progress == [(1, 4)]


def test_bad_masks_are_input_errors() -> None:
    canvas = make_canvas(20, 20)
    engine = inpaint_engine()
    with pytest.raises(EngineInputError, match="needs a mask"):
        run(engine, job(canvas, "inpaint"))
    with pytest.raises(EngineInputError, match="canvas is 20x20"):
        run(engine, job(canvas, "inpaint", np.zeros((10, 20), np.uint8)))
    with pytest.raises(EngineInputError, match="mode"):
        run(engine, job(canvas, "outpaint"))
