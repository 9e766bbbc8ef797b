"""Live LCM frames run as one whole-frame function (fast/frame.py): same pixels as the per-step and plain
paths, one slot per frame shape, compiled parts shared across step counts, and the per-step path wherever the
frame doesn't apply.

On the CPU the compile uses dynamo's "eager" backend and the "direct" capture (see test_accelerated_path), so
float32 results are exact: the tests compare bytes.
"""

# diffusers' and torch's annotations reject their own documented calls here (pipelines with
# safety_checker=None, from_config results, config and submodule attributes)
# pyright: reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from backend.engine import Engine, EngineJob, EngineSettings
from backend.engine.accelerated import AcceleratorSettings
from backend.engine.accelerated.frame import FramePlan, lcm_step, schedule_tables
from backend.engine.jobs import JobCancelled
from protocol.messages import ControlParam, JobParams
from tests.backend.test_engine_support import Recorder, job, make_canvas, run, tiny_parts
from tests.backend.test_taesd_preview import ModelsWithTaesd, preview_job

pytestmark = pytest.mark.slow

INPAINTING = "tiny-inpainting.safetensors"  # FakeModels gives a 9-channel UNet for it
# Selections are worked on at this size (512 in use): small keeps the CPU runs short.
INPAINT_RESOLUTION = 64


def build_engine(models: Any = None, accelerate: str = "compile", **accelerated: Any) -> Engine:
    backend = accelerated.pop("backend", "eager")
    options = AcceleratorSettings(mode=accelerate, compile_backend=backend, background=False, **accelerated)
    settings = EngineSettings(min_side=32, inpaint_resolution=INPAINT_RESOLUTION, accelerated=options)
    return Engine(models or ModelsWithTaesd(), torch.device("cpu"), torch.float32, settings)


def per_step_engine(models: Any = None) -> Engine:
    return build_engine(models, whole_frame=False)


def frame_engine(models: Any = None) -> Engine:
    return build_engine(models)


def plain_engine(models: Any = None) -> Engine:
    return build_engine(models, accelerate="off")


def models_with(**changes: Any) -> ModelsWithTaesd:
    models = ModelsWithTaesd()
    models.parts = replace(models.parts, **changes)
    return models


def scribble_job(canvas: np.ndarray, **params: Any) -> Any:
    lines = np.zeros(canvas.shape[:2], dtype=np.uint8)
    lines[10:50, 28:36] = 255
    control = ControlParam("scribble", strength=0.7, image="lines", start=0.0, end=0.5)
    live = preview_job(canvas, controls=[control], **params)
    live.control_images = {"lines": lines}
    return live


def test_frame_equals_plain_path_exactly() -> None:
    frame, plain = frame_engine(), plain_engine()
    canvas = make_canvas(64, 64, seed=31)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[8:40, 20:60] = 255
    jobs = [
        preview_job(canvas, seed=3, steps=8, strength=0.5),
        preview_job(canvas, seed=4, steps=4, strength=1.0),
        preview_job(canvas, seed=5, steps=6, strength=0.6, cfg=2.5, negative_prompt="dull"),  # CFG batch
        scribble_job(canvas, seed=6, steps=8, strength=0.5),  # the ControlNet acts in the first half only
        preview_job(canvas, mode="inpaint", mask=mask, seed=7, steps=8, strength=0.75),  # mask hold
        preview_job(canvas, mode="inpaint", mask=mask, seed=8, steps=4, strength=1.0),  # from pure noise
        # A 9-channel inpainting UNet: the mask and the masked image's latents as extra input.
        preview_job(canvas, mode="inpaint", mask=mask, seed=9, strength=0.75, checkpoint=INPAINTING),
        preview_job(canvas, mode="inpaint", mask=mask, seed=10, strength=1.0, checkpoint=INPAINTING),
        preview_job(canvas, seed=11, strength=0.5, checkpoint=INPAINTING),  # img2img: a mask over everything
    ]
    for live in jobs:
        ours = run(frame, live)
        assert ours.params["whole_frame"] is True, live.params
        reference = run(plain, live)
        assert ours.image.tobytes() == reference.image.tobytes(), live.params
        assert ours.bounds == reference.bounds
    status = frame.accelerator.status()
    assert status["failed"] == 0 and status["ready"] == status["slots"] >= 1


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_frame_follows_the_schedulers_prediction_type(prediction_type: str) -> None:
    config = {**tiny_parts().scheduler_config, "prediction_type": prediction_type}
    models = models_with(scheduler_config=config)
    live = preview_job(make_canvas(64, 64, seed=32), seed=9, steps=4, strength=0.75)
    ours = run(frame_engine(models), live)
    assert ours.params["whole_frame"] is True
    assert ours.image.tobytes() == run(plain_engine(models), live).image.tobytes()


