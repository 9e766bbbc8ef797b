"""The largest images a job may have on this machine: what its memory holds, stated in the welcome's limits.

A job's cost has two parts. The engine renders at the model's working size (about its native area, times the
job's `resolution` squared), so its buffers on the device and the model itself don't grow with the canvas.
What does grow with it lives in host memory on every device (CUDA included): the received frames, the decoded
canvas, mask and control images, their compositing and resampling down to the working size, and the result.
Measured through the real server (bench/job_memory.py: img2img and inpaint with a mask and a scribble, a
non-opaque canvas, raw and PNG results) that is 41-52 bytes per canvas pixel at the peak; BYTES_PER_PIXEL
rounds it up. The limit is the side of the square that fits in a share of the memory available, after room
for the model, never above the configured limit: a job within it can't take the machine's memory, and the
welcome says so instead of promising 4096 x 4096 to a machine that can't hold it.

Memory comes and goes after start-up (the painter opens Krita's largest document), so the figure is read again
at each client's handshake (JobSizeLimits): what that client's welcome states is what the server holds that
client to for as long as it stays connected. A limit never changes under a connected client's feet, and each
new client is told what the memory holds then.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from pathlib import Path

from protocol import Limits

log = logging.getLogger("backend.job_size")

BYTES_PER_PIXEL = 64  # host memory one canvas pixel costs a job at its peak (measured 41-52, see above)
SHARE = 0.5  # of the available memory, for one job; the rest: queued jobs' images, replies, the allocator
# A loaded checkpoint's host memory per byte of its file: fp16 files load as fp32 on the CPU; on GPUs the
# host copy is transient but has to fit while the model loads.
MODEL_MEMORY_PER_FILE_BYTE = 2
MIN_SIDE = 512  # below the SD1.5 working size nothing useful runs; a machine that can't hold this can't serve
SIDE_STEP = 64


def available_memory_bytes() -> int | None:
    """Memory the system can give this process without swapping (Linux: MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # other Unixes: free pages (ignores reclaimable caches, so errs on the small side)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None  # Windows: no cheap figure; the configured limit stands


def fitting_side(memory_bytes: int) -> int:
    """The side of the largest square canvas whose job fits in `memory_bytes`, in steps of SIDE_STEP."""
    pixels = max(0, int(memory_bytes * SHARE)) // BYTES_PER_PIXEL
    return max(MIN_SIDE, math.isqrt(pixels) // SIDE_STEP * SIDE_STEP)


def fit_limits(limits: Limits, model_file: Path | None = None, quiet: bool = False) -> Limits:
    """`limits` with max_width/max_height lowered to what this machine's memory holds (never raised).
    `quiet`: no warning when they are lowered."""
    available = available_memory_bytes()
    if available is None:
        return limits
    model = model_bytes(model_file) * MODEL_MEMORY_PER_FILE_BYTE if model_file is not None else 0
    side = fitting_side(available - model)
    if side >= max(limits.max_width, limits.max_height):
        return limits
    (log.debug if quiet else log.warning)(
        "largest image side lowered to %d (configured %dx%d): %d MiB of memory available, %d MiB of it "
        "kept for the model",
        side,
        limits.max_width,
        limits.max_height,
        available // 2**20,
        model // 2**20,
    )
    return replace(limits, max_width=min(side, limits.max_width), max_height=min(side, limits.max_height))


class JobSizeLimits:
    """The limits to give a client that connects now: the configured ones fitted to the memory available
    now. Logs when the fitted side changes (not at every handshake)."""

    def __init__(self, configured: Limits, model_file: Path | None) -> None:
        self.configured = configured
        self.model_file = model_file
        self._last_side: int | None = None

    def now(self) -> Limits:
        fitted = fit_limits(self.configured, self.model_file, quiet=True)
        side = max(fitted.max_width, fitted.max_height)
        if side != self._last_side:
            if self._last_side is not None:
                log.info("largest image side for new clients: %d (memory available changed)", side)
            self._last_side = side
        return fitted


def model_bytes(path: Path) -> int:
    """The size of a checkpoint file, or of a diffusers folder's weights."""
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*.safetensors") if f.is_file())
        return path.stat().st_size
    except OSError:
        return 0
