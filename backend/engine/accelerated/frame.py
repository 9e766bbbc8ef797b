"""A whole live frame as one function of tensors, replayed as one CUDA graph.

uint8 pixels in -> TAESD encode -> LCM noising -> the few LCM steps (ControlNets, CFG, the inpaint hold of a
4-channel UNet or the mask inputs of a 9-channel one) -> TAESD decode -> uint8 pixels out.

The per-step path replays a graph per model call but comes back to Python between calls for the scheduler
step, a noise draw (a blocking host-to-device copy) and progress; at 4 steps and ~20 ms a frame, that host
work and the stalls it forces are a large share. Here every value that changes between frames is an input
tensor: the noise, drawn up front from the job's seed in the order the scheduler draws it (and cached per
seed, since live painting keeps its seed); the schedule's LCM coefficients; the guidance and ControlNet
scales. So a frame is one copy in, one replay and one copy out, and a new strength, prompt or seed
re-captures nothing.

The arithmetic is LCMScheduler.step's and add_noise's, op for op, with coefficients computed by the same
expressions on the same device: in float32 on the CPU the frame is bit-identical to the per-step path
(tests/backend/test_accelerated_frame.py). Each place where `build_frame` mirrors the per-step path names the
function it mirrors; where the two can share a function (CFG, the hold's blend, the masked image, the
9-channel input, the step's model call) they do.

The model calls inside (the step denoiser per set of acting ControlNets, TAESD encode and decode) are
compiled one by one as shared parts, then the frame is captured again around the compiled parts. One UNet
compile serves every frame variant (step count, img2img or inpaint), where an inductor graph of the whole
unrolled loop takes minutes to build.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import masks
from .. import vae as vae_codec
from ..context import GenerationContext
from ..inpaint import masked_image
from ..jobs import JobCancelled
from ..loop import cfg_combine, hold_blend, inpaint_input, repeat_for_batch
from ..modules import model_dtype
from .accelerator import Accelerator, Compiler
from .denoiser import added_inputs, build_denoiser
from .host import HostStaging, model_to_pixels, pixels_to_model
from .static_call import TensorFn
from .vae_calls import is_tiny_autoencoder

LATENT_CHANNELS = 4  # SD1.5's and SDXL's latents (a 9-channel UNet adds mask and masked-image latents)
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
NOISE_CACHE_SIZE = 8
SCALE_CACHE_SIZE = 256
# Columns of the per-step LCM table (float32, as LCMScheduler computes them).
SQRT_ALPHA, SQRT_BETA, C_SKIP, C_OUT, SQRT_ALPHA_PREV, SQRT_BETA_PREV = range(6)


@dataclass(frozen=True)
class FramePlan:
    """What selects the frame's code (part of its accelerator key); values are inputs, not part of this."""

    steps: int
    batched: bool  # CFG: unconditional and conditional passes in one batch
    has_timestep_cond: bool  # an LCM-distilled UNet's guidance embedding
    added: bool  # SDXL-class UNets' added conditioning (pooled text embeddings, size time ids)
    active: tuple[tuple[int, ...], ...]  # per step: indices of the ControlNets acting in it
    controls: int
    hold: bool  # inpaint: the unmasked area follows the noised original
    extra: bool  # a 9-channel inpainting UNet: mask and masked-image latents as extra input
    from_noise: bool  # inpaint at strength 1: start from pure noise
    init_noise_sigma: float
    prediction_type: str
    vae_dtype: torch.dtype
    latent_dtype: torch.dtype


