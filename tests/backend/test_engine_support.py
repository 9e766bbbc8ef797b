"""Shared helpers for the engine tests: tiny in-memory models behind a stand-in model manager.

The engine takes duck-typed components, so most engine tests build the tiny real-architecture models directly
(fast, no files); tests/backend/test_engine_loading.py runs the engine on the real loading code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from backend.engine import Engine, EngineJob, EngineSettings
from backend.model_files import ModelStore
from protocol.messages import JobParams

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SCHEDULER_CONFIG_PATH = (
    Path(__file__).resolve().parents[2] / "backend/configs/sd15/scheduler/scheduler_config.json"
)


@dataclass
class TinyParts:
    unet: Any
    inpaint_unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scribble: Any
    openpose: Any
    scheduler_config: dict[str, Any]


@dataclass
class FakeStore:
    checkpoints: list[str] = field(
        default_factory=lambda: ["tiny.safetensors", "tiny-inpainting.safetensors"]
    )
    loras: list[str] = field(default_factory=list)
    controlnet: list[str] = field(
        default_factory=lambda: ["tiny-openpose.safetensors", "tiny-scribble.safetensors"]
    )

    def list_kind(self, kind: str) -> list[str]:
        return list(getattr(self, kind))

    def default_checkpoint(self) -> str | None:
        return self.checkpoints[0] if self.checkpoints else None

    def folder(self, kind: str) -> Path:
        return Path("/models") / kind

    no_checkpoint_error = ModelStore.no_checkpoint_error  # the real advice, naming this store's folders
    shown_folder = ModelStore.shown_folder


class FakeModels:
    """Stands in for backend.loading.model_cache.ModelCache; records what the engine asked for."""

    def __init__(self, parts: TinyParts, store: FakeStore | None = None) -> None:
        self.parts = parts
        self.store = store or FakeStore()
        self.calls: list[dict[str, Any]] = []
        self.controlnet_calls: list[str] = []

    def components(self, checkpoint: str, loras: Any = (), vae: Any = None, lcm_lora: Any = None) -> Any:
        self.calls.append({"checkpoint": checkpoint, "loras": tuple(loras), "vae": vae, "lcm_lora": lcm_lora})
        inpaint = "inpaint" in checkpoint
        return SimpleNamespace(
            unet=self.parts.inpaint_unet if inpaint else self.parts.unet,
            vae=self.parts.vae,
            text_encoder=self.parts.text_encoder,
            tokenizer=self.parts.tokenizer,
            scheduler_config=dict(self.parts.scheduler_config),
            is_inpaint=inpaint,
            name=checkpoint,
        )

    def controlnet(self, name: str) -> Any:
        self.controlnet_calls.append(name)
        return self.parts.openpose if "openpose" in name else self.parts.scribble


def build_parts() -> TinyParts:
    import json

    from backend.loading.tokenizer import load_tokenizer
    from tests.fixtures.tiny_models import (
        build_controlnet,
        build_text_encoder,
        build_unet,
        build_vae,
    )

    unet = build_unet(seed=1)
    return TinyParts(
        unet=unet,
        inpaint_unet=build_unet(seed=4, in_channels=9),
        vae=build_vae(seed=2),
        text_encoder=build_text_encoder(seed=3),
        tokenizer=load_tokenizer(),
        scribble=build_controlnet(unet, seed=7),
        openpose=build_controlnet(unet, seed=8),
        scheduler_config=json.loads(SCHEDULER_CONFIG_PATH.read_text()),
    )


_PARTS: TinyParts | None = None


def tiny_parts() -> TinyParts:
    """Built once per test process (a few seconds) and shared: the engine never modifies the models."""
    global _PARTS
    if _PARTS is None:
        torch.set_num_threads(min(2, torch.get_num_threads()))
        _PARTS = build_parts()
    return _PARTS


def make_engine(store: FakeStore | None = None, **settings: Any) -> tuple[Engine, FakeModels]:
    models = FakeModels(tiny_parts(), store)
    engine = Engine(models, torch.device("cpu"), torch.float32, EngineSettings(**settings))
    return engine, models


def make_canvas(width: int, height: int, seed: int = 0, alpha: int | None = 255) -> np.ndarray:
    """A smooth gradient with some noise: structured enough that a VAE round trip is not trivial."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * xx * yy)], -1) * 200 + rng.random((height, width, 3)) * 55
    canvas = np.empty((height, width, 4), dtype=np.uint8)
    canvas[..., :3] = rgb.clip(0, 255).astype(np.uint8)
    canvas[..., 3] = rng.integers(0, 256, (height, width)) if alpha is None else alpha
    return canvas


def job(
    canvas: np.ndarray, mode: str = "img2img", mask: np.ndarray | None = None, **params: Any
) -> EngineJob:
    defaults: dict[str, Any] = {"prompt": "a watercolor house", "steps": 4, "strength": 0.5, "seed": 7}
    return EngineJob(mode, JobParams(**{**defaults, **params}), canvas, mask)


class Recorder:
    """on_progress / is_cancelled callbacks that remember what they saw."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.progress: list[tuple[int, int]] = []
        self.cancel_after = cancel_after

    def on_progress(self, step: int, total: int) -> None:
        self.progress.append((step, total))

    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.progress) >= self.cancel_after


def run(engine: Engine, engine_job: EngineJob, recorder: Recorder | None = None) -> Any:
    recorder = recorder or Recorder()
    return engine.run(engine_job, recorder.on_progress, recorder.is_cancelled)


@contextmanager
def count_calls(module: torch.nn.Module) -> Iterator[list[tuple[int, ...]]]:
    """Records the input shape of every forward call of `module` while active."""
    shapes: list[tuple[int, ...]] = []

    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        first = args[0] if args else next(iter(kwargs.values()))
        shapes.append(tuple(first.shape))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield shapes
    finally:
        handle.remove()


@pytest.fixture(scope="session")
def parts() -> TinyParts:
    return tiny_parts()
