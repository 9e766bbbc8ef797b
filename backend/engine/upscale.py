"""The `upscale` job: enlarge the canvas (or the selection's box) with an upscale model or Lanczos, then
refine it with img2img over tiles at the model family's working size (protocol/upscale.py has the parameters).

1. **Region.** The whole canvas, or the bounding box of the mask's selected pixels (an empty mask is a no-op,
   as for inpaint). Its pixels are composited over white, as img2img's are.
2. **Enlarge** to `factor` times the region (or `size`). Without a model: Lanczos (Pillow). With one
   (backend/loading/upscalers.py): the model runs on source tiles with `MODEL_PAD` pixels of context around
   them, as many passes as reach the size (a 2x model twice for 4x), and each tile's share of the result is
   cut out of its output, resampled with Lanczos where the model's scale isn't the one asked for (a 4x model
   for 2x). The device holds one tile; the host, the enlarged image.
3. **Refine** (unless `refine` is false or the strength runs no step): img2img on the tiles of
   backend/engine/tiles.py, each the family's working side (native side x `resolution`; SD1.5 512, SDXL 1024)
   with an eighth of it as overlap, blended seamlessly into the result as they come. Each tile is exactly an
   img2img of its pixels at their own size (as `EngineSettings.working_size=False` renders), with the job's
   prompt, sampler, steps, strength and cfg, and noise from `tiles.tile_seed(seed, x, y)`: one image that
   fits a tile is bit for bit the img2img of the enlarged image. With a tile ControlNet of the family
   installed and `tile_control` above 0, each tile is guided by it with its own pixels as the hint (as a
   `tile` control of that strength would guide its img2img).

Progress counts the model's tiles, then each refine tile's steps; the job can be cancelled between any two
(and at every step). The result is one RGBA image (alpha 255) of the enlarged size, placed at the region:
its pixels are denser than its bounds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from backend.model_families import SD15
from protocol.registry import pick_controlnet
from protocol.upscale import MAX_UPSCALE_SIDE, UpscaleParam

from . import images, masks
from .context import GenerationContext
from .controlnet import check_family, tile_hint
from .img2img import img2img
from .inpaint import inpaint
from .jobs import EngineInputError, EngineJob, EngineResult, JobCancelled
from .loop import ControlUnit
from .model_choice import ModelChoice, fitting_controlnets
from .modules import model_dtype
from .region import native_region, native_side
from .samplers import denoise_steps, starts_from_noise
from .tiles import Tile, TileGrid, plan_tiles, render_tiles, tile_seed

if TYPE_CHECKING:
    from backend.loading.upscalers import Upscaler, UpscalerCache

    from .engine import Engine

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]

OVERLAP_FRACTION = 8  # the refine tiles overlap by 1/8 of their side (64 px for SD1.5, 128 for SDXL)
MODEL_TILE_OUTPUT = 1024  # about this many output pixels per side of one model tile (device memory bound)
MODEL_MIN_TILE = 32  # source pixels per side of a model tile, at the least
MODEL_PAD = 16  # source pixels of context around a model tile, cut off its output
LANCZOS = "lanczos"  # the upscaler's name in the result's params when no model is used


class Upscalers:
    """The engine's upscale models (backend/loading/upscalers.py, imported on the first upscale job): the
    last one used stays loaded, in host memory in low-VRAM mode (the residency brings it for its pass)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, low_vram: bool = False) -> None:
        self.device, self.dtype, self.low_vram = device, dtype, low_vram
        self._cache: UpscalerCache | None = None

    def get(self, store: Any, name: str) -> Upscaler:
        if self._cache is None:
            from backend.loading.upscalers import UpscalerCache

            home = torch.device("cpu") if self.low_vram else self.device
            self._cache = UpscalerCache(self.device, self.dtype, home)
        return self._cache.get(store, name)


