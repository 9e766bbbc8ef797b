"""The estimator models behind "from image" control layers (backend/engine/annotate.py runs them), found in
the `annotators/` folder of each models folder:

- **Depth**: a transformers depth-estimation model folder as published on Hugging Face, e.g.
  `annotators/depth-anything-small-hf/` (LiheYoung/depth-anything-small-hf) or
  `annotators/Depth-Anything-V2-Small-hf/`: `config.json` beside `model.safetensors`, and
  `preprocessor_config.json` for its input size and normalization. Loaded with transformers'
  AutoModelForDepthEstimation (Depth Anything, DPT/MiDaS, ...), .safetensors weights only.
- **Line art**: ControlNet 1.1's line-art annotator, `annotators/sk_model.pth` as lllyasviel/Annotators
  publishes it (read with `weights_only=True`), or a .safetensors file of the same weights whose name holds
  "lineart" or "sk_model".

Loaded models stay cached until their files change (backend.loading.stamps). A missing model is a
ModelNotFoundError that names the file or folder to put where.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backend.loading.files import read_tensors
from backend.loading.stamps import FileStamp, file_stamp
from backend.model_errors import ModelError, ModelNotFoundError

log = logging.getLogger(__name__)

FOLDER = "annotators"
LINEART_FILES = ("sk_model.pth", "sk_model.safetensors")
LINEART_WORDS = ("lineart", "sk_model")
WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt")
DEPTH_WEIGHTS = "model.safetensors"
# Depth Anything's preprocessing (its preprocessor_config.json): what a folder without that file gets.
DEPTH_SIZE = 518
DEPTH_MULTIPLE = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def annotator_dirs(store: Any) -> list[Path]:
    """`annotators/` of each models folder the store reads (the project's own first)."""
    roots = getattr(store, "roots", None)
    if roots:
        return [Path(root.path) / FOLDER for root in roots]
    return [
        Path(getattr(store, "root", None) or "models") / FOLDER
    ]  # stores without roots (tests' stand-ins)


def shown_folder(dirs: Sequence[Path]) -> str:
    """The folder messages point to (the project's own), with a trailing separator as the model files'
    messages have it, so that a client's redacted copy reads `annotators/`."""
    return f"{dirs[0]}{os.sep}"


# --- line art: ControlNet 1.1's annotator -------------------------------------------------------------------


class _ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        # Indices 1 and 5 hold the convolutions: the published weights are named after them.
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3),
            nn.InstanceNorm2d(width),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3),
            nn.InstanceNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class LineartGenerator(nn.Module):
    """The line-art annotator's network: an image-to-image ResNet generator (a 7x7 stem, two stride-2
    convolutions, residual blocks, two transposed convolutions back, a 7x7 head with a sigmoid). It maps
    RGB in [0, 1] to one channel where 1 is paper and 0 a line. The published file has width 64 and three
    blocks; the sizes are read from the weights, so a smaller file of the same layout loads too (tests)."""

    def __init__(self, width: int = 64, blocks: int = 3) -> None:
        super().__init__()
        wide, widest = width * 2, width * 4
        self.model0 = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(3, width, 7), nn.InstanceNorm2d(width), nn.ReLU()
        )
        self.model1 = nn.Sequential(
            nn.Conv2d(width, wide, 3, stride=2, padding=1),
            nn.InstanceNorm2d(wide),
            nn.ReLU(),
            nn.Conv2d(wide, widest, 3, stride=2, padding=1),
            nn.InstanceNorm2d(widest),
            nn.ReLU(),
        )
        self.model2 = nn.Sequential(*[_ResidualBlock(widest) for _ in range(blocks)])
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(widest, wide, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(wide),
            nn.ReLU(),
            nn.ConvTranspose2d(wide, width, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(width),
            nn.ReLU(),
        )
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(width, 1, 7), nn.Sigmoid())

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(rgb)))))

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], shown: str) -> LineartGenerator:
        stem = tensors.get("model0.1.weight")
        if stem is None or stem.ndim != 4 or tuple(stem.shape[1:]) != (3, 7, 7):
            raise ModelError(
                f"{shown} is not ControlNet 1.1's line-art annotator (sk_model.pth): its weights are "
                "named otherwise."
            )
        blocks = len({key.split(".")[1] for key in tensors if key.startswith("model2.")})
        model = cls(int(stem.shape[0]), blocks)
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as error:
            raise ModelError(f"{shown} does not fit the line-art annotator's layout: {error}") from None
        return model


def find_lineart(dirs: Sequence[Path]) -> Path | None:
    """The published name first, in each folder in order; then any weights file named for line art."""
    for folder in dirs:
        for name in LINEART_FILES:
            if (folder / name).is_file():
                return folder / name
    for folder in dirs:
        for path in _files(folder):
            lowered = path.name.lower()
            if path.suffix.lower() in WEIGHTS_SUFFIXES and any(word in lowered for word in LINEART_WORDS):
                return path
    return None


# --- depth: a transformers depth-estimation folder ---------------------------------------------------------


