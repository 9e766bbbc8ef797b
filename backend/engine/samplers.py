"""Sampler (diffusers scheduler) construction and the img2img timestep schedule for a given strength."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

# The implementation of each of the protocol's samplers: the diffusers scheduler class, by name (diffusers
# costs seconds to import and the server's handshake path must not pay for it). A test checks that every
# sampler of protocol/registry.py has one.
SCHEDULER_CLASSES = {
    "lcm": "LCMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
}


def _scheduler_class(sampler: str) -> type:
    if sampler not in SCHEDULER_CLASSES:
        raise ValueError(f"Unknown sampler {sampler!r}; known: {', '.join(SCHEDULER_CLASSES)}.")
    import diffusers

    return getattr(diffusers, SCHEDULER_CLASSES[sampler])


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

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def order(self) -> int:
        return int(getattr(self.scheduler, "order", 1))


class SamplerFactory:
    """Keeps one scheduler per (sampler, checkpoint scheduler config): building one recomputes its beta
    tables, and `set_timesteps` resets all per-run state, so reuse between jobs is safe (the engine runs one
    job at a time).
    """

    def __init__(self) -> None:
        self._schedulers: dict[tuple[str, str], Any] = {}

    def scheduler(self, sampler: str, config: dict[str, Any]) -> Any:
        key = (sampler, json.dumps(config, sort_keys=True, default=str))
        scheduler = self._schedulers.get(key)
        if scheduler is None:
            scheduler = _scheduler_class(sampler).from_config(config)
            self._schedulers[key] = scheduler
        return scheduler

    def schedule(
        self, sampler: str, config: dict[str, Any], steps: int, strength: float, device: torch.device
    ) -> Schedule:
        """The timesteps for `steps` at `strength`, cut the way diffusers' img2img pipelines cut them.

        The full schedule for `steps` is computed and its last `denoise_steps(steps, strength)` entries are
        run; the scheduler is told where it begins so that its step index and `add_noise` use the right sigma.
        For LCM this keeps the LCM timestep grid of the full step count (e.g. 4 steps at strength 0.5 run
        t=499 and t=259).
        """
        scheduler = self.scheduler(sampler, config)
        scheduler.set_timesteps(steps, device=device)
        run = denoise_steps(steps, strength)
        start = (steps - run) * int(getattr(scheduler, "order", 1))
        timesteps = scheduler.timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        return Schedule(scheduler, timesteps)
