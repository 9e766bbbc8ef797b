"""The accelerated (static-shape) path for live frames: shape buckets, captured/compiled model calls with
static buffers, background warm-up, persistent compile caches and pinned host buffers.

Everything here is optional: `resolve_mode("auto", device)` picks eager on CPU/MPS, and any call the
accelerator can't serve (not warmed up yet, capture failed) runs the plain eager function, which gives the
same result.
"""

from __future__ import annotations

from .accelerator import ACCELERATE_MODES, Accelerator, AcceleratorSettings
from .buckets import bucket_side

__all__ = ["ACCELERATE_MODES", "Accelerator", "AcceleratorSettings", "bucket_side"]