def plan_frame(ctx: GenerationContext, masked: bool, dedicated: bool, from_noise: bool) -> FramePlan | None:
    """The plan for this job, or None where the frame doesn't apply (the per-step path serves those):
    another sampler than LCM, or the full VAE (its encode samples from the generator).

    masked: an inpaint job (a 4-channel UNet holds the unmasked area); dedicated: a 9-channel inpainting UNet,
    which takes the mask as input instead (img2img with it uses a full mask)."""
    scheduler = ctx.schedule.scheduler
    config = scheduler.config
    if type(scheduler).__name__ != "LCMScheduler" or not is_tiny_autoencoder(ctx.vae):
        return None
    prediction_type = config.get("prediction_type", "epsilon")
    if config.get("thresholding") or config.get("clip_sample") or prediction_type not in PREDICTION_TYPES:
        return None
    if ctx.unet.config.in_channels != (9 if dedicated else 4):
        return None
    if ctx.guidance.weights is not None:
        return None  # regions blend their rows per pixel (loop.blend_rows): the per-step path does that
    steps = len(ctx.schedule)
    active = tuple(
        tuple(c for c, control in enumerate(ctx.controls) if control.scale_at(i, steps) != 0.0)
        for i in range(steps)
    )
    return FramePlan(
        steps=steps,
        batched=ctx.guidance.batched,
        has_timestep_cond=ctx.guidance.timestep_cond is not None,
        added=ctx.guidance.added is not None,
        active=active,
        controls=len(ctx.controls),
        hold=masked and not dedicated,
        extra=dedicated,
        from_noise=from_noise,
        init_noise_sigma=float(scheduler.init_noise_sigma),
        prediction_type=prediction_type,
        vae_dtype=model_dtype(ctx.vae),
        latent_dtype=ctx.dtype,
    )


Part = Callable[..., torch.Tensor]


def build_frame(plan: FramePlan, encode: Part, decode: Part, steps: Sequence[Part]) -> TensorFn:
    """frame(pixels, noise, embeddings, lcm, noising, timesteps, [guidance_scale], [timestep_cond],
    [text_embeds, time_ids], [latent_mask], [pixel_mask], *hints, [control_scales]) -> H x W x 3 uint8.
    `steps[i]` is the denoiser for step i's acting ControlNets. latent_mask (1 = redraw, latent dtype) comes
    with hold or extra; pixel_mask (1 = redraw, VAE dtype) with extra.

    noise: steps x latent shape; noise[0] starts the run, noise[i] is injected after step i - 1.
    lcm: steps x 6 float32 (the SQRT_ALPHA.. columns); noising: steps x 2 in the latent dtype, row i the
    add_noise factors for timesteps[i]; control_scales: steps x controls float32.
    """

    def frame(
        pixels: torch.Tensor,
        noise: torch.Tensor,
        embeddings: torch.Tensor,
        lcm: torch.Tensor,
        noising: torch.Tensor,
        timesteps: torch.Tensor,
        *rest: torch.Tensor,
    ) -> torch.Tensor:
        optional = list(rest)
        guidance_scale = optional.pop(0) if plan.batched else None
        timestep_cond = optional.pop(0) if plan.has_timestep_cond else None
        added = [optional.pop(0), optional.pop(0)] if plan.added else []
        mask = optional.pop(0) if plan.hold or plan.extra else None
        pixel_mask = optional.pop(0) if plan.extra else None
        hints, optional = optional[: plan.controls], optional[plan.controls :]
        control_scales = optional.pop(0) if plan.controls else None

        # images.to_tensor, on the device (host.pixels_to_model)
        image = pixels_to_model(pixels, plan.vae_dtype)
        extra = None
        if pixel_mask is not None and mask is not None:
            # inpaint._inpaint_dedicated: the encodes, then loop.denoise's extra input
            masked = masked_image(image, pixel_mask)
            if plan.from_noise:
                clean, masked_latents = None, encode(masked).to(plan.latent_dtype)
            else:
                both = encode(torch.cat([image, masked])).to(plan.latent_dtype)  # one encoder call
                clean, masked_latents = both[:1], both[1:]
            extra = inpaint_input(mask, masked_latents, plan.latent_dtype, plan.batched)
        else:
            # GenerationContext.encode (TAESD: no generator draw)
            clean = encode(image).to(plan.latent_dtype)
        if plan.from_noise or clean is None:
            # inpaint.inpaint / inpaint._inpaint_dedicated at strength 1: noise x init_noise_sigma
            latents = noise[0] * plan.init_noise_sigma
        else:
            # img2img.noised_start: scheduler.add_noise(clean, noise, timesteps[:1]), factors from `noising`
            latents = noising[0, 0] * clean + noising[0, 1] * noise[0]
        for i in range(plan.steps):
            # loop.denoise's step: the batch for CFG (the LCM scheduler's scale_model_input is the identity),
            # then the step's model call, denoiser.build_denoiser as the accelerated predictor calls it
            model_input = repeat_for_batch(latents, plan.batched)
            args = [model_input, timesteps[i], embeddings]
            if timestep_cond is not None:
                args.append(timestep_cond)
            if extra is not None:
                args.append(extra)
            args += added
            args += [hints[c] for c in plan.active[i]]
            if control_scales is not None:
                args += [control_scales[i, c] for c in plan.active[i]]
            prediction = steps[i](*args)
            if guidance_scale is not None:
                prediction = cfg_combine(prediction, guidance_scale)  # loop.Guidance.combine
            # LCMScheduler.step (lcm_step), the next step's noise drawn up front in the generator's order
            latents = lcm_step(
                plan, lcm[i], prediction, latents, noise[i + 1] if i + 1 < plan.steps else None
            )
            if plan.hold and mask is not None and clean is not None:
                # loop._apply_hold: add_noise to the next step's level from `noising`, the clean latents last
                if i + 1 < plan.steps:
                    original = noising[i + 1, 0] * clean + noising[i + 1, 1] * noise[0]
                else:
                    original = clean
                latents = hold_blend(mask, original, latents)
        # GenerationContext.decode, then images.to_unit_float/to_uint8 on the device (host.model_to_pixels)
        return model_to_pixels(decode(latents.to(plan.vae_dtype)))

    return frame


