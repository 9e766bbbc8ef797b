"""The working size (issue 10, point 4): every generation runs at about the model's native area, whatever the
canvas size; results come back at that size (scaled into their bounds by the client) when it is smaller than
the canvas; a canvas sent scaled down gets its result bounds in document coordinates.

The tiny test models have their own native side (UNet sample_size 16 x 8 = 128 px, minimum side 32), so the
sizes below are the tiny model's counterparts of SD1.5's 512 px.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from backend.engine import Engine, EngineSettings
from backend.engine.accelerated import AcceleratorSettings, bucket_side
from backend.engine.region import MAX_LONG_SIDE, native_side, unet_min_side, working_size
from backend.server import _input_key
from protocol import Bounds, Error, ImageEncoding, ImageFrame, ImageSpec, InpaintParam, JobParams, JobRequest
from tests.backend.server_harness import random_canvas, run
from tests.backend.test_engine_support import make_canvas
from tests.backend.test_engine_support import run as run_engine
from tests.backend.test_taesd_preview import ModelsWithTaesd, preview_job
from tests.fixtures.tiny_models import UNET_CONFIG, TinyModels
from tests.protocol_client import Client, JobReply

pytestmark = pytest.mark.slow

SD15_UNET_CONFIG = Path(__file__).resolve().parents[2] / "backend/configs/sd15/unet/config.json"
TINY_UNET = SimpleNamespace(config=SimpleNamespace(**UNET_CONFIG))
TINY_NATIVE = native_side(TINY_UNET)  # 128
TINY_MIN_SIDE = unet_min_side(TINY_UNET)  # 32


def params(models: TinyModels, **overrides: Any) -> JobParams:
    base: dict[str, Any] = {
        "prompt": "a lighthouse",
        "checkpoint": models.checkpoint,
        "steps": 2,
        "strength": 0.5,
    }
    base.update(overrides)
    return JobParams(**base)


def generation_size(reply: JobReply) -> tuple[int, int]:
    assert reply.result is not None, reply.messages
    width, height = reply.result.params["generation_size"]
    return width, height


def assert_working_area(size: tuple[int, int], side: float, aspect: float) -> None:
    """About side² pixels (the 8 px rounding allows a few percent), the canvas's aspect kept."""
    width, height = size
    assert width % 8 == 0 and height % 8 == 0, size
    assert 0.9 <= width * height / side**2 <= 1.1, (size, side)
    assert abs(width / height / aspect - 1) < 0.05, (size, aspect)


# --- the rule ---------------------------------------------------------------------------------------------


def test_the_native_side_comes_from_the_models_unet_config() -> None:
    sd15 = json.loads(SD15_UNET_CONFIG.read_text())
    assert native_side(SimpleNamespace(config=SimpleNamespace(**sd15))) == 512
    sdxl_like = SimpleNamespace(config=SimpleNamespace(sample_size=128))
    assert native_side(sdxl_like) == 1024
    assert TINY_NATIVE == 128


@pytest.mark.parametrize(
    ("width", "height"), [(1536, 1024), (1024, 1536), (4096, 4096), (512, 512), (256, 256), (1920, 1080)]
)
def test_sd15_working_size_has_the_native_area_and_the_canvas_aspect(width: int, height: int) -> None:
    size = working_size(width, height, 512, 128)
    assert_working_area(size, 512, width / height)
    assert min(size) >= 128


@pytest.mark.parametrize(("width", "height"), [(4096, 1), (1, 4096), (4096, 16), (3000, 7)])
def test_extreme_aspect_ratios_are_bounded(width: int, height: int) -> None:
    gen_w, gen_h = working_size(width, height, 512, 128)
    assert max(gen_w, gen_h) <= MAX_LONG_SIDE * 512
    assert min(gen_w, gen_h) >= 128
    assert gen_w % 8 == 0 and gen_h % 8 == 0
    # the long side stays the long side
    assert (gen_w >= gen_h) == (width >= height)


# --- through the WebSocket --------------------------------------------------------------------------------