def run_upscale(
    engine: Engine,
    job: EngineJob,
    choice: ModelChoice,
    on_progress: ProgressCallback,
    is_cancelled: CancelCheck,
) -> EngineResult:
    from .engine import _effective_params  # the engine imports this module: not at the top

    params = job.params
    upscale = params.upscale or UpscaleParam()
    if params.controls or job.live:
        raise EngineInputError("An upscale job is not live and takes no controls.")
    timings: dict[str, float] = {}
    box = _region(job)
    run_steps = denoise_steps(params.steps, params.strength) if upscale.refine else 0
    effective = _effective_params(job, choice, run_steps)
    if box is None:
        effective["empty_mask"] = True  # nothing selected: a transparent pixel changes nothing
        return EngineResult(np.zeros((1, 1, 4), dtype=np.uint8), (0, 0, 1, 1), effective, timings)
    x, y, width, height = box
    problem = upscale.size_problem(width, height) or upscale.too_large(width, height, MAX_UPSCALE_SIDE)
    if problem is not None:
        raise EngineInputError(problem)
    size = upscale.result_size(width, height)
    upscaler = None
    if upscale.model is not None:
        start = time.perf_counter()
        upscaler = engine.upscalers.get(engine.models.store, upscale.model)
        timings["load_upscaler"] = time.perf_counter() - start
    passes = _model_passes(upscaler, (width, height), size)
    refine = None
    if run_steps:
        refine = _Refine(engine, job, choice, timings, effective, is_cancelled, size, upscale.tile_control)
    model_tiles = _model_tile_count((width, height), upscaler, passes)
    progress = _Progress(on_progress, model_tiles + (refine.units if refine else 0))
    effective.update(
        upscale_size=list(size),
        upscaler=upscaler.name if upscaler is not None and passes else LANCZOS,
        upscaler_scale=upscaler.scale if upscaler is not None else 1,
        upscaler_passes=passes,
    )

    rgb = images.flatten_on_white(job.canvas[y : y + height, x : x + width])
    start = time.perf_counter()
    if upscaler is not None and passes:
        with engine.residency.using(upscaler.model):
            enlarged = enlarge_with_model(rgb, size, upscaler, passes, is_cancelled, progress.advance)
    else:
        enlarged = images.resize_rgb(rgb, *size)  # Lanczos
    timings["upscale"] = time.perf_counter() - start
    del rgb

    result = np.empty((size[1], size[0], 4), dtype=np.uint8)
    result[..., 3] = 255
    if refine is None:
        result[..., :3] = enlarged
        effective["generation_size"] = list(size)
    else:
        refine.run(enlarged, result[..., :3], progress)
    return EngineResult(result, box, effective, timings)


def _region(job: EngineJob) -> tuple[int, int, int, int] | None:
    """The canvas rectangle to upscale: the whole canvas, or the box of the mask's selected pixels."""
    height, width = job.canvas.shape[:2]
    if job.mask is None:
        return 0, 0, width, height
    try:
        mask = masks.check_mask(job.mask, height, width)
    except ValueError as error:
        raise EngineInputError(str(error)) from None
    return masks.bounding_box(mask)


class _Progress:
    """One bar for the job: the model's tiles, then the refine tiles' steps."""

    def __init__(self, on_progress: ProgressCallback, total: int) -> None:
        self.on_progress = on_progress
        self.total = total
        self.done = 0

    def advance(self, units: int = 1) -> None:
        self.done += units
        self.on_progress(self.done, self.total)

    def within(self, offset: int) -> ProgressCallback:
        """A tile's own step callback, reported after the units before it."""
        return lambda step, total: self.on_progress(offset + step, self.total)


# --- enlarging with a model ---------------------------------------------------------------------------------


def _model_passes(upscaler: Upscaler | None, region: tuple[int, int], size: tuple[int, int]) -> int:
    """How many times the model runs: enough to reach `size` (0 when nothing grows)."""
    ratio = max(size[0] / region[0], size[1] / region[1])
    if upscaler is None or ratio <= 1.0:
        return 0
    return max(1, math.ceil(math.log(ratio) / math.log(upscaler.scale) - 1e-9))


