"""A union ControlNet driven as one control kind: the call a plain ControlNet takes, turned into the union
model's (its hint in a list, the kind's mode as a one-hot `control_type` per batch row, as diffusers' union
pipelines pass them), so the loop, the accelerated path and the low-VRAM residency treat it as any
ControlNet. Several controls on one union file each make their own call, their residuals summed as for
separate ControlNets.
"""

from __future__ import annotations

from typing import Any

import torch

from protocol.registry import CONTROL_KINDS

from .jobs import EngineInputError


def is_union_controlnet(model: Any) -> bool:
    return type(model).__name__ == "ControlNetUnionModel"


class UnionControl(torch.nn.Module):
    """One control kind's view of a union ControlNet (the module is shared, not copied)."""

    def __init__(self, union: Any, mode: int) -> None:
        super().__init__()
        self.union = union
        self.mode = mode
        self.modes = int(union.config.num_control_type)
        # Made once per device and batch: a host-to-device copy inside a captured CUDA graph is not allowed.
        self._control_types: dict[tuple[torch.device, torch.dtype, int], torch.Tensor] = {}

    def control_type(self, device: torch.device, dtype: torch.dtype, rows: int) -> torch.Tensor:
        key = (device, dtype, rows)
        made = self._control_types.get(key)
        if made is None:
            one_hot = torch.zeros(self.modes).scatter_(0, torch.tensor([self.mode]), 1)
            made = self._control_types[key] = one_hot.reshape(1, -1).to(device, dtype).repeat(rows, 1)
        return made

    @property
    def config(self) -> Any:
        return self.union.config

    @property
    def dtype(self) -> torch.dtype:
        return self.union.dtype

    def forward(
        self, sample: torch.Tensor, timestep: Any, *, controlnet_cond: torch.Tensor, **kwargs: Any
    ) -> Any:
        dtype = kwargs["encoder_hidden_states"].dtype
        return self.union(
            sample,
            timestep,
            controlnet_cond=[controlnet_cond],
            control_type=self.control_type(sample.device, dtype, sample.shape[0]),
            control_type_idx=[self.mode],
            **kwargs,
        )


def as_kind(model: Any, kind: str, name: str) -> Any:
    """`model` ready to guide a control of `kind`: a union ControlNet in that kind's mode, others as they
    are. A kind the union has no mode for is refused, naming the file."""
    if not is_union_controlnet(model):
        return model
    mode = CONTROL_KINDS[kind].union_mode
    modes = int(model.config.num_control_type)
    if mode is None or mode >= modes:
        raise EngineInputError(
            f"The union ControlNet {name!r} has no {kind} mode: use a {kind} ControlNet for this control."
        )
    # One view per mode and model, kept with the model: the accelerated path knows its calls by their
    # models, and a new view each job would capture them anew.
    views: dict[int, UnionControl] = model.__dict__.setdefault("_kind_views", {})
    if mode not in views:
        views[mode] = UnionControl(model, mode)
    return views[mode]
