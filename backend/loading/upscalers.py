"""Upscale models (`models/upscale_models/`: ESRGAN, Real-ESRGAN, SwinIR, DAT, ...) loaded with spandrel.

spandrel tells a file's architecture and hyper-parameters from its tensor names and shapes and builds the
model; we only read the weights, safely: `.safetensors` as they are, `.pth`/`.pt` with
`torch.load(weights_only=True)` (never spandrel's own pickle or TorchScript readers, which run more than
tensors). A model must enlarge 3-channel images (scale 2 or more); restoration (1x) and face models are
refused with the reason.

An `Upscaler` runs one tile at a time (backend/engine/upscale.py tiles the image): uint8 RGB in, uint8 RGB
`scale` times larger out, so a large image never has to be on the device at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pickle
import sys
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.loading.files import read_tensors
from backend.model_errors import ModelError

log = logging.getLogger(__name__)

KIND = "upscale_models"
PICKLE_SUFFIXES = (".pth", ".pt")


NO_DEPS_REQUIREMENTS = "requirements-nodeps.txt"  # spandrel's pin, installed with --no-deps (it says why)


def import_spandrel() -> Any:
    """spandrel, imported even where torchvision can't load; ModelError when it isn't installed.

    spandrel imports torchvision for two architectures that are no upscalers (LaMa inpainting and
    RestoreFormer face restoration). Without torchvision, or with one built for another torch (PyPI's CUDA
    build beside a CPU torch: "operator torchvision::nms does not exist"), spandrel would not import at all.
    Then placeholder modules, whose functions say why they can't run, stand in for torchvision while
    spandrel imports, and are taken away again: other libraries (transformers asks) still find no
    torchvision."""
    loaded = sys.modules.get("spandrel")
    if loaded is not None:
        return loaded
    if importlib.util.find_spec("spandrel") is None:
        raise ModelError(
            "Upscale models need the spandrel package: install it with "
            f"`pip install --no-deps -r {NO_DEPS_REQUIREMENTS}` in the backend's environment (plain Lanczos "
            "upscaling works without it)."
        )
    try:
        importlib.import_module("torchvision.transforms.functional")
    except (ImportError, RuntimeError, OSError) as error:
        why = f"{type(error).__name__}: {error}"
        for name in [name for name in sys.modules if name.split(".")[0] == "torchvision"]:
            del sys.modules[name]  # a half-imported torchvision would fail again on the next import
        stand_ins = _torchvision_stand_ins(why)
        sys.modules.update(stand_ins)
        try:
            return importlib.import_module("spandrel")
        finally:
            for name in stand_ins:
                sys.modules.pop(name, None)
            log.info("torchvision can't be loaded (%s); upscale models that need it are refused", why)
    return importlib.import_module("spandrel")


def _torchvision_stand_ins(why: str) -> dict[str, types.ModuleType]:
    """The torchvision modules spandrel imports from, with what it takes from them."""

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise ModelError(f"This model needs torchvision, which can't be loaded here ({why}).")

    functional = types.ModuleType("torchvision.transforms.functional")
    for attribute in ("rotate", "normalize", "resize", "to_tensor"):
        setattr(functional, attribute, unavailable)
    functional.InterpolationMode = types.SimpleNamespace(  # type: ignore[attr-defined]
        NEAREST="nearest", BILINEAR="bilinear", BICUBIC="bicubic"
    )
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.transforms = transforms  # type: ignore[attr-defined]
    package.__path__ = []  # a package, so its submodules import from sys.modules
    return {
        "torchvision": package,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    }


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights of an upscale model file, unwrapped from the containers training code saves them in
    (Real-ESRGAN's `params_ema`, `params`, `model`, `state_dict`, ...; spandrel's own list)."""
    what = f"Upscale model {path.name}"
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _canonical(read_tensors(path, "Upscale model"), what)
    if suffix not in PICKLE_SUFFIXES:
        raise ModelError(f"{what}: unsupported file type {suffix!r}; use a .pth or .safetensors file.")
    try:
        data: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        damaged = not zipfile.is_zipfile(path)
        why = "is not a readable PyTorch file" if damaged else "holds Python objects besides weights"
        raise ModelError(f"{what} {why}; use a .safetensors version of it.") from error
    except Exception as error:  # garbage makes the unpickler raise IndexError, KeyError and more
        raise ModelError(f"{what} is not a readable PyTorch file ({error}): download it again.") from error
    if not isinstance(data, dict):
        raise ModelError(f"{what} holds no named weights.")
    return _canonical(data, what)