def test_frame_with_an_lcm_distilled_unet_passes_the_guidance_embedding() -> None:
    from diffusers import UNet2DConditionModel

    from tests.fixtures.tiny_models import UNET_CONFIG

    torch.manual_seed(12)
    unet = UNet2DConditionModel(**{**UNET_CONFIG, "time_cond_proj_dim": 32}).eval()
    models = models_with(unet=unet)
    canvas = make_canvas(64, 64, seed=33)
    engine, plain = frame_engine(models), plain_engine(models)
    for cfg in (1.0, 4.0):  # the scale is an input tensor: the second frame re-captures nothing
        live = preview_job(canvas, seed=10, steps=4, strength=0.5, cfg=cfg)
        ours = run(engine, live)
        assert ours.image.tobytes() == run(plain, live).image.tobytes()
    assert engine.accelerator.status()["slots"] == 1


def test_lcm_step_matches_diffusers_for_every_prediction_type() -> None:
    from diffusers import LCMScheduler

    for prediction_type in ("epsilon", "v_prediction", "sample"):
        scheduler = LCMScheduler.from_config(
            {**tiny_parts().scheduler_config, "prediction_type": prediction_type}
        )
        scheduler.set_timesteps(8)
        scheduler.set_begin_index(4)
        timesteps = [int(t) for t in scheduler.timesteps[4:]]
        lcm, _, _ = schedule_tables(scheduler, timesteps, torch.float32, torch.device("cpu"))
        plan = FramePlan(
            steps=4, batched=False, has_timestep_cond=False, added=False, active=((),) * 4, controls=0,
            hold=False, extra=False, from_noise=False, init_noise_sigma=1.0, prediction_type=prediction_type,
            vae_dtype=torch.float32, latent_dtype=torch.float32,
        )  # fmt: skip
        sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        reference_generator = torch.Generator().manual_seed(2)
        our_generator = torch.Generator().manual_seed(2)
        for i, timestep in enumerate(scheduler.timesteps[4:]):
            output = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(10 + i))
            expected = scheduler.step(output, timestep, sample, generator=reference_generator).prev_sample
            noise = torch.randn(1, 4, 8, 8, generator=our_generator) if i < 3 else None
            assert torch.equal(lcm_step(plan, lcm[i], output, sample, noise), expected), prediction_type
            sample = expected


def test_frame_equals_per_step_path() -> None:
    live = scribble_job(make_canvas(64, 64, seed=38), seed=12, steps=8, strength=0.5, cfg=1.5)
    per_step = run(per_step_engine(), live)
    assert per_step.params["whole_frame"] is False
    assert run(frame_engine(), live).image.tobytes() == per_step.image.tobytes()


