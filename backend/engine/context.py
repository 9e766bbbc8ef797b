"""Everything one generation needs once models, prompts and sampler are resolved."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from . import vae as vae_codec
from .loop import CancelCheck, ControlUnit, Guidance, Predictor, ProgressCallback, StepHook, denoise
from .residency import Residency
from .samplers import Schedule


class VaeCalls(Protocol):
    """Replacement encode/decode (the accelerated TAESD calls); same contract as vae.encode/vae.decode."""

    def encode(self, image: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


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
    predict: Predictor | None = None  # None: the plain UNet call (loop.EagerPredictor)
    vae_calls: VaeCalls | None = None  # None: vae.encode / vae.decode on `vae`
    before_step: StepHook | None = None  # called before each step's model call (engine/references.py)
    residency: Residency = field(default_factory=lambda: Residency(torch.device("cpu")))  # low-VRAM moves
    # What the job's result reports of how it ran (the engine's effective params): `vae_tiled`.
    notes: dict[str, Any] = field(default_factory=dict[str, Any])

    def _vae_resident(self) -> AbstractContextManager[None]:
        return self.residency.using(self.vae)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] -> latents in the UNet's scale and dtype."""
        if self.vae_calls is not None:
            return self.vae_calls.encode(image).to(self.dtype)
        return self._vae_call(lambda: vae_codec.encode(self.vae, image, self.generator)).to(self.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae_calls is not None:
            return self.vae_calls.decode(latents)
        return self._vae_call(lambda: vae_codec.decode(self.vae, latents))

    def _vae_call(self, call: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The VAE call, repeated in tiles when the whole image ran out of device memory (vae.py)."""
        with self._vae_resident():
            try:
                return call()
            except torch.OutOfMemoryError:
                if not vae_codec.can_tile(self.vae):
                    raise
            # (Outside the handler: the error's frames hold the failed call's tensors until it is left.)
            vae_codec.log.warning("The VAE ran out of device memory: repeating the call in tiles")
            vae_codec.release_cached_memory(self.device)
            self.notes["vae_tiled"] = True
            with vae_codec.tiling(self.vae):
                return call()

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

    def denoise(self, latents: torch.Tensor, **mode_inputs: Any) -> torch.Tensor:
        """The few-step loop with this job's schedule, guidance, controls and callbacks (see loop.denoise);
        `mode_inputs` are what a mode adds: `hold` (inpaint) or `inpaint_channels` (9-channel UNets)."""
        with self.timed("denoise"), self.residency.using(self.unet, *(c.model for c in self.controls)):
            return denoise(
                self.unet,
                self.schedule,
                latents,
                self.guidance,
                self.generator,
                self.on_progress,
                self.is_cancelled,
                controls=self.controls,
                predict=self.predict,
                before_step=self.before_step,
                **mode_inputs,
            )

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """Gaussian noise drawn on the CPU from the job's generator, then moved (as diffusers' randn_tensor
        does)."""
        return torch.randn(tuple(shape), generator=self.generator, device="cpu", dtype=self.dtype).to(
            self.device
        )