def _canonical(data: dict[str, Any], what: str) -> dict[str, torch.Tensor]:
    """The weights unwrapped and without a prefix common to all of them ("module.", "netG."), as spandrel
    detects architectures from them."""
    canonical = import_spandrel().canonicalize_state_dict(data)
    tensors = {str(k): v for k, v in canonical.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"{what} holds no weights.")
    return tensors


@dataclass
class Upscaler:
    """A loaded upscale model: `scale` times larger, 3 channels in and out."""

    name: str
    architecture: str  # spandrel's name for it ("ESRGAN", "RealESRGAN Compact", ...)
    scale: int
    descriptor: Any  # spandrel's ImageModelDescriptor
    device: torch.device
    dtype: torch.dtype

    @property
    def model(self) -> torch.nn.Module:
        return self.descriptor.model

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 -> (H * scale) x (W * scale) x 3 uint8, rounded."""
        image = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device)
        image = image.permute(2, 0, 1)[None].to(self.dtype) / 255.0
        with torch.inference_mode():
            output = self.descriptor(image)  # [0, 1], clamped by spandrel
        pixels = (output[0].permute(1, 2, 0).float() * 255.0).round().clamp(0, 255).to(torch.uint8)
        return pixels.cpu().numpy()


def load_upscaler(
    path: Path, name: str, device: torch.device, dtype: torch.dtype, home: torch.device | None = None
) -> Upscaler:
    """The upscale model in `path`, to run on `device` and kept on `home` (the device, unless the engine's
    low-VRAM residency brings it there per job); ModelError (with a painter's reason) when it can't be one.

    `dtype` is used where the architecture supports it (float16 on GPUs); float32 otherwise."""
    spandrel = import_spandrel()
    state_dict = read_state_dict(path)
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError:
        raise ModelError(
            f"Upscale model {name!r} is of no architecture the upscaler library knows (ESRGAN, Real-ESRGAN, "
            "SwinIR, DAT, HAT, SPAN, ...)."
        ) from None
    except (ValueError, KeyError, RuntimeError, AssertionError) as error:
        raise ModelError(
            f"Upscale model {name!r} can't be loaded ({type(error).__name__}: {error})."
        ) from None
    problem = _not_an_upscaler(descriptor, spandrel)
    if problem is not None:
        raise ModelError(f"{name!r} in upscale_models/ is not an upscale model: {problem}.")
    dtype = _usable_dtype(descriptor, device, dtype)
    descriptor.to(home or device).to(dtype).eval()
    return Upscaler(name, str(descriptor.architecture.name), int(descriptor.scale), descriptor, device, dtype)


def _not_an_upscaler(descriptor: Any, spandrel: Any) -> str | None:
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        return f"it is a {descriptor.purpose} model"
    if descriptor.scale < 2:
        return f"it is a {descriptor.purpose} model that keeps the size (1x)"
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        return (
            f"it takes {descriptor.input_channels} and gives {descriptor.output_channels} channels, not RGB"
        )
    return None


def _usable_dtype(descriptor: Any, device: torch.device, wanted: torch.dtype) -> torch.dtype:
    if device.type == "cpu":
        return torch.float32  # half precision convolutions are slow or missing on CPUs
    if wanted == torch.float16 and descriptor.supports_half:
        return torch.float16
    if wanted == torch.bfloat16 and descriptor.supports_bfloat16:
        return torch.bfloat16
    return torch.float32


class UpscalerCache:
    """Keeps the last upscale model loaded (a painter upscales with one model, many times); a file changed
    on disk is read again."""

    def __init__(self, device: torch.device, dtype: torch.dtype, home: torch.device | None = None) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.home = torch.device(home) if home is not None else self.device
        self._kept: tuple[tuple[str, int, int], Upscaler] | None = None
        self.loads = 0

    def get(self, store: Any, name: str) -> Upscaler:
        """The model `name` of the store's upscale_models (ModelError when it can't be found or loaded)."""
        path = store.resolve(KIND, name)
        try:
            stat = path.stat()
        except OSError as error:
            raise ModelError(f"Upscale model {name!r} can't be opened ({error.strerror or error}).") from None
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if self._kept is not None and self._kept[0] == key:
            return self._kept[1]
        self._kept = None  # the old model's memory goes before the new one comes
        upscaler = load_upscaler(path, name, self.device, self.dtype, self.home)
        self.loads += 1
        self._kept = (key, upscaler)
        return upscaler
