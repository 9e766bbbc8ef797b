"""The diffusion engine: LCM few-step img2img and selection inpaint, with ControlNets, on diffusers model
classes.

The job/result types import cheaply (no torch); `Engine` and `select_device` load torch and are imported on
first use, so the server can import this package on its start-up path.

    engine = Engine(model_cache, device, dtype)
    result = engine.run(EngineJob("img2img", params, canvas_rgba), on_progress, is_cancelled)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .jobs import EngineInputError, EngineJob, EngineResult, JobCancelled
from .model_choice import LoraSpec, ModelChoice

if TYPE_CHECKING:
    from .accelerated import AcceleratorSettings
    from .device import DeviceChoice, select_device
    from .engine import Engine, EngineSettings

__all__ = [
    "AcceleratorSettings",
    "DeviceChoice",
    "Engine",
    "EngineInputError",
    "EngineJob",
    "EngineResult",
    "EngineSettings",
    "JobCancelled",
    "LoraSpec",
    "ModelChoice",
    "select_device",
]

_LAZY = {
    "AcceleratorSettings": "accelerated",
    "Engine": "engine",
    "EngineSettings": "engine",
    "select_device": "device",
    "DeviceChoice": "device",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