def _model_tile_side(upscaler: Upscaler, passes: int) -> int:
    return max(MODEL_MIN_TILE, MODEL_TILE_OUTPUT // upscaler.scale**passes)


def _plain_spans(length: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(step, length - start)) for start in range(0, length, step)]


def _model_tile_count(region: tuple[int, int], upscaler: Upscaler | None, passes: int) -> int:
    if upscaler is None or not passes:
        return 0
    step = _model_tile_side(upscaler, passes)
    return len(_plain_spans(region[0], step)) * len(_plain_spans(region[1], step))


def enlarge_with_model(
    rgb: np.ndarray,
    size: tuple[int, int],
    upscaler: Upscaler,
    passes: int,
    is_cancelled: CancelCheck,
    on_tile: Callable[[], None] = lambda: None,
    tile: int | None = None,
) -> np.ndarray:
    """`rgb` (h x w x 3 uint8) at `size` (width, height), the model run `passes` times on padded tiles of
    `tile` source pixels (None: about MODEL_TILE_OUTPUT output pixels)."""
    height, width = rgb.shape[:2]
    out_width, out_height = size
    scale = upscaler.scale**passes
    step = tile or _model_tile_side(upscaler, passes)
    out = np.empty((out_height, out_width, 3), dtype=np.uint8)
    for source_y, tile_height in _plain_spans(height, step):
        for source_x, tile_width in _plain_spans(width, step):
            if is_cancelled():
                raise JobCancelled()
            # The output pixels this tile gives, edges on the same rounded grid for every tile (they abut).
            x0, x1 = (round(v * out_width / width) for v in (source_x, source_x + tile_width))
            y0, y1 = (round(v * out_height / height) for v in (source_y, source_y + tile_height))
            left, top = max(0, source_x - MODEL_PAD), max(0, source_y - MODEL_PAD)
            right = min(width, source_x + tile_width + MODEL_PAD)
            bottom = min(height, source_y + tile_height + MODEL_PAD)
            grown = rgb[top:bottom, left:right]
            for _ in range(passes):
                grown = upscaler(grown)
            # Where those output pixels lie in the model's output: source coordinates times its scale.
            box = (
                (x0 * width / out_width - left) * scale,
                (y0 * height / out_height - top) * scale,
                (x1 * width / out_width - left) * scale,
                (y1 * height / out_height - top) * scale,
            )
            out[y0:y1, x0:x1] = _resample(grown, box, (x1 - x0, y1 - y0))
            on_tile()
    return out


