"""Live preview jobs decode with TAESD where asked and available, and agree with diffusers' pipeline built
with `vae=AutoencoderTiny`; everything else keeps the full VAE."""

# diffusers' and torch's annotations reject their own documented calls here (pipelines with
# safety_checker=None, from_config results, config and submodule attributes)
# pyright: reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from backend.engine import Engine, EngineSettings
from tests.backend.test_engine_agreement import as_uint8, scheduler_for
from tests.backend.test_engine_support import FakeModels, count_calls, job, make_canvas, run, tiny_parts

pytestmark = pytest.mark.slow

_TAESD: Any = None


def taesd() -> Any:
    global _TAESD
    if _TAESD is None:
        from tests.fixtures.tiny_models import build_taesd

        _TAESD = build_taesd(seed=6)
    return _TAESD


class ModelsWithTaesd(FakeModels):
    def __init__(self, available: bool = True) -> None:
        super().__init__(tiny_parts())
        self.available = available
        self.taesd_calls = 0

    def taesd(self, family: Any = None) -> Any:
        self.taesd_calls += 1
        return taesd() if self.available else None


def engine_for(models: FakeModels, **settings: Any) -> Engine:
    return Engine(
        models,
        torch.device("cpu"),
        torch.float32,
        EngineSettings(min_side=32, working_size=False, **settings),
    )


def preview_job(canvas: np.ndarray, **params: Any) -> Any:
    engine_job = job(canvas, **params)
    engine_job.live = True
    return engine_job


def test_taesd_only_for_preview_jobs() -> None:
    models = ModelsWithTaesd()
    engine = engine_for(models)
    canvas = make_canvas(64, 48)
    with count_calls(taesd().decoder) as tiny_calls, count_calls(tiny_parts().vae.decoder) as full_calls:
        final = run(engine, job(canvas))
        assert (len(tiny_calls), len(full_calls)) == (0, 1)
        assert final.params["decoder"] == "vae"
        assert models.taesd_calls == 0  # a final render doesn't even look for TAESD
        live = run(engine, preview_job(canvas))
        assert (len(tiny_calls), len(full_calls)) == (1, 1)
    assert live.params["decoder"] == "taesd"
    assert live.image.shape == final.image.shape == (48, 64, 4)
    assert live.image.tobytes() != final.image.tobytes()


def test_preview_without_taesd_falls_back_to_full_vae() -> None:
    for models in (
        ModelsWithTaesd(available=False),
        FakeModels(tiny_parts()),
    ):  # no files / no taesd() at all
        engine = engine_for(models)
        canvas = make_canvas(40, 40)
        live = run(engine, preview_job(canvas))
        assert live.params["decoder"] == "vae"
        assert live.image.tobytes() == run(engine, job(canvas)).image.tobytes()


def test_preview_taesd_can_be_switched_off() -> None:
    engine = engine_for(ModelsWithTaesd(), preview_taesd=False)
    assert run(engine, preview_job(make_canvas(32, 32))).params["decoder"] == "vae"


def test_preview_matches_diffusers_pipeline_with_taesd() -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    parts = tiny_parts()
    canvas = make_canvas(64, 64, seed=3)
    params = {"prompt": "a red house by a lake", "steps": 8, "strength": 0.5, "seed": 99, "sampler": "lcm"}
    ours = run(engine_for(ModelsWithTaesd()), preview_job(canvas, **params)).image
    pipe = StableDiffusionImg2ImgPipeline(
        vae=taesd(), text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        scheduler=scheduler_for("lcm", parts), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        prompt=params["prompt"], image=Image.fromarray(canvas[..., :3]), strength=0.5, num_inference_steps=8,
        guidance_scale=1.0, generator=torch.Generator().manual_seed(99), output_type="np",
    ).images  # fmt: skip
    diff = np.abs(ours[..., :3].astype(int) - as_uint8(reference).astype(int))
    assert diff.max() <= 1, f"max difference {diff.max()} uint8 levels"


def test_preview_inpaint_uses_taesd_and_keeps_unmasked_pixels() -> None:
    engine = engine_for(ModelsWithTaesd())
    canvas = make_canvas(96, 96, seed=2)
    mask = np.zeros((96, 96), dtype=np.uint8)
    mask[32:64, 32:64] = 255
    result = run(engine, preview_job(canvas, mode="inpaint", mask=mask))
    assert result.params["decoder"] == "taesd"
    x, y, w, h = result.bounds
    layer = result.image
    untouched = layer[..., 3] == 0
    assert untouched.any()
    assert (layer[..., :3][untouched] == canvas[y : y + h, x : x + w, :3][untouched]).all()
