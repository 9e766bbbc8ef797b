"""TAESD encode/decode through the accelerator (the full VAE's encode samples from the job's CPU generator,
which a captured graph can't do, and it only serves final renders anyway)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import vae as vae_codec
from ..modules import model_dtype
from .accelerator import Accelerator


def is_tiny_autoencoder(vae: Any) -> bool:
    """AutoencoderTiny (TAESD): deterministic latents, no distribution to sample."""
    return type(vae).__name__ == "AutoencoderTiny"


@dataclass
class AcceleratedTaesd:
    accelerator: Accelerator
    vae: Any

    def __post_init__(self) -> None:
        self.accelerator.prepare_module(self.vae)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        image = image.to(dtype=model_dtype(vae))
        return self.accelerator.call(
            ("taesd-encode", id(vae)), lambda: lambda x: vae_codec.encode(vae, x, None), [image]
        )

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        latents = latents.to(dtype=model_dtype(vae))
        return self.accelerator.call(
            ("taesd-decode", id(vae)), lambda: lambda z: vae_codec.decode(vae, z), [latents]
        )
