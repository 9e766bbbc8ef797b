"""Pick the torch device and dtype the engine runs on: CUDA fp16, else MPS fp16, else CPU fp32, unless
overridden."""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

# Environment override, so a painter can force e.g. the CPU without touching the command line.
DEVICE_ENV = "LIVE_DIFFUSION_DEVICE"
DTYPE_ENV = "LIVE_DIFFUSION_DTYPE"

_DTYPES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


class DeviceChoice(NamedTuple):
    """Unpacks as `device, dtype = select_device(...)`."""

    device: torch.device
    dtype: torch.dtype

    @property
    def label(self) -> str:
        """Human-readable description for the handshake, e.g. 'cuda:0 (NVIDIA H100) float16'."""
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        return f"{name} {str(self.dtype).removeprefix('torch.')}"


def parse_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"Unknown dtype {name!r}; use one of fp16, bf16, fp32.") from None


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(device: str | None = None, dtype: str | None = None) -> DeviceChoice:
    """Resolve the device and dtype.

    `device` is "auto" (or None), "cuda", "cuda:N", "mps" or "cpu"; `dtype` is "fp16", "bf16", "fp32" or None
    for the device's default. Half precision is the default on GPUs (twice the speed, half the memory); the
    CPU gets fp32 because CPU half-precision kernels are slow or missing. The environment variables
    LIVE_DIFFUSION_DEVICE and LIVE_DIFFUSION_DTYPE are read when the arguments are None.
    """
    device = device or os.environ.get(DEVICE_ENV) or "auto"
    dtype = dtype or os.environ.get(DTYPE_ENV) or None
    device = device.strip().lower()
    if device == "auto":
        if torch.cuda.is_available():
            chosen = torch.device("cuda")
        elif _mps_available():
            chosen = torch.device("mps")
        else:
            chosen = torch.device("cpu")
    else:
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise ValueError(f"Unknown device {device!r}; use auto, cuda, cuda:N, mps or cpu.") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("CUDA was requested but this torch build has no usable CUDA device.")
        if chosen.type == "mps" and not _mps_available():
            raise ValueError("MPS was requested but is not available on this machine.")
    if dtype is not None:
        resolved = parse_dtype(dtype)
    else:
        resolved = torch.float32 if chosen.type == "cpu" else torch.float16
    return DeviceChoice(chosen, resolved)