def lcm_step(
    plan: FramePlan,
    row: torch.Tensor,
    prediction: torch.Tensor,
    sample: torch.Tensor,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """LCMScheduler.step with its coefficients read from `row` (0-dim float32 device tensors, as diffusers
    multiplies them)."""
    if plan.prediction_type == "epsilon":
        original = (sample - row[SQRT_BETA] * prediction) / row[SQRT_ALPHA]
    elif plan.prediction_type == "sample":
        original = prediction
    else:
        original = row[SQRT_ALPHA] * sample - row[SQRT_BETA] * prediction
    denoised = row[C_OUT] * original + row[C_SKIP] * sample
    if noise is None:
        return denoised
    return row[SQRT_ALPHA_PREV] * denoised + row[SQRT_BETA_PREV] * noise


def schedule_tables(
    scheduler: Any, timesteps: list[int], latent_dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lcm, noising, timesteps) tensors for `build_frame`, computed on `device` by the expressions that
    LCMScheduler.step and add_noise use there: the values are the ones the per-step path multiplies by."""
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    alphas_latent = alphas.to(latent_dtype)
    steps = torch.tensor(timesteps, dtype=torch.long, device=device)
    rows, noising = [], []
    for i in range(len(timesteps)):
        timestep = steps[i]
        previous = steps[i + 1] if i + 1 < len(timesteps) else timestep  # unused after the last step
        alpha, alpha_prev = alphas[timestep], alphas[previous]
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(timestep)
        beta, beta_prev = 1 - alpha, 1 - alpha_prev
        rows.append(
            torch.stack([alpha.sqrt(), beta.sqrt(), c_skip, c_out, alpha_prev.sqrt(), beta_prev.sqrt()])
        )
        noising.append(torch.stack([alphas_latent[timestep] ** 0.5, (1 - alphas_latent[timestep]) ** 0.5]))
    return torch.stack(rows).to(torch.float32), torch.stack(noising), steps


class LiveFrames:
    """Runs live frames through the accelerator as whole-frame functions (see the module doc)."""

    def __init__(self, accelerator: Accelerator, staging: HostStaging) -> None:
        self.accelerator = accelerator
        self.staging = staging
        self._noise: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._tables: dict[Hashable, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._scales: dict[Hashable, torch.Tensor] = {}
        frame_compile = accelerator.settings.frame_compile
        if frame_compile not in ("parts", "whole"):
            raise ValueError(f"Unknown frame_compile {frame_compile!r}; use 'parts' or 'whole'.")
        self._compile_in_parts = frame_compile == "parts"

    def run(
        self, ctx: GenerationContext, plan: FramePlan, rgb: np.ndarray, seed: int, mask: np.ndarray | None
    ) -> np.ndarray:
        """rgb: H x W x 3 uint8 at the generation size -> the frame's H x W x 3 uint8 result. mask: H x W
        uint8 at the generation size (non-zero = redraw) for an inpaint plan."""
        if ctx.is_cancelled():
            raise JobCancelled()
        for module in (ctx.unet, ctx.vae, *(c.model for c in ctx.controls)):
            self.accelerator.prepare_module(module)
        with ctx.timed("frame"):
            args = self._inputs(ctx, plan, rgb, seed, mask)
            models = FrameModels.of(ctx)
            out = self.accelerator.call(
                ("frame", plan, models.key()),
                lambda: assemble(plan, {role: fn for role, (_, fn) in plan_parts(models, plan).items()}),
                args,
                compiler=self._compiler(models, plan) if self._compile_in_parts else None,
            )
            pixels = self.staging.download_pixels(out)
        for step in range(1, plan.steps + 1):
            ctx.on_progress(step, plan.steps)
        if ctx.is_cancelled():
            raise JobCancelled()
        return pixels

    # --- inputs --------------------------------------------------------------------------------------------

    def _inputs(
        self, ctx: GenerationContext, plan: FramePlan, rgb: np.ndarray, seed: int, mask: np.ndarray | None
    ) -> list[torch.Tensor]:
        height, width = rgb.shape[:2]
        latent_shape = (1, LATENT_CHANNELS, height // 8, width // 8)
        lcm, noising, timesteps = self._schedule(ctx, plan)
        args = [
            self.staging.upload_pixels(rgb),
            self._noise_for(ctx, seed, plan.steps, latent_shape),
            ctx.guidance.embeddings(),
            lcm,
            noising,
            timesteps,
        ]
        if plan.batched:
            args.append(self._scalar(("guidance", ctx.guidance.scale), ctx.guidance.scale, ctx.device))
        if ctx.guidance.timestep_cond is not None:
            args.append(ctx.guidance.timestep_cond)
        if ctx.guidance.added is not None:
            args += added_inputs(ctx.guidance.added)
        if plan.hold or plan.extra:
            if mask is None:
                raise ValueError("an inpaint frame needs its mask")
            # The per-step path's masks: made in the VAE's dtype, the latent one then cast to the UNet's.
            args.append(masks.latent_mask(mask, ctx.device, plan.vae_dtype).to(plan.latent_dtype))
            if plan.extra:
                args.append(masks.pixel_mask_tensor(mask, ctx.device, plan.vae_dtype))
        args += [repeat_for_batch(c.image, plan.batched) for c in ctx.controls]
        if ctx.controls:
            scales = tuple(tuple(c.scale_at(i, plan.steps) for c in ctx.controls) for i in range(plan.steps))
            args.append(self._scalar(("controls", scales), scales, ctx.device))
        return args

    def _schedule(self, ctx: GenerationContext, plan: FramePlan) -> tuple[torch.Tensor, ...]:
        scheduler = ctx.schedule.scheduler
        timesteps = [int(t) for t in ctx.schedule.timesteps.tolist()]
        key = (id(scheduler), tuple(timesteps), plan.latent_dtype, ctx.device)
        tables = self._tables.get(key)
        if tables is None:
            tables = self._tables[key] = schedule_tables(scheduler, timesteps, plan.latent_dtype, ctx.device)
        return tables

    def _noise_for(
        self, ctx: GenerationContext, seed: int, steps: int, shape: tuple[int, ...]
    ) -> torch.Tensor:
        """The run's noise in draw order (start, then one per step but the last), as the per-step path draws
        it from a generator seeded with `seed`. Cached: live painting keeps its seed from frame to frame."""
        key = (seed, steps, shape, ctx.dtype, ctx.device)
        noise = self._noise.pop(key, None)
        if noise is None:
            generator = torch.Generator("cpu").manual_seed(seed)
            draws = [torch.randn(shape, generator=generator, dtype=ctx.dtype) for _ in range(steps)]
            noise = torch.stack(draws).to(ctx.device)
        self._noise[key] = noise
        while len(self._noise) > NOISE_CACHE_SIZE:
            self._noise.popitem(last=False)
        return noise

    def _scalar(self, key: Hashable, values: Any, device: torch.device) -> torch.Tensor:
        """Scale values as float32 device tensors, made once per value (a fresh one each frame would be a
        blocking host-to-device copy)."""
        full_key = (key, device)
        tensor = self._scales.get(full_key)
        if tensor is None:
            if len(self._scales) >= SCALE_CACHE_SIZE:
                self._scales.clear()  # a slider dragged through many values; tiny tensors, rebuilt on demand
            tensor = self._scales[full_key] = torch.tensor(values, dtype=torch.float32, device=device)
        return tensor

    # --- functions -----------------------------------------------------------------------------------------

    def _compiler(self, models: FrameModels, plan: FramePlan) -> Compiler:
        accelerator = self.accelerator

        def compile_frame(eager_frame: TensorFn, examples: list[torch.Tensor]) -> TensorFn:
            parts = plan_parts(models, plan)
            recorded: dict[Hashable, list[torch.Tensor]] = {}

            def recording(role: Hashable, fn: Part) -> Part:
                def call(*args: torch.Tensor) -> torch.Tensor:
                    recorded.setdefault(role, [a.detach().clone() for a in args])
                    return fn(*args)

                return call

            with torch.inference_mode():
                # One eager run shows each part its real inputs (the latents between steps and so on).
                assemble(plan, {role: recording(role, fn) for role, (_, fn) in parts.items()})(*examples)
            compiled = {
                role: accelerator.compile_part(key, fn, recorded[role]) for role, (key, fn) in parts.items()
            }
            frame = assemble(plan, compiled)
            accelerator.warm_function(frame, examples)
            return frame

        return compile_frame


@dataclass(frozen=True)
class FrameModels:
    """The models a frame calls (not the job's context: a slot outlives the job that made it)."""

    unet: Any
    vae: Any
    controls: tuple[Any, ...]

    @classmethod
    def of(cls, ctx: GenerationContext) -> FrameModels:
        return cls(ctx.unet, ctx.vae, tuple(c.model for c in ctx.controls))

    def key(self) -> Hashable:
        return (id(self.unet), id(self.vae), tuple(id(m) for m in self.controls))


def frame_parts(
    models: FrameModels,
    active_sets: Sequence[tuple[int, ...]],
    has_timestep_cond: bool = False,
    extra: bool = False,
    added: bool = False,
) -> dict[Hashable, tuple[Hashable, Part]]:
    """role -> (accelerator part key, eager function): "encode" and "decode" (TAESD), and ("step", active)
    for each set of acting ControlNets (indices into models.controls; a step where a ControlNet is inactive
    skips it, as the plain path does)."""
    vae, unet = models.vae, models.unet
    parts: dict[Hashable, tuple[Hashable, Part]] = {
        "encode": (("taesd-encode", id(vae)), lambda x: vae_codec.encode(vae, x, None)),
        "decode": (("taesd-decode", id(vae)), lambda z: vae_codec.decode(vae, z)),
    }
    for active in sorted(set(active_sets)):
        controls = tuple(models.controls[c] for c in active)
        key = ("denoise", id(unet), tuple(id(m) for m in controls), has_timestep_cond, extra, added)
        parts[("step", active)] = (key, build_denoiser(unet, controls, has_timestep_cond, extra, added))
    return parts


def plan_parts(models: FrameModels, plan: FramePlan) -> dict[Hashable, tuple[Hashable, Part]]:
    return frame_parts(models, plan.active, plan.has_timestep_cond, plan.extra, plan.added)


def assemble(plan: FramePlan, fns: dict[Hashable, Part]) -> TensorFn:
    return build_frame(plan, fns["encode"], fns["decode"], [fns[("step", active)] for active in plan.active])
