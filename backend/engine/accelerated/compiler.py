"""torch.compile with a persistent cache, so that the second start of the backend finds its kernels ready.

Inductor and Triton keep compiled kernels in cache folders; by default those live under /tmp, which many
systems clear at reboot. We point them at the user's cache folder unless the user set them already.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CACHE_ENV = "LIVE_DIFFUSION_CACHE_DIR"


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "krita-live-diffusion" / "torch-compile"


def use_cache_dir(path: str | Path | None) -> Path:
    """Set inductor's and Triton's cache folders (only where not already set) before anything compiles."""
    folder = Path(path) if path else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    # The FX graph cache lets a warm start skip most of inductor's work; it is on by default in recent torch,
    # but older builds need the switch.
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    return folder


# Inductor settings that trade a longer compile for faster convolution-heavy graphs (PyTorch's published
# recipe for diffusion models): 1x1 convolutions as matmuls, coordinate-descent tuning of kernel launch
# parameters, no epilogue fusion (it blocks better matmul templates). AcceleratorSettings.compile_options.
TUNED_INDUCTOR_OPTIONS: dict[str, Any] = {
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "coordinate_descent_check_all_directions": True,
    "epilogue_fusion": False,
}


def inductor_options(mode: str | None, options: dict[str, Any] | None) -> dict[str, Any] | None:
    """torch.compile takes a mode or options, not both: a mode's own options with `options` over them."""
    if not options:
        return None
    from torch._inductor import list_mode_options

    return {**(list_mode_options(mode) if mode else {}), **options}


def compile_function(
    fn: Any, backend: str | None, mode: str | None, options: dict[str, Any] | None = None
) -> Any:
    """torch.compile for one static shape. `backend` None = inductor; "eager"/"aot_eager" (tests, CPU) run
    dynamo's tracing and guards without generating kernels.

    dynamic=False: each shape bucket gets kernels specialised to it; the buckets keep their number small.
    Not fullgraph: a graph break costs a little speed, never correctness, and our own CUDA-graph capture
    around the compiled function removes the launch overhead of the pieces.
    """
    _allow_many_variants()
    if backend in (None, "inductor"):
        merged = inductor_options(mode, options)
        if merged is not None:
            return torch.compile(fn, backend="inductor", options=merged, dynamic=False)
        return torch.compile(fn, backend="inductor", mode=mode, dynamic=False)
    return torch.compile(fn, backend=backend, dynamic=False)


def _allow_many_variants() -> None:
    """Every slot compiles the same Python function (the step call) for another shape or ControlNet set;
    dynamo counts those as recompiles of one frame and, past its limit (8), silently runs it uncompiled.
    The accelerator bounds the number of slots itself (AcceleratorSettings.max_slots)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(config, name):
            setattr(config, name, max(int(getattr(config, name)), 64))