def test_a_wide_canvas_renders_at_the_working_size_and_comes_back_at_it(
    server: Any, tiny_models: TinyModels
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = random_canvas(1536, 1024, seed=1)
        sizes = {}
        for resolution in (1.0, 0.5, 2.0):
            reply = await client.run(
                canvas, params(tiny_models, resolution=resolution), bounds=Bounds(7, 9, 1536, 1024)
            )
            size = generation_size(reply)
            assert_working_area(size, TINY_NATIVE * resolution, 1.5)
            assert reply.result is not None and reply.image is not None
            assert reply.result.params["resolution"] == resolution
            # The document rectangle is the canvas; the pixels are the working size's (the client scales).
            assert reply.result.bounds == [7, 9, 1536, 1024]
            assert reply.image.shape == (size[1], size[0], 4)
            assert (reply.result.width, reply.result.height) == size
            sizes[resolution] = size
        area = {r: w * h for r, (w, h) in sizes.items()}
        assert 0.2 < area[0.5] / area[1.0] < 0.3 and 3.5 < area[2.0] / area[1.0] < 4.5
        await client.close()

    run(scenario())


def test_a_huge_canvas_renders_at_the_same_size_as_a_native_one(server: Any, tiny_models: TinyModels) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        native = await client.run(random_canvas(512, 512, seed=2), params(tiny_models))
        assert generation_size(native) == (TINY_NATIVE, TINY_NATIVE)
        huge = await client.run(np.tile(random_canvas(512, 512, seed=2), (8, 8, 1)), params(tiny_models))
        assert generation_size(huge) == generation_size(native)
        assert huge.result is not None and huge.result.bounds == [0, 0, 4096, 4096]
        assert huge.image is not None and huge.image.shape == (TINY_NATIVE, TINY_NATIVE, 4)
        # A canvas below the working size is scaled up to it, and comes back at its own size.
        small = await client.run(random_canvas(64, 48, seed=3), params(tiny_models))
        assert_working_area(generation_size(small), TINY_NATIVE, 64 / 48)
        assert small.image is not None and small.image.shape == (48, 64, 4)
        await client.close()

    run(scenario())


def test_a_4096x1_strip_finishes_at_a_small_working_size(server: Any, tiny_models: TinyModels) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        strip = random_canvas(4096, 1, seed=4)
        for resolution in (1.0, 2.0):
            job = params(tiny_models, resolution=resolution)
            reply = await client.run(strip, job, bounds=Bounds(0, 0, 4096, 1))
            assert reply.result is not None, reply.messages
            assert reply.result.bounds == [0, 0, 4096, 1]
            gen_w, gen_h = generation_size(reply)
            assert gen_w <= MAX_LONG_SIDE * TINY_NATIVE * resolution and gen_h >= TINY_MIN_SIDE
            # Never more pixels than the canvas has along an axis, never upscaled on the server.
            assert reply.image is not None and reply.image.shape == (1, gen_w, 4)
        await client.close()

    # A hang guard, not a timing assertion: the old rule rendered this at 131072x32 for minutes.
    run(scenario(), timeout=120)


def document_rect(rect: list[int], canvas: tuple[int, int], bounds: Bounds) -> list[int]:
    """The expected mapping, written independently: scaled exactly, rounded outward."""
    x, y, w, h = rect
    sx, sy = Fraction(bounds.width, canvas[0]), Fraction(bounds.height, canvas[1])
    left, top = math.floor(x * sx), math.floor(y * sy)
    right, bottom = math.ceil((x + w) * sx), math.ceil((y + h) * sy)
    return [bounds.x + left, bounds.y + top, right - left, bottom - top]


def test_a_downscaled_canvas_gets_document_bounds_for_img2img_and_inpaint(
    server: Any, tiny_models: TinyModels
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = random_canvas(64, 48, seed=5)
        plain = await client.run(canvas, params(tiny_models))
        for bounds in (Bounds(100, 50, 256, 192), Bounds(-30, 11, 100, 75)):
            reply = await client.run(canvas, params(tiny_models), bounds=bounds)
            assert reply.result is not None and reply.result.bounds == bounds.to_list()
            assert plain.image is not None and reply.image is not None
            assert np.array_equal(reply.image, plain.image)  # pixels: the image's

        mask = np.zeros((48, 64), dtype=np.uint8)
        mask[13:29, 21:40] = 255
        inpaint = params(tiny_models, strength=1.0, inpaint=InpaintParam(grow=0, feather=2, padding=3))
        in_canvas = await client.run(canvas, inpaint, mode="inpaint", mask=mask)
        assert in_canvas.result is not None and in_canvas.image is not None
        rect = in_canvas.result.bounds
        for bounds in (Bounds(100, 50, 256, 192), Bounds(-30, 11, 100, 75)):
            reply = await client.run(canvas, inpaint, mode="inpaint", mask=mask, bounds=bounds)
            assert reply.result is not None and reply.image is not None, reply.messages
            expected = document_rect(rect, (64, 48), bounds)
            assert reply.result.bounds == expected
            x, y, w, h = expected
            assert bounds.x <= x and x + w <= bounds.x + bounds.width  # inside the document rectangle
            assert bounds.y <= y and y + h <= bounds.y + bounds.height
            # the layer's pixels are the canvas image's: fewer than its bounds, the client scales them
            assert np.array_equal(reply.image, in_canvas.image)
            assert reply.image.shape[:2] == (rect[3], rect[2]) and (rect[2], rect[3]) != (w, h)
        await client.close()

    run(scenario())


def test_images_must_fit_a_downscaled_canvas_and_no_canvas_exceeds_its_bounds(
    server: Any, tiny_models: TinyModels
) -> None:
    from protocol import ControlParam

    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = random_canvas(64, 48, seed=6)
        too_big = await client.run(canvas, params(tiny_models), bounds=Bounds(0, 0, 63, 48))
        assert isinstance(too_big.final, Error) and too_big.final.code == "bad_message"
        assert "larger than its 'bounds'" in too_big.final.message
        control = ControlParam("scribble", tiny_models.controlnet_scribble, 1.0, image="scribble")
        document_sized = random_canvas(128, 96, seed=7)
        mismatched = await client.run(
            canvas, params(tiny_models, controls=[control]), bounds=Bounds(0, 0, 128, 96),
            controls={"scribble": document_sized},
        )  # fmt: skip
        assert isinstance(mismatched.final, Error) and mismatched.final.code == "bad_message"
        assert "canvas image's size" in mismatched.final.message
        scaled_alike = await client.run(
            canvas, params(tiny_models, controls=[control]), bounds=Bounds(0, 0, 128, 96),
            controls={"scribble": random_canvas(64, 48, seed=7)},
        )  # fmt: skip
        assert scaled_alike.result is not None and scaled_alike.result.bounds == [0, 0, 128, 96]
        await client.close()

    run(scenario())


def test_inpaint_on_a_large_canvas_works_at_the_working_size_and_keeps_the_rest(
    server: Any, tiny_models: TinyModels
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = random_canvas(1024, 768, seed=8)
        mask = np.zeros((768, 1024), dtype=np.uint8)
        yy, xx = np.ogrid[:768, :1024]
        mask[((xx - 500) / 300) ** 2 + ((yy - 400) / 150) ** 2 <= 1] = 255
        mask[(mask == 0) & (np.roll(mask, 1, axis=1) == 255)] = 128  # a soft edge, as Krita feathers
        job = params(tiny_models, strength=1.0, inpaint=InpaintParam(grow=0, feather=4, padding=16))
        reply = await client.run(canvas, job, mode="inpaint", mask=mask, bounds=Bounds(5, 6, 1024, 768))
        assert reply.result is not None and reply.image is not None, reply.messages
        x, y, w, h = reply.result.bounds
        x, y = x - 5, y - 6
        rows, cols = np.nonzero(mask)
        assert (x, y) == (cols.min() - 16, rows.min() - 16)  # the selection's box plus the padding
        assert (w, h) == (cols.max() + 1 + 16 - x, rows.max() + 1 + 16 - y)
        assert_working_area(generation_size(reply), TINY_NATIVE, w / h)
        layer = reply.image
        assert layer.shape == (h, w, 4)  # canvas resolution, not the working size
        outside = mask[y : y + h, x : x + w] == 0
        assert np.array_equal(layer[..., :3][outside], canvas[y : y + h, x : x + w, :3][outside])
        assert not layer[..., 3][outside].any()
        assert layer[..., 3].max() == 255
        await client.close()

    run(scenario())


def test_resolution_takes_part_in_the_live_cache_key(server: Any, tiny_models: TinyModels) -> None:
    canvas = random_canvas(96, 64, seed=9)
    frame = ImageFrame("a", "canvas", ImageEncoding.RGBA8, 96, 64, canvas.tobytes())
    specs = [ImageSpec("canvas", "rgba8", 96, 64)]
    keys = {
        _input_key(
            JobRequest("a", live=True, params=JobParams(resolution=r), images=specs), {"canvas": frame}
        )
        for r in (1.0, 0.5)
    }
    assert len(keys) == 2

    async def scenario() -> None:
        client = await Client.connect(server.url)
        first = await client.run(canvas, params(tiny_models), live=True)
        other = await client.run(canvas, params(tiny_models, resolution=0.5), live=True)
        assert other.result is not None and other.result.params["resolution"] == 0.5
        assert generation_size(other) != generation_size(first)
        await client.close()

    run(scenario())


# --- the accelerated live path at working sizes -----------------------------------------------------------


def test_the_whole_frame_path_buckets_working_sizes_and_gives_the_plain_paths_bytes() -> None:
    """A 300x200 canvas works at 160x104 on the tiny model: the live path buckets that to 192x128 for its
    static shapes and crops back to the same result size; unbucketed it gives the plain path's bytes."""

    def engine(mode: str, **options: Any) -> Engine:
        accelerated = AcceleratorSettings(mode=mode, compile_backend="eager", background=False, **options)
        settings = EngineSettings(accelerated=accelerated)
        return Engine(ModelsWithTaesd(), torch.device("cpu"), torch.float32, settings)

    canvas = make_canvas(300, 200, seed=10)
    expected = working_size(300, 200, TINY_NATIVE, TINY_MIN_SIDE)
    assert expected == (160, 104)
    reference = run_engine(engine("off"), preview_job(canvas, seed=3))
    assert reference.params["generation_size"] == list(expected)
    assert reference.image.shape == (expected[1], expected[0], 4)
    bucketed = run_engine(engine("compile"), preview_job(canvas, seed=3))
    assert bucketed.params["accelerated"] is True and bucketed.params["whole_frame"] is True
    assert bucketed.params["generation_size"] == [bucket_side(expected[0]), bucket_side(expected[1])]
    assert bucketed.bounds == reference.bounds == (0, 0, 300, 200)
    assert bucketed.image.shape == reference.image.shape
    exact = run_engine(engine("compile", bucket=8), preview_job(canvas, seed=3))
    assert exact.params["whole_frame"] is True and exact.params["generation_size"] == list(expected)
    assert exact.image.tobytes() == reference.image.tobytes()
