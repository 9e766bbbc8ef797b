"""Upscale jobs in the engine (backend/engine/upscale.py) on the tiny models: a refine that fits one tile is
img2img of the enlarged image bit for bit, every tile is img2img of its own pixels with its documented seed,
no refine is the enlargement itself, selections, progress per tile and cancelling, SD1.5 and SDXL."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from backend.engine import EngineInputError, JobCancelled
from backend.engine.images import flatten_on_white, resize_rgb
from backend.engine.tiles import plan_tiles, tile_seed
from backend.engine.upscale import enlarge_with_model
from backend.loading.upscalers import load_upscaler
from protocol import UpscaleParam
from protocol.messages import ControlParam
from tests.backend.test_engine_support import (
    FakeStore,
    Recorder,
    count_calls,
    job,
    make_canvas,
    make_engine,
    run,
    tiny_parts,
)
from tests.fixtures.tiny_upscalers import write_compact_x4, write_realesrgan_x2

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
PARAMS: dict[str, Any] = {"prompt": "a harbour, detailed", "steps": 4, "strength": 0.5, "seed": 77}


@dataclass
class UpscaleStore(FakeStore):
    """The engine tests' stand-in store, with an upscale_models folder of real files."""

    root: Path = Path()
    upscale_models: list[str] = field(default_factory=list)

    def resolve(self, kind: str, name: str) -> Path:
        assert kind == "upscale_models" and name in self.upscale_models
        return self.root / name


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> UpscaleStore:
    root = tmp_path_factory.mktemp("upscale_models")
    write_realesrgan_x2(root / "RealESRGAN_x2plus.pth")
    write_compact_x4(root / "compact-x4.safetensors")
    return UpscaleStore(root=root, upscale_models=["RealESRGAN_x2plus.pth", "compact-x4.safetensors"])


def upscale_job(canvas: np.ndarray, mask: np.ndarray | None = None, **upscale: Any) -> Any:
    params = {**PARAMS, **upscale.pop("params", {})}
    return job(canvas, mode="upscale", mask=mask, upscale=UpscaleParam(**upscale), **params)


def img2img_of(image_rgb: np.ndarray, **params: Any) -> np.ndarray:
    """What plain img2img gives for an opaque image at its own size (diffusers' way: working_size off)."""
    reference, _ = make_engine(working_size=False)
    canvas = np.dstack([image_rgb, np.full(image_rgb.shape[:2], 255, dtype=np.uint8)])
    return run(reference, job(canvas, **{**PARAMS, **params})).image


def test_a_refine_that_fits_one_tile_is_img2img_of_the_enlarged_image() -> None:
    engine, _ = make_engine()
    canvas = make_canvas(40, 30, seed=3, alpha=None)  # transparent parts are composited over white first
    result = run(engine, upscale_job(canvas, factor=2.0))
    assert result.image.shape == (60, 80, 4) and result.bounds == (0, 0, 40, 30)
    assert result.params["tiles"] == 1 and result.params["upscaler"] == "lanczos"
    enlarged = resize_rgb(flatten_on_white(canvas), 80, 60)
    assert np.array_equal(result.image, img2img_of(enlarged))


def test_a_refine_with_an_upscale_model_is_img2img_of_the_models_output(store: UpscaleStore) -> None:
    engine, _ = make_engine(store)
    canvas = make_canvas(30, 24, seed=4)
    result = run(engine, upscale_job(canvas, factor=2.0, model="RealESRGAN_x2plus.pth"))
    assert (result.params["upscaler"], result.params["upscaler_scale"], result.params["upscaler_passes"]) == (
        "RealESRGAN_x2plus.pth",
        2,
        1,
    )
    upscaler = load_upscaler(store.root / "RealESRGAN_x2plus.pth", "x2", CPU, torch.float32)
    enlarged = enlarge_with_model(flatten_on_white(canvas), (60, 48), upscaler, 1, lambda: False)
    assert np.array_equal(result.image, img2img_of(enlarged))


def img2img_with_tile_control(image_rgb: np.ndarray, store: FakeStore, strength: float) -> np.ndarray:
    """What plain img2img gives for an opaque image at its own size, guided by a `tile` control of it."""
    reference, _ = make_engine(store, working_size=False)
    canvas = np.dstack([image_rgb, np.full(image_rgb.shape[:2], 255, dtype=np.uint8)])
    control = ControlParam("tile", strength=strength, image="tile")
    request = job(canvas, **{**PARAMS, "controls": [control]})
    request.control_images = {"tile": canvas}
    return run(reference, request).image


