"""The accelerated path on a real GPU: CUDA graphs and inductor-compiled calls give the eager result (fp16
tolerance) and see weights changed in place. Skipped without CUDA; on a lent GPU machine:

    PYTHONPATH=. python3 -m pytest -q tests/backend/test_accelerated_cuda.py
"""

from __future__ import annotations

import copy
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from backend.engine import Engine, EngineSettings
from backend.engine.accelerated import AcceleratorSettings
from protocol.messages import ControlParam
from tests.backend.test_engine_support import FakeModels, make_canvas, run, tiny_parts
from tests.backend.test_taesd_preview import preview_job, taesd

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
FP16_TOLERANCE = 3  # uint8 levels between kernel choices in half precision


class CudaModels(FakeModels):
    """The tiny models, copied to the GPU in fp16 (each test gets its own, so in-place edits stay local)."""

    def __init__(self) -> None:
        parts = tiny_parts()
        moved = {name: _to_cuda(value) for name, value in parts.__dict__.items()}
        super().__init__(SimpleNamespace(**moved))  # type: ignore[arg-type]
        self._taesd = copy.deepcopy(taesd()).to("cuda", torch.float16)

    def taesd(self, family: Any = None) -> Any:
        return self._taesd


def _to_cuda(value: Any) -> Any:
    if isinstance(value, torch.nn.Module):
        return copy.deepcopy(value).to("cuda", torch.float16)
    return value


def engine(models: CudaModels, mode: str, **options: Any) -> Engine:
    settings = EngineSettings(
        min_side=32,
        inpaint_resolution=128,
        accelerated=AcceleratorSettings(mode=mode, background=False, **options),
    )
    return Engine(models, torch.device("cuda"), torch.float16, settings)


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    diff = np.abs(a.astype(int) - b.astype(int)).max()
    assert diff <= FP16_TOLERANCE, f"max difference {diff}"


@pytest.mark.parametrize("mode", ["cuda_graphs", "compile"])
@pytest.mark.parametrize("whole_frame", [True, False])
def test_accelerated_matches_eager_on_cuda(mode: str, whole_frame: bool) -> None:
    models = CudaModels()
    fast, plain = engine(models, mode, whole_frame=whole_frame), engine(models, "off")
    canvas = make_canvas(128, 128, seed=21)
    for seed in (1, 2):  # the second frame replays the captured graphs
        result = run(fast, preview_job(canvas, seed=seed, steps=8, strength=0.5))
        assert result.params["accelerated"] is True and result.params["whole_frame"] is whole_frame
        assert_close(result.image, run(plain, preview_job(canvas, seed=seed, steps=8, strength=0.5)).image)
    status = fast.accelerator.status()
    assert status["failed"] == 0 and status["ready"] >= 1 and status["accelerated"] > 0
    assert status["captures"] >= 1 and status["capture"] == "cuda_graph"


def test_whole_frame_graph_with_controlnet_cfg_and_inpaint() -> None:
    models = CudaModels()
    fast, plain = engine(models, "cuda_graphs"), engine(models, "off")
    canvas = make_canvas(128, 128, seed=23)
    lines = np.zeros((128, 128), dtype=np.uint8)
    lines[30:90, 60:68] = 255
    mask = np.zeros((128, 128), dtype=np.uint8)
    mask[20:80, 40:100] = 255
    control = ControlParam("scribble", strength=0.8, image="lines", end=0.5)
    jobs = [
        preview_job(canvas, controls=[control], cfg=2.0, negative_prompt="dull", steps=8, strength=0.5),
        preview_job(canvas, mode="inpaint", mask=mask, steps=8, strength=0.75),
    ]
    jobs[0].control_images = {"lines": lines}
    for live in jobs:
        for seed in (3, 4):
            live.params = replace(live.params, seed=seed)
            result = run(fast, live)
            assert result.params["whole_frame"] is True
            assert_close(result.image, run(plain, live).image)
    status = fast.accelerator.status()
    assert status["failed"] == 0 and status["accelerated"] == 4 and status["captures"] == 2


def test_graphs_see_weights_changed_in_place() -> None:
    models = CudaModels()
    fast, plain = engine(models, "cuda_graphs"), engine(models, "off")
    canvas = make_canvas(128, 128, seed=22)
    before = run(fast, preview_job(canvas)).image
    with torch.no_grad():
        weight = models.parts.unet.conv_in.weight
        weight.copy_(weight * 1.5)  # what a LoRA re-fuse does
    after = run(fast, preview_job(canvas)).image
    assert after.tobytes() != before.tobytes()
    assert_close(after, run(plain, preview_job(canvas)).image)
