"""The few-step denoising loop shared by img2img and inpaint, with optional ControlNets and inpaint inputs.

It follows the same arithmetic as diffusers' img2img pipelines (same scheduler calls in the same order, same
random draws from the job's generator) so that its output can be checked against them, but holds no pipeline
state: everything a job needs is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .jobs import JobCancelled
from .samplers import Schedule

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]
StepHook = Callable[[int, int], None]


@dataclass
class Guidance:
    """Prompt conditioning and classifier-free guidance for one job."""

    cond: torch.Tensor  # 1 x 77 x D text embedding
    # negative prompt embedding; None = single pass (cfg <= 1, or a guidance-distilled UNet)
    uncond: torch.Tensor | None
    scale: float
    # guidance embedding for LCM-distilled UNets (those with time_cond_proj_dim)
    timestep_cond: torch.Tensor | None = None
    # SDXL-class UNets' added conditioning: the pooled text embeddings and the size time ids, batched as
    # `embeddings()` is (engine/conditioning.py). None for families without it.
    added: dict[str, torch.Tensor] | None = None
    # Regions (engine/regions.py): `cond` holds one row per prompt and these are the rows' blend weights,
    # R x 1 x h x w at latent resolution, summing to 1 at every latent pixel. None: one cond row.
    weights: torch.Tensor | None = None

    @property
    def batched(self) -> bool:
        return self.uncond is not None

    @property
    def rows(self) -> int:
        """The UNet call's batch: the cond rows, after the uncond row with CFG."""
        return self.cond.shape[0] + (1 if self.uncond is not None else 0)

    def repeat(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch-1 input (latents, ControlNet hint, inpaint extras) repeated for every row of the call."""
        return tensor if self.rows == 1 else torch.cat([tensor] * self.rows)

    def embeddings(self) -> torch.Tensor:
        # Unconditional first, as diffusers orders the batch; all passes share one UNet call.
        if self.uncond is None:
            return self.cond
        return torch.cat([self.uncond, self.cond])

    def combine(self, prediction: torch.Tensor) -> torch.Tensor:
        if self.weights is not None:
            return blend_rows(prediction, self.weights, self.scale if self.batched else None)
        if self.uncond is None:
            return prediction
        return cfg_combine(prediction, self.scale)


def cfg_combine(prediction: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: a batch-2 prediction (unconditional, conditional) -> the guided one.
    `scale` may be a 0-dim tensor (the whole live frame), the arithmetic is the same."""
    uncond, cond = prediction.chunk(2)
    return uncond + scale * (cond - uncond)


def blend_rows(prediction: torch.Tensor, weights: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Regions' predictions ([uncond,] cond rows) -> one: the cond rows weighted per pixel (`weights`, R x 1 x
    h x w, summing to 1), then CFG against the uncond row when `scale` is given."""
    cond_rows = prediction if scale is None else prediction[1:]
    cond = (cond_rows * weights.to(prediction.dtype)).sum(dim=0, keepdim=True)
    if scale is None:
        return cond
    uncond = prediction[:1]
    return uncond + scale * (cond - uncond)


def make_guidance(
    cond: torch.Tensor, uncond: torch.Tensor | None, scale: float, time_cond_proj_dim: int | None
) -> Guidance:
    """CFG needs scale > 1; an LCM-distilled UNet takes the scale as an embedding and runs one pass."""
    if time_cond_proj_dim is not None:
        embedding = guidance_scale_embedding(scale - 1.0, time_cond_proj_dim).to(cond.device, cond.dtype)
        return Guidance(cond, None, scale, embedding)
    return Guidance(cond, uncond if scale > 1.0 else None, scale)


def guidance_scale_embedding(w: float, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the guidance weight, the conditioning LCM-distilled UNets were trained with."""
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = torch.tensor([w * 1000.0], dtype=torch.float32)[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding


@dataclass
class ControlUnit:
    """One ControlNet applied during the loop."""

    model: Any  # diffusers ControlNetModel
    image: torch.Tensor  # 1 x 3 x H x W hint in [0, 1], at the generation size
    scale: float
    start: float = 0.0  # fraction of the run steps where it starts acting
    end: float = 1.0

    def scale_at(self, index: int, total: int) -> float:
        """Conditioning scale at step `index` of `total`: zero outside [start, end], as diffusers counts
        steps."""
        outside = index / total < self.start or (index + 1) / total > self.end
        return 0.0 if outside else self.scale


@dataclass
class InpaintChannels:
    """Extra UNet input for dedicated (9-channel) inpainting checkpoints: the mask and the masked image's
    latents."""

    mask: torch.Tensor  # 1 x 1 x h x w latent-resolution mask, 1 = redraw
    masked_image_latents: torch.Tensor  # 1 x 4 x h x w


@dataclass
class LatentHold:
    """Keeps latents outside the mask on the original image's trajectory (4-channel UNets).

    After each step the unmasked area is replaced by the clean latents noised to the next step's level (and by
    the clean latents after the last step), so the model paints the masked area in context.
    """

    clean: torch.Tensor  # scaled latents of the original image
    noise: torch.Tensor  # the same noise that started the run
    mask: torch.Tensor  # 1 x 1 x h x w, 1 = redraw


def repeat_for_batch(tensor: torch.Tensor, batched: bool) -> torch.Tensor:
    return torch.cat([tensor, tensor]) if batched else tensor


def inpaint_input(
    mask: torch.Tensor, masked_image_latents: torch.Tensor, dtype: torch.dtype, batched: bool
) -> torch.Tensor:
    """A 9-channel UNet's extra input (mask, masked-image latents), concatenated to the latents each step."""
    return repeat_for_batch(torch.cat([mask, masked_image_latents], dim=1).to(dtype), batched)


def hold_blend(mask: torch.Tensor, original: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """The inpaint hold: the original (noised to the next step's level) outside the mask, the step's latents
    inside it."""
    return (1 - mask) * original + mask * latents


@dataclass
class StepInputs:
    """What one step's model call (a `Predictor`) takes: one contract for the eager and accelerated calls."""

    model_input: torch.Tensor  # the latents, repeated for CFG and scaled by the scheduler
    timestep: torch.Tensor
    embeddings: torch.Tensor  # Guidance.embeddings(): batch 2 with CFG
    guidance: Guidance
    controls: Sequence[ControlUnit]
    index: int  # this step's index among the `total` run steps (ControlNet start/end count in these)
    total: int
    extra: torch.Tensor | None  # a 9-channel UNet's inpaint_input; None for 4-channel UNets

    def active_controls(self) -> list[tuple[ControlUnit, float]]:
        """The ControlNets acting at this step with their scales; skipping the others is exact (an inactive
        ControlNet only adds zeros)."""
        scaled = [(control, control.scale_at(self.index, self.total)) for control in self.controls]
        return [(control, scale) for control, scale in scaled if scale != 0.0]


def _control_residuals(step: StepInputs) -> dict[str, Any]:
    """Sum of the active ControlNets' residuals as UNet keyword arguments (empty when none acts now)."""
    outputs = [
        control.model(
            step.model_input,
            step.timestep,
            encoder_hidden_states=step.embeddings,
            controlnet_cond=step.guidance.repeat(control.image),
            conditioning_scale=scale,
            return_dict=False,
            **added_conditioning(step.guidance),
        )
        for control, scale in step.active_controls()
    ]
    return sum_control_residuals(outputs)


def added_conditioning(guidance: Guidance) -> dict[str, Any]:
    """The UNet's (and ControlNet's) `added_cond_kwargs` keyword, for the families that read it."""
    return {} if guidance.added is None else {"added_cond_kwargs": guidance.added}


def sum_control_residuals(outputs: Sequence[tuple[Sequence[torch.Tensor], torch.Tensor]]) -> dict[str, Any]:
    """ControlNet outputs (down, mid residuals) summed as the UNet's keyword arguments ({} if none)."""
    if not outputs:
        return {}
    down, mid = list(outputs[0][0]), outputs[0][1]
    for down_i, mid_i in outputs[1:]:
        down = [a + b for a, b in zip(down, down_i, strict=True)]
        mid = mid + mid_i
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


class Predictor(Protocol):
    """One step's model call: the active ControlNets and the UNet -> the (batched) noise prediction."""

    def __call__(self, step: StepInputs) -> torch.Tensor: ...


@dataclass
class EagerPredictor:
    """The plain path: diffusers' modules called directly, as the reference pipelines call them."""

    unet: Any

    def __call__(self, step: StepInputs) -> torch.Tensor:
        residuals = _control_residuals(step)
        model_input = step.model_input
        if step.extra is not None:
            model_input = torch.cat([model_input, step.extra], dim=1)
        return self.unet(
            model_input,
            step.timestep,
            encoder_hidden_states=step.embeddings,
            timestep_cond=step.guidance.timestep_cond,
            return_dict=False,
            **added_conditioning(step.guidance),
            **residuals,
        )[0]


def denoise(
    unet: Any,
    schedule: Schedule,
    latents: torch.Tensor,
    guidance: Guidance,
    generator: torch.Generator,
    on_progress: ProgressCallback,
    is_cancelled: CancelCheck,
    controls: Sequence[ControlUnit] = (),
    inpaint_channels: InpaintChannels | None = None,
    hold: LatentHold | None = None,
    predict: Predictor | None = None,
    before_step: StepHook | None = None,
) -> torch.Tensor:
    """Run the schedule's steps from noised `latents`; returns the final (clean) latents.

    `predict` replaces the plain UNet/ControlNet call (the accelerated path); None = `EagerPredictor(unet)`.
    `before_step(i, n)`, when given, is called before step i of n's model call (reference images set their
    adapters' per-step scales, engine/references.py).

    is_cancelled() is asked before every step and once after the last (before the caller spends time
    decoding); on_progress(i, n) is called after step i of n.
    """
    scheduler = schedule.scheduler
    predict = predict or EagerPredictor(unet)
    embeddings = guidance.embeddings()
    total = len(schedule.timesteps)
    extra: torch.Tensor | None = None
    if inpaint_channels is not None:
        extra = guidance.repeat(
            inpaint_input(inpaint_channels.mask, inpaint_channels.masked_image_latents, latents.dtype, False)
        )
    step_arguments = schedule.step_arguments(generator)
    for index, timestep in enumerate(schedule.timesteps):
        if is_cancelled():
            raise JobCancelled()
        model_input = guidance.repeat(latents)
        model_input = scheduler.scale_model_input(model_input, timestep)
        if before_step is not None:
            before_step(index, total)
        prediction = predict(
            StepInputs(model_input, timestep, embeddings, guidance, controls, index, total, extra)
        )
        latents = scheduler.step(
            guidance.combine(prediction), timestep, latents, return_dict=False, **step_arguments
        )[0]
        if hold is not None:
            latents = _apply_hold(scheduler, hold, latents, schedule.timesteps, index)
        on_progress(index + 1, total)
    if is_cancelled():
        raise JobCancelled()
    return latents


def _apply_hold(
    scheduler: Any, hold: LatentHold, latents: torch.Tensor, timesteps: torch.Tensor, index: int
) -> torch.Tensor:
    original = hold.clean
    if index + 1 < len(timesteps):
        original = scheduler.add_noise(hold.clean, hold.noise, timesteps[index + 1 : index + 2])
    return hold_blend(hold.mask, original, latents)