def test_a_tile_controlnet_guides_each_refine_tile_with_its_own_pixels() -> None:
    """With a tile ControlNet installed, a refine that fits one tile is img2img of the enlarged image guided
    by a tile control of that image at `tile_control`'s strength; 0 turns it off; none installed: none."""
    store = FakeStore(controlnet=["tiny-scribble.safetensors", "control_v11f1e_sd15_tile.safetensors"])
    engine, models = make_engine(store)
    canvas = make_canvas(40, 30, seed=3)
    enlarged = resize_rgb(flatten_on_white(canvas), 80, 60)
    guided = run(engine, upscale_job(canvas, factor=2.0, tile_control=0.8))
    assert guided.params["tile_controlnet"] == "control_v11f1e_sd15_tile.safetensors"
    assert models.controlnet_calls == ["control_v11f1e_sd15_tile.safetensors"]
    assert np.array_equal(guided.image, img2img_with_tile_control(enlarged, store, 0.8))
    plain = img2img_of(enlarged)
    assert not np.array_equal(guided.image, plain)
    off = run(engine, upscale_job(canvas, factor=2.0, tile_control=0.0))
    assert off.params["tile_controlnet"] is None and np.array_equal(off.image, plain)
    without, _ = make_engine()  # the default store has no tile ControlNet
    absent = run(without, upscale_job(canvas, factor=2.0))
    assert absent.params["tile_controlnet"] is None and np.array_equal(absent.image, plain)


def test_every_tile_is_img2img_of_its_pixels_with_its_own_seed() -> None:
    """Four tiles of 64 px (resolution 0.5 of the tiny model's 128): where only one tile reaches, the result
    is exactly img2img of that tile's pixels with tile_seed(seed, x, y)."""
    engine, _ = make_engine()
    canvas = make_canvas(60, 50, seed=5)
    result = run(engine, upscale_job(canvas, factor=2.0, params={"resolution": 0.5}))
    assert (result.params["tiles"], result.params["tile_size"], result.params["tile_overlap"]) == (4, 64, 8)
    assert result.params["generation_size"] == [64, 64]
    enlarged = resize_rgb(flatten_on_white(canvas), 120, 100)
    grid = plan_tiles(120, 100, 64, 8)
    for tile in grid.tiles:
        alone_x = slice(
            tile.x + tile.left_overlap, min((t.x for t in grid.tiles if t.x > tile.x), default=120)
        )
        alone_y = slice(
            tile.y + tile.top_overlap, min((t.y for t in grid.tiles if t.y > tile.y), default=100)
        )
        expected = img2img_of(np.ascontiguousarray(tile.crop(enlarged)), seed=tile_seed(77, tile.x, tile.y))
        local_x = slice(alone_x.start - tile.x, alone_x.stop - tile.x)
        local_y = slice(alone_y.start - tile.y, alone_y.stop - tile.y)
        assert np.array_equal(result.image[alone_y, alone_x], expected[local_y, local_x]), tile
    again = run(engine, upscale_job(canvas, factor=2.0, params={"resolution": 0.5}))
    assert np.array_equal(again.image, result.image)


@pytest.mark.parametrize("how", ["refine off", "strength 0"])
def test_without_a_refine_the_result_is_the_enlargement_itself(how: str) -> None:
    engine, models = make_engine()
    canvas = make_canvas(50, 40, seed=6)
    upscale: dict[str, Any] = {"refine": False} if how == "refine off" else {"params": {"strength": 0.0}}
    with count_calls(tiny_parts().unet) as calls:
        result = run(engine, upscale_job(canvas, size=[130, 90], factor=None, **upscale))
    assert calls == [] and models.calls == []  # nothing loaded
    assert result.image.shape == (90, 130, 4) and np.all(result.image[..., 3] == 255)
    assert np.array_equal(result.image[..., :3], resize_rgb(flatten_on_white(canvas), 130, 90))