@dataclass
class DepthEstimator:
    """A loaded depth model and the input its preprocessor asks for."""

    model: Any  # a transformers *ForDepthEstimation model
    size: int = DEPTH_SIZE  # the side the processor aims at
    multiple: int = DEPTH_MULTIPLE  # each input side is a multiple of this (the patch size)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    keep_aspect_ratio: bool = True

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The model's input size for an image: DPT's processor rule (Depth Anything's too), in which the
        image is scaled as little as possible to reach the target on one side, aspect kept, each side then
        rounded to the nearest multiple."""
        scale_h, scale_w = self.size / height, self.size / width
        if self.keep_aspect_ratio:
            scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
        return _to_multiple(height * scale_h, self.multiple), _to_multiple(width * scale_w, self.multiple)


def _to_multiple(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def find_depth(dirs: Sequence[Path]) -> Path | None:
    """The first folder (by name, the project's models folder first) holding a depth-estimation config."""
    for folder in dirs:
        for candidate in sorted(_subfolders(folder), key=lambda p: p.name.casefold()):
            if _is_depth_folder(candidate):
                return candidate
    return None


def _is_depth_folder(folder: Path) -> bool:
    config = _read_json(folder / "config.json")
    if config is None:
        return False
    architectures = config.get("architectures") or []
    named = any(isinstance(a, str) and a.endswith("ForDepthEstimation") for a in architectures)
    return named or "depth" in folder.name.lower()


def load_depth(folder: Path, device: torch.device, dtype: torch.dtype) -> DepthEstimator:
    if not (folder / DEPTH_WEIGHTS).is_file():
        raise ModelError(
            f"The depth model folder {folder}{os.sep} has no {DEPTH_WEIGHTS} (only .safetensors weights "
            "are loaded): download that file into it."
        )
    from transformers import AutoModelForDepthEstimation

    try:
        model = AutoModelForDepthEstimation.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"The depth model in {folder}{os.sep} can't be loaded: {error}") from None
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    estimator = DepthEstimator(model)
    backbone = getattr(model.config, "backbone_config", None)
    patch = getattr(backbone, "patch_size", None) or getattr(model.config, "patch_size", None)
    if isinstance(patch, int) and patch > 0:
        estimator.multiple = patch
    processor = _read_json(folder / "preprocessor_config.json") or {}
    size = processor.get("size")
    if isinstance(size, dict) and isinstance(size.get("height"), int) and size["height"] > 0:
        estimator.size = int(size["height"])
    multiple = processor.get("ensure_multiple_of")
    if isinstance(multiple, int) and multiple > 0:
        estimator.multiple = multiple
    for key in ("image_mean", "image_std"):
        values = processor.get(key)
        if isinstance(values, list) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values):
            setattr(estimator, key.removeprefix("image_"), tuple(float(v) for v in values))
    if isinstance(processor.get("keep_aspect_ratio"), bool):
        estimator.keep_aspect_ratio = processor["keep_aspect_ratio"]
    return estimator


# --- the cache ---------------------------------------------------------------------------------------------


@dataclass
class _Loaded:
    path: Path
    stamp: FileStamp | None
    model: Any


@dataclass
class AnnotatorModels:
    """Finds, loads and keeps the estimator models of a model store on one device."""

    store: Any
    device: torch.device
    dtype: torch.dtype
    _loaded: dict[str, _Loaded] = field(default_factory=dict)

    @property
    def dirs(self) -> list[Path]:
        return annotator_dirs(self.store)

    def name(self, path: Path) -> str:
        """`path` as results name it: relative to its `annotators/` folder's models folder."""
        for folder in self.dirs:
            try:
                return f"{FOLDER}/{path.relative_to(folder).as_posix()}"
            except ValueError:
                continue
        return path.name

    def depth(self) -> tuple[DepthEstimator, str]:
        """The depth estimator and its name; ModelNotFoundError naming what to install when there is none."""
        folder = find_depth(self.dirs)
        if folder is None:
            raise ModelNotFoundError(
                "Depth from the image needs a depth estimator: put a Depth Anything model folder "
                "(config.json, model.safetensors and preprocessor_config.json, e.g. "
                "depth-anything/Depth-Anything-V2-Small-hf or LiheYoung/depth-anything-small-hf) in "
                f"{shown_folder(self.dirs)}"
            )
        return self._cached("depth", folder, lambda: load_depth(folder, self.device, self.dtype)), self.name(
            folder
        )

    def lineart(self) -> tuple[LineartGenerator, str]:
        """The line-art annotator and its name; ModelNotFoundError naming the file when it is missing."""
        path = find_lineart(self.dirs)
        if path is None:
            raise ModelNotFoundError(
                "Line art from the image needs ControlNet 1.1's line-art annotator: put sk_model.pth "
                f"(from lllyasviel/Annotators) in {shown_folder(self.dirs)}"
            )

        def load() -> LineartGenerator:
            model = LineartGenerator.from_tensors(read_tensors(path, "Line-art annotator"), path.name)
            return model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)

        return self._cached("lineart", path, load), self.name(path)

    def _cached(self, key: str, path: Path, load: Any) -> Any:
        stamp = file_stamp(path)
        held = self._loaded.get(key)
        if held is not None and held.path == path and held.stamp == stamp:
            return held.model
        self._loaded.pop(key, None)  # the old model goes before the new one loads
        from backend.loading.model_cache import _LOADING  # every loader of the process takes this lock

        with _LOADING:
            model = load()
        log.info("loaded the %s annotator from %s", key, path)
        self._loaded[key] = _Loaded(path, stamp, model)
        return model


def _files(folder: Path) -> list[Path]:
    try:
        return sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.name.casefold())
    except OSError:
        return []


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir()]
    except OSError:
        return []


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