def _resample(image: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """The `box` of `image` (in its pixels) at `size`: cut out when it already is that size on the pixel grid,
    else Lanczos (Pillow's filter reaches past the box into the context around it, so tiles match)."""
    left, top, right, bottom = box
    corners = [round(v) for v in box]
    if (
        all(abs(v - r) < 1e-6 for v, r in zip(box, corners, strict=True))
        and (
            corners[2] - corners[0],
            corners[3] - corners[1],
        )
        == size
    ):
        return image[corners[1] : corners[3], corners[0] : corners[2]]
    resized = Image.fromarray(np.ascontiguousarray(image)).resize(
        size, Image.Resampling.LANCZOS, box=(left, top, right, bottom)
    )
    return np.asarray(resized)


# --- refining over tiles ------------------------------------------------------------------------------------


class _Refine:
    """img2img over the tiles of the enlarged image, with the models, prompt and schedule loaded once."""

    def __init__(
        self,
        engine: Engine,
        job: EngineJob,
        choice: ModelChoice,
        timings: dict[str, float],
        effective: dict[str, Any],
        is_cancelled: CancelCheck,
        size: tuple[int, int],
        tile_control: float = 0.0,
    ) -> None:
        self.engine = engine
        self.params = job.params
        self.ctx, self.components = engine._context(
            job, choice, timings, lambda step, total: None, is_cancelled, effective
        )
        side = max(8, round(native_side(self.ctx.unet) * self.params.resolution / 8) * 8)
        self.grid: TileGrid = plan_tiles(size[0], size[1], side, side // OVERLAP_FRACTION)
        self.steps_per_tile = len(self.ctx.schedule)
        self.min_side = engine._min_side(self.ctx.unet)
        self.dedicated = bool(getattr(self.components, "is_inpaint", False)) or (
            self.components.unet.config.in_channels == 9
        )
        self.tile_controlnet = self._tile_controlnet(tile_control, timings)
        effective["tile_controlnet"] = self.tile_controlnet[0] if self.tile_controlnet else None
        effective.update(tiles=len(self.grid), tile_size=side, tile_overlap=self.grid.overlap)
        effective["generation_size"] = [min(side, size[0]), min(side, size[1])]
        self.progress: _Progress | None = None
        self.first_unit = 0  # the progress units before the refine's (the model's tiles)

    def _tile_controlnet(self, strength: float, timings: dict[str, float]) -> tuple[str, Any, float] | None:
        """The family's tile ControlNet (name, model, strength) when one is installed and asked for."""
        if strength <= 0:
            return None
        family = getattr(self.components, "family", SD15)  # stand-in components (tests) are SD1.5 models
        store = self.engine.models.store
        name = pick_controlnet(fitting_controlnets(store, store.list_kind("controlnet"), family), "tile")
        if name is None:
            return None
        start = time.perf_counter()
        model = self.engine.models.controlnet(name)
        timings["load_controlnet"] = time.perf_counter() - start
        check_family(name, model, family)
        return name, model, strength

    @property
    def units(self) -> int:
        return len(self.grid) * self.steps_per_tile

    def run(self, enlarged: np.ndarray, out: np.ndarray, progress: _Progress) -> None:
        self.progress, self.first_unit = progress, progress.done
        render_tiles(enlarged, self.grid, self.render, out, self.ctx.is_cancelled)

    def render(self, pixels: np.ndarray, tile: Tile) -> np.ndarray:
        """img2img of one tile's pixels at their own size (padded to a multiple of 8; a tile below the UNet's
        smallest side is scaled up and back), as the engine's img2img renders a canvas that way."""
        assert self.progress is not None
        engine, params = self.engine, self.params
        height, width = pixels.shape[:2]
        region = native_region(width, height, self.min_side)
        offset = self.first_unit + tile.index * self.steps_per_tile
        ctx = replace(
            self.ctx,
            schedule=engine.samplers.schedule(
                params.sampler,
                dict(self.components.scheduler_config),
                params.steps,
                params.strength,
                engine.device,
            ),
            generator=torch.Generator("cpu").manual_seed(tile_seed(params.seed, tile.x, tile.y)),
            on_progress=self.progress.within(offset),
            controls=self._tile_guidance(region.rgb_to_generation(tile_hint(pixels), fill="zero")),
        )
        engine.conditioner.condition_on_size(
            ctx.guidance, self.components, region.gen_height, region.gen_width
        )
        image = images.to_tensor(region.rgb_to_generation(pixels), engine.device, model_dtype(ctx.vae))
        decoded = self._denoise(ctx, image, region.gen_height, region.gen_width)
        with ctx.timed("decode"):
            return region.rgb_from_generation(images.to_uint8(images.to_unit_float(decoded)))

    def _tile_guidance(self, hint: np.ndarray) -> list[ControlUnit]:
        if self.tile_controlnet is None:
            return []
        _, model, strength = self.tile_controlnet
        tensor = images.control_to_tensor(hint, self.engine.device, model_dtype(model))
        return [ControlUnit(model, tensor, strength)]

    def _denoise(self, ctx: GenerationContext, image: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if not self.dedicated:
            return img2img(ctx, image)
        # An inpainting checkpoint needs its extra inputs even for img2img: a mask over everything.
        full = np.full((height, width), 255, dtype=np.uint8)
        from_noise = starts_from_noise(self.params.strength)
        return inpaint(ctx, self.engine._inpaint_inputs(image, full, True, from_noise))