def test_a_selection_upscales_its_box() -> None:
    engine, _ = make_engine()
    canvas = make_canvas(64, 48, seed=7)
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[10:25, 20:44] = 255
    mask[30, 50] = 1  # any selected pixel counts, however faint
    result = run(engine, upscale_job(canvas, mask, factor=2.0, refine=False))
    assert result.bounds == (20, 10, 31, 21)
    assert result.image.shape == (42, 62, 4)
    box = flatten_on_white(canvas[10:31, 20:51])
    assert np.array_equal(result.image[..., :3], resize_rgb(box, 62, 42))
    empty = run(engine, upscale_job(canvas, np.zeros((48, 64), dtype=np.uint8)))
    assert empty.bounds == (0, 0, 1, 1) and empty.params["empty_mask"] is True


def test_progress_counts_each_tiles_steps_and_cancel_stops_at_the_first_tile() -> None:
    engine, _ = make_engine()
    canvas = make_canvas(60, 50, seed=8)
    recorder = Recorder()
    run(engine, upscale_job(canvas, factor=2.0, params={"resolution": 0.5}), recorder)
    # 4 tiles x 2 steps (4 steps at strength 0.5), one bar for the job
    assert recorder.progress == [(step, 8) for step in range(1, 9)]
    cancelling = Recorder(cancel_after=2)
    with count_calls(tiny_parts().unet) as calls, pytest.raises(JobCancelled):
        run(engine, upscale_job(canvas, factor=2.0, params={"resolution": 0.5}), cancelling)
    assert len(calls) == 2 and cancelling.progress == [(1, 8), (2, 8)]


def test_the_model_pass_reports_its_tiles_and_is_cancelled_between_them(store: UpscaleStore) -> None:
    engine, _ = make_engine(store)
    canvas = make_canvas(300, 40, seed=9)  # 2x model tiles of 512 source px: 1; its 4x: 256 px: 2 tiles
    recorder = Recorder()
    result = run(
        engine, upscale_job(canvas, factor=4.0, model="compact-x4.safetensors", refine=False), recorder
    )
    assert result.image.shape == (160, 1200, 4)
    assert recorder.progress == [(1, 2), (2, 2)]
    with pytest.raises(JobCancelled):
        run(engine, upscale_job(canvas, factor=4.0, model="compact-x4.safetensors"), Recorder(cancel_after=1))


def test_unusable_sizes_and_jobs_are_refused() -> None:
    engine, _ = make_engine()
    canvas = make_canvas(16, 16)
    with pytest.raises(EngineInputError, match="must be 1 to 4 times the region's width"):
        run(engine, upscale_job(canvas, size=[100, 32], factor=None))
    wide = np.zeros((8, 2100, 4), dtype=np.uint8)
    with pytest.raises(EngineInputError, match="over the largest upscale result side of 8192"):
        run(engine, upscale_job(wide, factor=4.0))
    with pytest.raises(EngineInputError, match="not live and takes no controls"):
        run(engine, replace(upscale_job(canvas), live=True))


def test_sdxl_refines_tiles_with_its_own_conditioning(tmp_path: Path) -> None:
    from backend.engine import Engine, EngineSettings
    from backend.loading.model_cache import ModelCache
    from backend.model_files import ModelStore
    from tests.fixtures.tiny_sdxl import build_tiny_sdxl

    tiny = build_tiny_sdxl(tmp_path / "models")
    cache = ModelCache(ModelStore(tiny.root), CPU, torch.float32, tiny.shared_config_dir)
    engine = Engine(cache, CPU, torch.float32, EngineSettings(working_size=False, min_side=32))
    params = {**PARAMS, "checkpoint": tiny.checkpoint, "lcm_lora_strength": 0.0, "sampler": "euler"}
    canvas = make_canvas(48, 40, seed=10)
    one_tile = run(engine, job(canvas, mode="upscale", upscale=UpscaleParam(factor=2.0), **params))
    assert one_tile.params["family"] == "sdxl" and one_tile.params["tiles"] == 1
    enlarged = resize_rgb(flatten_on_white(canvas), 96, 80)
    opaque = np.dstack([enlarged, np.full((80, 96), 255, dtype=np.uint8)])
    assert np.array_equal(one_tile.image, run(engine, job(opaque, **params)).image)
    tiled = run(
        engine, job(canvas, mode="upscale", upscale=UpscaleParam(factor=2.0), **params, resolution=0.5)
    )
    assert tiled.params["tiles"] == 4 and tiled.image.shape == (80, 96, 4)
