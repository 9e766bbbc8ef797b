"""Everything one generation needs once models, prompts and sampler are resolved."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .loop import CancelCheck, ControlUnit, Guidance, ProgressCallback
from .samplers import Schedule


@dataclass
class GenerationContext:
    unet: Any
    vae: Any
    schedule: Schedule
    guidance: Guidance
    generator: torch.Generator  # CPU generator: the same seed gives the same noise on every device
    device: torch.device
    dtype: torch.dtype
    on_progress: ProgressCallback
    is_cancelled: CancelCheck
    controls: Sequence[ControlUnit] = ()
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Adds the wall time of the block to timings[phase] (GPU work is synchronized so it lands in its
        phase)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """Gaussian noise drawn on the CPU from the job's generator, then moved (as diffusers' randn_tensor
        does)."""
        return torch.randn(tuple(shape), generator=self.generator, device="cpu", dtype=self.dtype).to(
            self.device
        )
