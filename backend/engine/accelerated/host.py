"""uint8 pixels between the host and the GPU through pinned buffers, converted on the device.

The plain path converts on the CPU in numpy (float32 arrays four times the size of the pixels) and copies
pageable memory. Live frames instead copy the uint8 pixels (a quarter of the bytes) from page-locked buffers,
which the GPU reads by DMA, and do the float arithmetic on the device. The arithmetic is the same as
images.to_tensor / to_unit_float / to_uint8, in the same order and precision, so the values are identical.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch


def pixels_to_model(pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """H x W x 3 uint8 (on the device) -> 1 x 3 x H x W in [-1, 1] (as images.to_tensor)."""
    unit = pixels.permute(2, 0, 1)[None].to(torch.float32) / 255.0
    return (2.0 * unit - 1.0).to(dtype)


def model_to_pixels(decoded: torch.Tensor) -> torch.Tensor:
    """1 x 3 x H x W decoder output -> H x W x 3 uint8 on its device (as to_uint8(to_unit_float(...)))."""
    unit = (decoded / 2 + 0.5).clamp(0, 1)
    return (unit[0].permute(1, 2, 0).float() * 255).round().to(torch.uint8)


# Page-locked buffers kept (per direction and image size); the least recently used beyond that are freed, so a
# painter who works on many canvas and selection sizes doesn't pin ever more memory.
MAX_PINNED_BUFFERS = 8


class HostStaging:
    def __init__(self, device: torch.device, max_buffers: int = MAX_PINNED_BUFFERS) -> None:
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda"
        self.max_buffers = max_buffers
        self._buffers: OrderedDict[tuple[str, tuple[int, ...]], torch.Tensor] = OrderedDict()
        self._copied: dict[tuple[int, ...], torch.cuda.Event] = {}  # an upload buffer's copy in flight

    def _buffer(self, role: str, shape: tuple[int, ...]) -> torch.Tensor:
        key = (role, shape)
        buffer = self._buffers.pop(key, None)
        if buffer is None:
            buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=self.pinned)
        self._buffers[key] = buffer
        while len(self._buffers) > self.max_buffers:
            (old_role, old_shape), _ = self._buffers.popitem(last=False)
            in_flight = self._copied.pop(old_shape, None) if old_role == "in" else None
            if in_flight is not None:
                in_flight.synchronize()  # the GPU may still be reading it
        return buffer

    @property
    def buffer_count(self) -> int:
        return len(self._buffers)

    def upload(self, rgb: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """H x W x 3 uint8 -> 1 x 3 x H x W in [-1, 1] on the device (as images.to_tensor)."""
        return pixels_to_model(self.upload_pixels(rgb), dtype)

    def upload_pixels(self, rgb: np.ndarray) -> torch.Tensor:
        """H x W x 3 uint8 -> the same uint8 pixels on the device."""
        if not self.pinned:
            pixels = torch.from_numpy(np.require(rgb, requirements=["C", "W"])).to(self.device)
        else:
            host = self._buffer("in", rgb.shape)
            in_flight = self._copied.get(rgb.shape)
            if in_flight is not None:
                in_flight.synchronize()  # the previous frame's copy must have read the buffer first
            host.numpy()[...] = rgb
            pixels = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self._copied[rgb.shape] = event
        return pixels

    def download(self, decoded: torch.Tensor) -> np.ndarray:
        """1 x 3 x H x W decoder output -> H x W x 3 uint8 (as images.to_uint8(images.to_unit_float(...))).

        On CUDA the array is a view of a pinned buffer that the next download overwrites: callers copy it
        (the engine always builds a new RGBA array from it).
        """
        return self.download_pixels(model_to_pixels(decoded))

    def download_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """H x W x 3 uint8 on the device -> a host array (on CUDA: a view of a pinned buffer, as download)."""
        if not self.pinned:
            return pixels.cpu().numpy()
        host = self._buffer("out", tuple(pixels.shape))
        host.copy_(pixels, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host.numpy()
