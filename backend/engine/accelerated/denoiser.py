"""The per-step model call (active ControlNets + UNet) as a function of tensors only, for the accelerator.

Everything that varies between frames is a tensor argument (latents, timestep as a 0-dim tensor, prompt
embedding, guidance embedding, hints, ControlNet scales as 0-dim tensors), so one compiled/captured version
serves every frame of a shape: a Python number would be baked in and force a recompile whenever it changed.
What selects the code path (which ControlNets act, whether there is a guidance embedding, inpaint channels or
SDXL's added conditioning) is part of the accelerator key instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..loop import StepInputs, sum_control_residuals
from .accelerator import Accelerator
from .static_call import TensorFn


def build_denoiser(
    unet: Any,
    control_models: Sequence[Any],
    has_timestep_cond: bool,
    has_extra: bool,
    has_added: bool = False,
) -> TensorFn:
    """fn(sample, timestep, embeddings, [timestep_cond], [extra], [text_embeds, time_ids], *hints, *scales)
    -> noise prediction: what loop.EagerPredictor computes for the same step (ControlNet residuals summed by
    the same function, the extra channels concatenated the same way, SDXL's added conditioning passed the
    same way), with the step's values as tensors."""
    controls = tuple(control_models)
    count = len(controls)

    def predict(sample: torch.Tensor, timestep: torch.Tensor, embeddings: torch.Tensor, *rest: torch.Tensor):
        index = 0
        timestep_cond = None
        if has_timestep_cond:
            timestep_cond, index = rest[0], 1
        extra = None
        if has_extra:
            extra, index = rest[index], index + 1
        added: dict[str, Any] = {}
        if has_added:
            added = {"added_cond_kwargs": {"text_embeds": rest[index], "time_ids": rest[index + 1]}}
            index += 2
        hints, scales = rest[index : index + count], rest[index + count : index + 2 * count]
        residuals = sum_control_residuals(
            [
                model(
                    sample,
                    timestep,
                    encoder_hidden_states=embeddings,
                    controlnet_cond=hint,
                    conditioning_scale=scale,
                    return_dict=False,
                    **added,
                )
                for model, hint, scale in zip(controls, hints, scales, strict=True)
            ]
        )
        unet_input = sample if extra is None else torch.cat([sample, extra], dim=1)
        return unet(
            unet_input,
            timestep,
            encoder_hidden_states=embeddings,
            timestep_cond=timestep_cond,
            return_dict=False,
            **added,
            **residuals,
        )[0]

    return predict


@dataclass
class AcceleratedPredictor:
    """A `loop.Predictor` like loop.EagerPredictor, routed through the accelerator."""

    accelerator: Accelerator
    unet: Any
    # ControlNet scales as device tensors, made once per value: a new tensor from a Python float is a
    # blocking host-to-device copy that would stall the CPU until the GPU finished the previous step.
    _scales: dict[tuple[float, torch.device], torch.Tensor] = field(default_factory=dict)

    def __call__(self, step: StepInputs) -> torch.Tensor:
        active = step.active_controls()  # the eager path's selection
        guidance, extra = step.guidance, step.extra
        device = step.model_input.device
        args: list[torch.Tensor] = [step.model_input, _as_0dim(step.timestep, device), step.embeddings]
        if guidance.timestep_cond is not None:
            args.append(guidance.timestep_cond)
        if extra is not None:
            args.append(extra)
        if guidance.added is not None:
            args += added_inputs(guidance.added)
        args += [guidance.repeat(c.image) for c, _ in active]
        args += [self._scale(s, device) for _, s in active]
        models = tuple(c.model for c, _ in active)
        for model in (self.unet, *models):
            self.accelerator.prepare_module(model)
        has_cond, has_extra, has_added = (
            guidance.timestep_cond is not None,
            extra is not None,
            guidance.added is not None,
        )
        key = ("denoise", id(self.unet), tuple(id(m) for m in models), has_cond, has_extra, has_added)
        return self.accelerator.call(
            key, lambda: build_denoiser(self.unet, models, has_cond, has_extra, has_added), args
        )

    def _scale(self, value: float, device: torch.device) -> torch.Tensor:
        key = (value, device)
        tensor = self._scales.get(key)
        if tensor is None:
            tensor = self._scales[key] = torch.tensor(value, dtype=torch.float32, device=device)
        return tensor


def added_inputs(added: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """SDXL's added conditioning as the denoiser's positional inputs, in its order."""
    return [added["text_embeds"], added["time_ids"]]


def _as_0dim(timestep: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """Timesteps as 0-dim device tensors: a Python number would be a constant to torch.compile."""
    if not isinstance(timestep, torch.Tensor):
        timestep = torch.tensor(timestep)
    return timestep.reshape(()).to(device)
