"""Low-VRAM mode: the models stay in host memory and each comes to the GPU only for the phase that uses it.

A job's phases use different models: the text encoders for the prompt, the VAE to encode the image, the UNet
and ControlNets to denoise, the VAE again to decode. On a 6-8 GB card an SDXL checkpoint in fp16 (UNet 5 GB,
bigG 1.4 GB, VAE 0.2 GB) does not fit at once but each phase does. Moving a module keeps its Parameter
objects (`Module.to` swaps their data), so fused LoRAs and caches keyed by module identity stay valid, and
the arithmetic is the same on the same device: results are identical to the resident mode.

The accelerated path is off in this mode: CUDA graphs hold the weights' device addresses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

Move = Callable[[torch.nn.Module, torch.device], None]


def move_module(module: torch.nn.Module, device: torch.device) -> None:
    torch.nn.Module.to(module, device=device)


class Residency:
    """Which models are on the compute device now. Disabled (the default): every model always is."""

    def __init__(
        self, device: torch.device, enabled: bool = False, home: str = "cpu", move: Move = move_module
    ) -> None:
        self.device = torch.device(device)
        self.home = torch.device(home)
        self.enabled = enabled
        self.move = move
        self._on_device: list[torch.nn.Module] = []

    @contextmanager
    def using(self, *modules: Any) -> Iterator[None]:
        """Within the block, `modules` (None entries ignored) are on the device and no other model is."""
        if self.enabled:
            wanted = [m for m in modules if m is not None]
            for module in self._on_device:
                if not any(module is w for w in wanted):
                    self.move(module, self.home)
            for module in wanted:
                if not any(module is m for m in self._on_device):
                    self.move(module, self.device)
            self._on_device = wanted
        yield

    def release(self) -> None:
        """Everything back home (a checkpoint switch: the cache frees the old models)."""
        if self.enabled:
            for module in self._on_device:
                self.move(module, self.home)
            self._on_device = []