def test_step_count_changes_reuse_the_compiled_parts() -> None:
    """A new strength can change the number of steps: a new frame slot (captured at once), but the UNet and
    TAESD parts are the same calls at the same shapes: no new dynamo graph."""
    from torch._dynamo.utils import counters

    engine = frame_engine()
    canvas = make_canvas(64, 64, seed=34)
    before = counters["stats"]["unique_graphs"]
    run(engine, preview_job(canvas, steps=8, strength=0.5))
    parts, graphs = engine.accelerator.status()["parts"], counters["stats"]["unique_graphs"]
    assert parts == 3  # one denoiser (no ControlNet), TAESD encode, decode
    assert graphs - before <= 3  # at most one graph a part: the steps (views of one table) share one
    for steps, strength in ((8, 0.25), (8, 0.75), (4, 1.0)):
        run(engine, preview_job(canvas, steps=steps, strength=strength, seed=steps))
    status = engine.accelerator.status()
    assert status["slots"] == 3 and status["parts"] == parts  # 4 steps again: the first slot serves
    assert counters["stats"]["unique_graphs"] == graphs


def test_frame_reports_every_step_and_honours_cancel() -> None:
    engine = frame_engine()
    canvas = make_canvas(64, 64, seed=35)
    recorder = Recorder()
    result = run(engine, preview_job(canvas, steps=8, strength=0.5), recorder)
    assert result.params["whole_frame"] is True
    assert recorder.progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(JobCancelled):
        run(engine, preview_job(canvas, seed=99), Recorder(cancel_after=0))


def test_frame_only_where_it_applies() -> None:
    engine = frame_engine()
    canvas = make_canvas(64, 64, seed=36)
    for live, why in (
        (preview_job(canvas, sampler="euler"), "another sampler"),
        (job(canvas), "a final render"),
    ):
        result = run(engine, live)
        assert not result.params.get("whole_frame"), why
    no_taesd = frame_engine(ModelsWithTaesd(available=False))
    result = run(no_taesd, preview_job(canvas))
    assert result.params["decoder"] == "vae" and result.params["whole_frame"] is False
    assert (
        result.image.tobytes()
        == run(plain_engine(ModelsWithTaesd(available=False)), preview_job(canvas)).image.tobytes()
    )


def test_frame_serves_eager_when_its_compile_fails() -> None:
    engine = build_engine(backend="no_such_backend")
    live = preview_job(make_canvas(64, 64, seed=37), seed=11)
    result = run(engine, live)
    assert result.params["whole_frame"] is True
    assert engine.accelerator.status()["failed"] == 1
    assert result.image.tobytes() == run(plain_engine(), live).image.tobytes()


def test_frame_compiled_whole_equals_plain_path() -> None:
    engine = build_engine(frame_compile="whole")
    canvas = make_canvas(64, 64, seed=39)
    live = scribble_job(canvas, seed=13, steps=8, strength=0.5)
    result = run(engine, live)
    assert result.params["whole_frame"] is True
    status = engine.accelerator.status()
    assert status["ready"] == 1 and status["parts"] == 0 and status["failed"] == 0
    assert result.image.tobytes() == run(plain_engine(), live).image.tobytes()


def test_inductor_options_keep_the_modes_own() -> None:
    from backend.engine.accelerated.compiler import TUNED_INDUCTOR_OPTIONS, inductor_options

    assert inductor_options("max-autotune-no-cudagraphs", None) is None  # the mode alone
    merged = inductor_options("max-autotune-no-cudagraphs", TUNED_INDUCTOR_OPTIONS)
    assert merged is not None and merged["max_autotune"] is True and merged["epilogue_fusion"] is False
    assert inductor_options(None, {"conv_1x1_as_mm": True}) == {"conv_1x1_as_mm": True}
    with pytest.raises(ValueError):
        build_engine(frame_compile="sideways")


def test_warm_up_captures_the_frame_a_painter_starts_with() -> None:
    engine = frame_engine()
    status = engine.warm_up(64, 64)
    assert status["slots"] == 1 and status["ready"] == 1
    defaults = JobParams(prompt="a lighthouse at dusk", seed=1234)  # otherwise the plugin's defaults
    result = run(engine, EngineJob("img2img", defaults, make_canvas(64, 64, seed=40), live=True))
    assert result.params["whole_frame"] is True
    after = engine.accelerator.status()
    assert after["slots"] == 1 and after["captures"] == status["captures"]  # no new graph to capture
