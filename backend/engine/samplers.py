"""Sampler (diffusers scheduler) construction and the img2img timestep schedule for a given strength."""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch

# Where a sampler's timesteps come from: the scheduler's own spacing for the step count ("scheduler"), or an
# explicit list evenly spaced from the last training timestep down ("trailing", see `trailing_timesteps`),
# passed as custom timesteps the way a pipeline's `timesteps=` argument passes them.
TimestepSource = Literal["scheduler", "trailing"]


def _frozen(values: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True)
class SamplerSpec:
    """How one protocol sampler runs, as data: the scheduler, its settings and its step arguments.

    Each distilled LoRA is trained for one sampler and timestep spacing; the entries below are the settings
    their authors publish for diffusers, so that the engine runs them as those pipelines do.
    """

    scheduler: str  # the diffusers scheduler class, by name (diffusers costs seconds to import)
    # Over the checkpoint's scheduler config, as `from_config(config, **overrides)` in the LoRAs' examples.
    config: Mapping[str, Any] = field(default_factory=_frozen)
    # Extra `scheduler.step` arguments: what a pipeline's `eta` argument carries (TCD's gamma).
    step_options: Mapping[str, Any] = field(default_factory=_frozen)
    timesteps: TimestepSource = "scheduler"

    def __post_init__(self) -> None:
        # Read-only views: the table is shared by every job.
        object.__setattr__(self, "config", _frozen(self.config))
        object.__setattr__(self, "step_options", _frozen(self.step_options))


