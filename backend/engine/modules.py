"""Cheap facts about loaded models, for the per-frame path."""

from __future__ import annotations

from typing import Any, cast

import torch


def model_dtype(model: Any) -> torch.dtype:
    """The dtype of a model's weights: that of its first floating-point parameter.

    diffusers' `ModelMixin.dtype` walks every submodule on each access (1.4 ms for the SD1.5 UNet on this
    project's CPU, and a frame asks several models several times); the first parameter gives the same answer
    for models loaded in one dtype, as the model cache loads them.
    """
    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
    # diffusers' ModelMixin.dtype property; torch's stubs type other Module attributes as Tensor | Module.
    return cast(torch.dtype, model.dtype)
