"""The Engine: turns an EngineJob into an EngineResult using the loaded models (one job at a time)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from backend.model_errors import ModelError
from backend.model_families import SD15
from protocol.messages import JobParams
from protocol.registry import CONTROL_IMAGE, MODES, SAMPLERS, UPSCALE

from . import images, masks, references, regions
from .accelerated import Accelerator, AcceleratorSettings
from .accelerated.denoiser import AcceleratedPredictor
from .accelerated.frame import FramePlan, LiveFrames, plan_frame
from .accelerated.host import HostStaging
from .accelerated.vae_calls import AcceleratedTaesd, is_tiny_autoencoder
from .annotate import Annotator
from .conditioning import Conditioner
from .context import GenerationContext
from .controlnet import build_controls
from .img2img import img2img
from .inpaint import InpaintInputs, inpaint
from .jobs import EngineInputError, EngineJob, EngineResult, JobCancelled
from .model_choice import Components, ModelChoice, ModelSource, choose_models, load_components
from .modules import model_dtype
from .prompts import PromptCache
from .references import References
from .region import (
    Region,
    long_side_size,
    native_region,
    native_side,
    scaled_region,
    unet_min_side,
    working_size,
)
from .residency import Residency
from .samplers import SamplerFactory, denoise_steps, starts_from_noise
from .upscale import Upscalers, run_upscale

log = logging.getLogger(__name__)
ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


@dataclass
class EngineSettings:
    # Generations run at the model's working size: about (native side x params.resolution)² pixels, the
    # native side being the model's own (region.native_side: SD1.5 512). False: img2img renders the canvas
    # at its own size instead, as diffusers' pipelines do (for comparisons with them at any size).
    working_size: bool = True
    # A fixed long side (times params.resolution) for inpaint's working area instead of the working size
    # (tests and benches that pin it); None: the working size.
    inpaint_resolution: int | None = None
    prompt_cache_size: int = 64
    min_side: int | None = None  # smallest generation side in pixels; None: the least the UNet can take
    # The accelerated path for live jobs; its `mode` is the server's --accelerate (ServerConfig.accelerate):
    # "auto" = compiled + CUDA graphs on CUDA, eager elsewhere; "off"; "compile"; "cuda_graphs" (graphs of the
    # eager UNet: no compile wait). Final renders always run the plain path.
    accelerated: AcceleratorSettings = field(default_factory=AcceleratorSettings)
    preview_taesd: bool = True  # live jobs decode with the preview decoder (TAESD) when its files are present
    # Models stay in host memory and come to the device per phase (engine/residency.py); for 6-8 GB cards.
    # The model source must then keep them on the CPU (ModelCache's device), and the accelerated path is off.
    low_vram: bool = False


class Engine:
    def __init__(
        self,
        models: ModelSource,
        device: torch.device,
        dtype: torch.dtype,
        settings: EngineSettings | None = None,
    ) -> None:
        self.models = models
        self.device = torch.device(device)
        self.dtype = dtype
        self.settings = settings or EngineSettings()
        self.residency = Residency(self.device, enabled=self.settings.low_vram)
        self._resident_for: int | None = None  # id of the components whose models the residency moves
        self.conditioner = Conditioner(
            PromptCache(self.settings.prompt_cache_size),
            self.device,
            self.residency,
            embeddings=getattr(models, "embedding", None),  # optional in a model source, like `taesd`
        )
        self.prompts = self.conditioner.prompts
        self.samplers = SamplerFactory()
        self.selections = masks.SelectionPreparer()
        self.accelerator = Accelerator(self.settings.accelerated, self.device)
        self.staging = HostStaging(self.device)
        self.frames = LiveFrames(self.accelerator, self.staging)
        # (checkpoint name, id of its UNet) that the accelerator's slots belong to
        self._accelerated_for: tuple[str, int] | None = None
        # per family: TAESD files that could not be loaded (that family's live jobs use the VAE)
        self._taesd_errors: dict[str, str] = {}
        self.annotator = Annotator(models, self.device, dtype)  # control_image jobs (engine/annotate.py)
        self.upscalers = Upscalers(self.device, dtype, self.settings.low_vram)  # upscale jobs (upscale.py)
        self.references = References(models, self.device, dtype, self.residency)  # engine/references.py

    def run(self, job: EngineJob, on_progress: ProgressCallback, is_cancelled: CancelCheck) -> EngineResult:
        """Run one job. Raises JobCancelled at a step boundary once is_cancelled() is True, EngineInputError
        for unusable inputs and ModelError subclasses (backend.model_errors) for models that can't be found or
        loaded. `job.models` is the choice resolved when the job arrived; None: it is resolved here.
        """
        started = time.perf_counter()
        _check_job(job)
        if job.mode == CONTROL_IMAGE:
            return self.annotator.run(job)  # a control layer made from the canvas: no generation
        choice = job.models or choose_models(self.models.store, job.params)
        seeds = job.params.seeds
        rendered: list[EngineResult] = []
        with torch.inference_mode(), self._models_changed_by(job):
            # A batch is its images rendered one after another, each exactly as its own batch-1 job would be
            # (seed + i, all else equal): a painter who keeps variation 3 must get it back from its seed.
            # Stacking them into one UNet call would save some GPU time, but batched kernels may sum in
            # another order, and nothing would then promise bit-equal images.
            for index, seed in enumerate(seeds):
                if index and is_cancelled():
                    raise JobCancelled()  # before the next image's encode, not only at its first step
                one = replace(job, params=replace(job.params, seed=seed))
                progress = _batch_progress(on_progress, index, len(seeds))
                if job.mode == "img2img":
                    rendered.append(self._img2img(one, choice, progress, is_cancelled))
                elif job.mode == UPSCALE:
                    rendered.append(run_upscale(self, one, choice, progress, is_cancelled))
                else:
                    rendered.append(self._inpaint(one, choice, progress, is_cancelled))
        result = _combine(rendered)
        result.params["seeds"] = seeds
        result.timings["total"] = time.perf_counter() - started
        return result

    @contextmanager
    def _models_changed_by(self, job: EngineJob) -> Iterator[None]:
        """Reference images install adapters into the shared UNet for the job's duration: the job holds the
        models against a background compile, and puts the UNet back before it lets go."""
        if not job.params.references:
            yield
            return
        with self.accelerator.models_held():
            try:
                yield
            finally:
                self.references.release()

    # --- modes ---------------------------------------------------------------------------------------------

    def _img2img(
        self, job: EngineJob, choice: ModelChoice, on_progress: ProgressCallback, is_cancelled: CancelCheck
    ) -> EngineResult:
        height, width = job.canvas.shape[:2]
        params = job.params
        timings: dict[str, float] = {}
        run_steps = denoise_steps(params.steps, params.strength)
        effective = _effective_params(job, choice, run_steps)
        if run_steps == 0:
            # Strength 0: the canvas itself, alpha included, without loading or running anything.
            return EngineResult(job.canvas.copy(), (0, 0, width, height), effective, timings)
        ctx, components = self._context(job, choice, timings, on_progress, is_cancelled, effective)
        unpadded = self._img2img_region(width, height, ctx.unet, params)
        self._condition_on_size(ctx, components, unpadded)
        region = self._bucketed(unpadded, ctx)
        self._add_controls(ctx, job, choice, region, effective, components)
        self._add_regions(ctx, job, choice, region, effective, components)
        rgb = region.rgb_to_generation(images.flatten_on_white(job.canvas))  # the region is the whole canvas
        dedicated = _dedicated_inpaint(components)
        # An inpainting checkpoint needs its extra inputs even for img2img: a mask over everything.
        full = np.full((region.gen_height, region.gen_width), 255, dtype=np.uint8) if dedicated else None
        from_noise = dedicated and starts_from_noise(params.strength)
        plan = self._frame_plan(ctx, False, dedicated, from_noise)
        effective["whole_frame"] = plan is not None
        # A canvas larger than the working size comes back at the working size (the client scales it into
        # the bounds); a smaller one at its own size.
        size = region.reduced_size
        if plan is not None:
            out = region.rgb_from_generation(self.frames.run(ctx, plan, rgb, params.seed, full), size)
        else:
            image = self._to_tensor(rgb, ctx)
            if full is not None:
                decoded = inpaint(ctx, self._inpaint_inputs(image, full, True, from_noise))
            else:
                decoded = img2img(ctx, image)
            with ctx.timed("decode"):
                out = region.rgb_from_generation(self._to_uint8(decoded, ctx), size)
        effective["generation_size"] = [region.gen_width, region.gen_height]
        return EngineResult(images.with_alpha(out), region.bounds, effective, timings)

    def _inpaint(
        self, job: EngineJob, choice: ModelChoice, on_progress: ProgressCallback, is_cancelled: CancelCheck
    ) -> EngineResult:
        canvas = job.canvas
        height, width = canvas.shape[:2]
        params = job.params
        timings: dict[str, float] = {}
        try:
            mask = masks.check_mask(job.mask, height, width)
        except ValueError as error:
            raise EngineInputError(str(error)) from None
        start = time.perf_counter()
        selection = self.selections.prepare(mask, params.inpaint.grow, params.inpaint.feather)
        box, soft = selection.box, selection.soft
        run_steps = denoise_steps(params.steps, params.strength)
        effective = _effective_params(job, choice, run_steps)
        if box is None:
            # Nothing selected, nothing to redraw: a single transparent pixel changes nothing where it lands.
            effective["empty_mask"] = True
            return EngineResult(np.zeros((1, 1, 4), dtype=np.uint8), (0, 0, 1, 1), effective, timings)
        bounds = masks.expand_box(box, params.inpaint.padding, width, height)
        timings["mask"] = time.perf_counter() - start
        x, y, w, h = bounds
        canvas_crop = canvas[y : y + h, x : x + w]
        soft_crop = soft[y : y + h, x : x + w]
        if run_steps == 0:
            layer = masks.selection_layer(canvas_crop, canvas_crop[..., :3], soft_crop)
            return EngineResult(layer, bounds, effective, timings)

        ctx, components = self._context(job, choice, timings, on_progress, is_cancelled, effective)
        unpadded = self._inpaint_region(bounds, ctx.unet, params)
        self._condition_on_size(ctx, components, unpadded)
        region = self._bucketed(unpadded, ctx)
        self._add_controls(ctx, job, choice, region, effective, components)
        self._add_regions(ctx, job, choice, region, effective, components)
        rgb = region.rgb_to_generation(images.flatten_on_white(canvas_crop))
        gen_mask = region.gray_to_generation(soft_crop)
        dedicated = _dedicated_inpaint(components)
        from_noise = starts_from_noise(params.strength)
        plan = self._frame_plan(ctx, True, dedicated, from_noise)
        effective["whole_frame"] = plan is not None
        if plan is not None:
            generated = region.rgb_from_generation(self.frames.run(ctx, plan, rgb, params.seed, gen_mask))
        else:
            image = self._to_tensor(rgb, ctx)
            decoded = inpaint(ctx, self._inpaint_inputs(image, gen_mask, dedicated, from_noise))
            with ctx.timed("decode"):
                generated = region.rgb_from_generation(self._to_uint8(decoded, ctx))
        layer = masks.selection_layer(canvas_crop, generated, soft_crop)
        effective["generation_size"] = [region.gen_width, region.gen_height]
        return EngineResult(layer, bounds, effective, timings)

    # --- shared preparation --------------------------------------------------------------------------------

    def _min_side(self, unet: Any) -> int:
        return self.settings.min_side or unet_min_side(unet)

    def _img2img_region(self, width: int, height: int, unet: Any, params: JobParams) -> Region:
        """The whole canvas at the model's working size (or at its own size, see EngineSettings)."""
        min_side = self._min_side(unet)
        if not self.settings.working_size:
            return native_region(width, height, min_side)
        side = native_side(unet) * params.resolution
        return scaled_region(0, 0, width, height, working_size(width, height, side, min_side))

    def _inpaint_region(self, bounds: tuple[int, int, int, int], unet: Any, params: JobParams) -> Region:
        """The selection's padded box at the working size; its pixels come back at canvas resolution."""
        x, y, w, h = bounds
        min_side = self._min_side(unet)
        if self.settings.inpaint_resolution is not None:
            size = long_side_size(w, h, self.settings.inpaint_resolution * params.resolution, min_side)
        else:
            size = working_size(w, h, native_side(unet) * params.resolution, min_side)
        return scaled_region(x, y, w, h, size)

    def _inpaint_inputs(
        self, image: torch.Tensor, gen_mask: np.ndarray, dedicated: bool, from_noise: bool
    ) -> InpaintInputs:
        return InpaintInputs(
            image=image,
            pixel_mask=masks.pixel_mask_tensor(gen_mask, self.device, image.dtype),
            latent_mask=masks.latent_mask(gen_mask, self.device, image.dtype),
            dedicated_unet=dedicated,
            from_noise=from_noise,
        )

    def _add_controls(
        self,
        ctx: GenerationContext,
        job: EngineJob,
        choice: ModelChoice,
        region: Region,
        effective: dict[str, Any],
        components: Components,
    ) -> None:
        if not job.params.controls:
            return
        height, width = job.canvas.shape[:2]
        with ctx.timed("control"):
            units, names = build_controls(
                self.models,
                job.params.controls,
                job.control_images,
                (width, height),
                region,
                len(ctx.schedule),
                self.device,
                getattr(components, "family", SD15),  # stand-in components (tests) are SD1.5 models
                chosen=choice.controlnets,
            )
        ctx.controls = units
        effective["controlnets"] = names

    def _add_regions(
        self,
        ctx: GenerationContext,
        job: EngineJob,
        choice: ModelChoice,
        region: Region,
        effective: dict[str, Any],
        components: Components,
    ) -> None:
        """The regions' prompts over the generation `region` (engine/regions.py); after everything else that
        adds to the guidance, whose cond row each region row repeats."""
        if not job.params.regions:
            return
        height, width = job.canvas.shape[:2]
        try:
            region_masks = regions.region_masks(job.control_images, job.params, height, width)
        except ValueError as error:
            raise EngineInputError(str(error)) from None
        with ctx.timed("prompt"):
            ctx.guidance, counted = regions.apply_regions(
                ctx.guidance, self.conditioner, components, choice, job.params, region_masks, region
            )
        effective["regions_counted"] = counted

    def _context(
        self,
        job: EngineJob,
        choice: ModelChoice,
        timings: dict[str, float],
        on_progress: ProgressCallback,
        is_cancelled: CancelCheck,
        effective: dict[str, Any],
    ) -> tuple[GenerationContext, Components]:
        params = job.params
        start = time.perf_counter()
        if self._accelerated_for is not None and self._accelerated_for[0] != choice.checkpoint:
            # The model cache is about to unload this checkpoint: drop the graphs first, they hold its models
            # alive (and must never be replayed on freed weights).
            self.accelerator.reset()
            self._accelerated_for = None
        components = load_components(self.models, choice)
        if self._resident_for != id(components):
            self.residency.release()  # the previous models go home before the cache lets them go
            self._resident_for = id(components)
        vae = self._preview_vae(job, components) or components.vae
        timings["load"] = time.perf_counter() - start
        effective["decoder"] = "taesd" if is_tiny_autoencoder(vae) else "vae"
        effective["family"] = getattr(components, "family", SD15).name
        schedule = self.samplers.schedule(
            params.sampler, dict(components.scheduler_config), params.steps, params.strength, self.device
        )
        start = time.perf_counter()
        guidance = self.conditioner.guidance(components, choice, params)
        timings["prompt"] = time.perf_counter() - start
        ctx = GenerationContext(
            unet=components.unet,
            vae=vae,
            schedule=schedule,
            guidance=guidance,
            generator=torch.Generator("cpu").manual_seed(params.seed),
            device=self.device,
            dtype=model_dtype(components.unet),
            on_progress=on_progress,
            is_cancelled=is_cancelled,
            timings=timings,
            residency=self.residency,
            notes=effective,
        )
        # The UNet is as the checkpoint made it here: a job with references restores it when it ends (run()).
        referenced = bool(params.references) and self.references.apply(
            ctx, params.references, job.control_images, choice, components, effective
        )
        if job.live and referenced:
            # IP-Adapter processors and image embeddings are not in the accelerated path's graphs.
            off = [effective.get("accelerated_off"), references.ACCELERATED_OFF]
            effective["accelerated_off"] = "; ".join(reason for reason in off if reason)
        accelerated = job.live and self.accelerator.active and not self.residency.enabled and not referenced
        effective["accelerated"] = accelerated
        if accelerated:
            self._accelerate(ctx, choice.checkpoint)
        return ctx, components

    # --- live jobs: the preview decoder (TAESD) and the accelerated path ------------------------------------

    def _preview_vae(self, job: EngineJob, components: Components) -> Any:
        """TAESD for live jobs when the model source has its files; None = the checkpoint's VAE."""
        if not (job.live and self.settings.preview_taesd):
            return None
        taesd = getattr(self.models, "taesd", None)
        family = getattr(components, "family", SD15)
        if not callable(taesd) or family.name in self._taesd_errors:
            return None
        try:
            return taesd(family)
        except ModelError as error:
            # An optional speed-up: damaged files must not fail every live frame (nor be re-read for each).
            self._taesd_errors[family.name] = error.message
            log.warning("TAESD unavailable, live frames decode with the full VAE: %s", error.message)
            return None

    def _accelerate(self, ctx: GenerationContext, checkpoint: str) -> None:
        owner = (checkpoint, id(ctx.unet))
        if self._accelerated_for != owner:
            # Other models: the old graphs can't serve them. (LoRA re-fuses keep the UNet object and copy
            # weights in place, which the graphs and the compiled code read: no reset for those.)
            self.accelerator.reset()
            self._accelerated_for = owner
        ctx.predict = AcceleratedPredictor(self.accelerator, ctx.unet)
        if is_tiny_autoencoder(ctx.vae):
            ctx.vae_calls = AcceleratedTaesd(self.accelerator, ctx.vae)

    def _frame_plan(
        self, ctx: GenerationContext, masked: bool, dedicated: bool, from_noise: bool
    ) -> FramePlan | None:
        """The whole-frame plan for an accelerated live job that fits it; None: the per-step path."""
        if ctx.predict is None or not self.accelerator.settings.whole_frame:
            return None
        return plan_frame(ctx, masked=masked, dedicated=dedicated, from_noise=from_noise)

    def _condition_on_size(self, ctx: GenerationContext, components: Components, unpadded: Region) -> None:
        """The size the image is, not the bucket it is padded to (the padding is cropped off again)."""
        self.conditioner.condition_on_size(ctx.guidance, components, unpadded.gen_height, unpadded.gen_width)

    def _bucketed(self, region: Region, ctx: GenerationContext) -> Region:
        """Accelerated jobs generate at the bucket size (edge-padded, cropped back) so that small size
        changes reuse compiled graphs."""
        if ctx.predict is None:
            return region
        return replace(
            region,
            gen_width=self.accelerator.bucket(region.gen_width),
            gen_height=self.accelerator.bucket(region.gen_height),
        )

    def _to_tensor(self, rgb: np.ndarray, ctx: GenerationContext) -> torch.Tensor:
        if ctx.predict is not None and self.staging.pinned:
            return self.staging.upload(rgb, model_dtype(ctx.vae))
        return images.to_tensor(rgb, self.device, model_dtype(ctx.vae))

    def _to_uint8(self, decoded: torch.Tensor, ctx: GenerationContext) -> np.ndarray:
        if ctx.predict is not None and self.staging.pinned:
            return self.staging.download(decoded)
        return images.to_uint8(images.to_unit_float(decoded))

    def warm_up(self, width: int = 512, height: int = 512, params: JobParams | None = None) -> dict[str, Any]:
        """Run one live frame now, so that model loading, cudnn plans and (in the background) the compile
        of the live path start before the painter's first stroke. Returns the accelerator's status.

        The protocol's default parameters are the plugin's defaults, so a painter who starts with them finds
        that frame's graph captured; other step counts reuse its compiled parts."""
        canvas = np.full((height, width, 4), 128, dtype=np.uint8)
        canvas[..., 3] = 255
        params = params or JobParams()
        self.run(EngineJob("img2img", params, canvas, live=True), lambda i, n: None, lambda: False)
        return self.accelerator.status()