# The implementation of each of the protocol's samplers, by the registry's name. A test checks that every
# sampler of protocol/registry.py has one.
SAMPLER_SPECS: dict[str, SamplerSpec] = {
    "lcm": SamplerSpec("LCMScheduler"),
    "euler": SamplerSpec("EulerDiscreteScheduler"),
    "euler_a": SamplerSpec("EulerAncestralDiscreteScheduler"),
    # SDXL Lightning: Euler on timesteps spaced from 999 down, as ByteDance's model card sets it up.
    "euler_trailing": SamplerSpec("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    # Hyper-SD's N-step LoRAs: deterministic DDIM (eta 0, a pipeline's default) on trailing timesteps.
    "ddim_trailing": SamplerSpec("DDIMScheduler", {"timestep_spacing": "trailing"}, {"eta": 0.0}),
    # Hyper-SD's TCD LoRAs (and TCD-LoRA): TCDScheduler ignores `timestep_spacing`; the steps come from the
    # 50-timestep grid it was distilled on (19, 39, .., 999), which already starts at the last timestep. eta
    # is the paper's gamma, the stochastic share of each step; 0.3 is TCD's default.
    "tcd": SamplerSpec("TCDScheduler", step_options={"eta": 0.3}),
    # DMD2: LCM's step on explicit timesteps (999, 749, 499, 249 at 4 steps, the ones it was trained on).
    # Those are off LCM's 50-step distillation grid; a 1000-step grid holds them and spares every job
    # diffusers' warning about it (the grid only validates custom timesteps: the arithmetic is the same).
    "lcm_trailing": SamplerSpec("LCMScheduler", {"original_inference_steps": 1000}, timesteps="trailing"),
    # SDXL-Turbo (and SD-Turbo) checkpoints: Euler ancestral on trailing timesteps, as their published
    # scheduler config has it, 1-4 steps without CFG (the card's guidance_scale 0: CFG 1 here).
    "euler_a_trailing": SamplerSpec("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
}


def sampler_spec(sampler: str) -> SamplerSpec:
    spec = SAMPLER_SPECS.get(sampler)
    if spec is None:
        raise ValueError(f"Unknown sampler {sampler!r}; known: {', '.join(SAMPLER_SPECS)}.")
    return spec


def _scheduler_class(spec: SamplerSpec) -> type:
    import diffusers

    return getattr(diffusers, spec.scheduler)


def trailing_timesteps(steps: int, train_timesteps: int = 1000) -> list[int]:
    """`steps` timesteps evenly spaced from the last training timestep down (diffusers' "trailing" spacing):
    999, 749, 499, 249 for 4 steps of 1000."""
    if not 1 <= steps <= train_timesteps:
        raise ValueError(f"steps must be 1..{train_timesteps}, got {steps}")
    # numpy's arange, as the schedulers' trailing spacing computes it: its float steps round the same way.
    # At some step counts (61 of 1000 is the first) arange's rounding adds an entry: `steps` are kept.
    spaced = np.round(np.arange(train_timesteps, 0, -train_timesteps / steps))
    return [int(t) - 1 for t in spaced[:steps]]


def denoise_steps(steps: int, strength: float) -> int:
    """Number of steps actually run for img2img: int(steps * strength), as diffusers' img2img pipelines count.

    A strength above 0 always runs at least one step (diffusers would fail on an empty schedule; a painter who
    moves the strength slider off zero expects some change). Strength 0 runs none.
    """
    if strength <= 0:
        return 0
    return max(1, min(int(steps * strength), steps))


def starts_from_noise(strength: float) -> bool:
    """Whether inpaint (and an inpainting checkpoint's img2img) starts from pure noise instead of the noised
    original: at full strength, as diffusers' inpaint pipeline does (`is_strength_max`)."""
    return strength >= 1.0


@dataclass
class Schedule:
    """The part of a sampler's schedule one job runs. The scheduler object is stateful (step index)."""

    scheduler: Any
    timesteps: torch.Tensor  # the timesteps to run, first = the noise level the clean latents are noised to
    step_options: Mapping[str, Any] = field(default_factory=_frozen)  # the sampler's SamplerSpec.step_options

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def order(self) -> int:
        return int(getattr(self.scheduler, "order", 1))

    def step_arguments(self, generator: torch.Generator) -> dict[str, Any]:
        """`scheduler.step`'s keyword arguments besides the sample: the sampler's options, and the job's
        generator where step() takes one (stochastic samplers draw their noise from it), as diffusers'
        pipelines pass `eta` and `generator` (`prepare_extra_step_kwargs`)."""
        arguments = dict(self.step_options)
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            arguments["generator"] = generator
        return arguments


class SamplerFactory:
    """Keeps one scheduler per (sampler, checkpoint scheduler config): building one recomputes its beta
    tables, and `set_timesteps` resets all per-run state, so reuse between jobs is safe (the engine runs one
    job at a time).
    """

    def __init__(self) -> None:
        self._schedulers: dict[tuple[str, str], Any] = {}

    def scheduler(self, sampler: str, config: dict[str, Any]) -> Any:
        """The sampler's scheduler for a checkpoint's scheduler config (with the sampler's overrides)."""
        spec = sampler_spec(sampler)
        key = (sampler, json.dumps(config, sort_keys=True, default=str))
        scheduler = self._schedulers.get(key)
        if scheduler is None:
            scheduler = _scheduler_class(spec).from_config({**config, **spec.config})
            self._schedulers[key] = scheduler
        return scheduler

    def schedule(
        self, sampler: str, config: dict[str, Any], steps: int, strength: float, device: torch.device
    ) -> Schedule:
        """The timesteps for `steps` at `strength`, cut the way diffusers' img2img pipelines cut them.

        The full schedule for `steps` is computed and its last `denoise_steps(steps, strength)` entries are
        run; the scheduler is told where it begins so that its step index and `add_noise` use the right sigma.
        For LCM this keeps the LCM timestep grid of the full step count (e.g. 4 steps at strength 0.5 run
        t=499 and t=259). Explicit timesteps are cut alike (a pipeline given `timesteps=` counts them as its
        steps): `lcm_trailing` at 4 steps and strength 0.5 runs t=499 and t=249.
        """
        spec = sampler_spec(sampler)
        scheduler = self.scheduler(sampler, config)
        if spec.timesteps == "trailing":
            explicit = trailing_timesteps(steps, int(scheduler.config.num_train_timesteps))
            scheduler.set_timesteps(timesteps=explicit, device=device)
        else:
            scheduler.set_timesteps(steps, device=device)
        run = denoise_steps(steps, strength)
        start = (steps - run) * int(getattr(scheduler, "order", 1))
        timesteps = scheduler.timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        return Schedule(scheduler, timesteps, spec.step_options)