def _dedicated_inpaint(components: Components) -> bool:
    return bool(getattr(components, "is_inpaint", False)) or components.unet.config.in_channels == 9


def _batch_progress(on_progress: ProgressCallback, index: int, batch: int) -> ProgressCallback:
    """Image `index`'s steps as steps of the whole batch: the painter sees one bar for the job."""
    if batch == 1:
        return on_progress
    return lambda step, total: on_progress(index * total + step, batch * total)


def _combine(rendered: list[EngineResult]) -> EngineResult:
    """One result for a batch: the first image's, with the others' pixels beside it and the phases' times
    summed. The protocol promises the images share bounds and size, which equal inputs give."""
    first, others = rendered[0], rendered[1:]
    for other in others:
        if other.bounds != first.bounds or other.image.shape != first.image.shape:
            raise RuntimeError("the images of one batch came out with different bounds or sizes")
        for phase, seconds in other.timings.items():
            first.timings[phase] = first.timings.get(phase, 0.0) + seconds
    first.extra = [other.image for other in others]
    return first


def _check_job(job: EngineJob) -> None:
    if job.mode not in MODES:
        raise EngineInputError(f"Unknown mode {job.mode!r}; expected one of {', '.join(MODES)}.")
    try:
        images.check_rgba(job.canvas)
    except ValueError as error:
        raise EngineInputError(str(error)) from None
    if job.params.sampler not in SAMPLERS:
        raise EngineInputError(f"Unknown sampler {job.params.sampler!r}; known: {', '.join(SAMPLERS)}.")
    if job.params.steps < 1:
        raise EngineInputError("'steps' must be at least 1.")
    if job.params.batch < 1:
        raise EngineInputError("'batch' must be at least 1.")


def _effective_params(job: EngineJob, choice: ModelChoice, run_steps: int) -> dict[str, Any]:
    """The job's parameters with every default resolved, so a result says exactly what made it."""
    height, width = job.canvas.shape[:2]
    effective = job.params.to_dict()
    effective.update(
        mode=job.mode,
        checkpoint=choice.checkpoint,
        vae=choice.vae,
        lcm_lora=choice.lcm_lora.name if choice.lcm_lora else None,
        lcm_lora_strength=choice.lcm_lora.model_strength if choice.lcm_lora else 0.0,
        denoise_steps=run_steps,
        generation_size=[width, height],
    )
    return effective
