"""The accelerated (static-shape) path gives the plain path's result; bucketing keeps output sizes; it falls
back to eager where it can't run.

CUDA graphs and inductor need a GPU; here torch.compile runs with the "eager" backend (dynamo's tracing and
guards, no kernels) and the static-buffer "direct" capture, which exercise the plumbing that can be wrong:
keys, buffers, 0-dim timesteps, tensors for every per-frame value, background compile, fallback.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from backend.engine import Engine, EngineSettings, images
from backend.engine.accelerated import AcceleratorSettings, bucket_side
from backend.engine.accelerated.accelerator import Accelerator, resolve_mode
from backend.engine.accelerated.host import HostStaging
from backend.engine.accelerated.static_call import capture_direct
from protocol.messages import ControlParam
from tests.backend.test_engine_support import FakeModels, job, make_canvas, run, tiny_parts
from tests.backend.test_taesd_preview import ModelsWithTaesd, preview_job

pytestmark = pytest.mark.slow

TOLERANCE = 1  # uint8 levels; on the CPU the eager backend is in fact exact


def accelerated_engine(models: FakeModels | None = None, backend: str = "eager", **options: Any) -> Engine:
    settings = EngineSettings(
        min_side=32,
        working_size=False,  # canvas-sized generations: the bucketing below is about those
        accelerated=AcceleratorSettings(mode="compile", compile_backend=backend, **options),
    )
    return Engine(models or ModelsWithTaesd(), torch.device("cpu"), torch.float32, settings)


def plain_engine(models: FakeModels | None = None) -> Engine:
    return Engine(
        models or ModelsWithTaesd(),
        torch.device("cpu"),
        torch.float32,
        EngineSettings(min_side=32, working_size=False),
    )


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    diff = np.abs(a.astype(int) - b.astype(int)).max()
    assert diff <= TOLERANCE, f"max difference {diff}"


@pytest.fixture(scope="module")
def warm() -> Engine:
    """One engine whose live img2img path is compiled (the compile is the slow part: share it)."""
    engine = accelerated_engine()
    run(engine, preview_job(make_canvas(64, 64), steps=8, strength=0.5))
    assert engine.accelerator.wait(120)
    return engine


def test_modes_resolve_to_eager_off_cuda() -> None:
    cpu = torch.device("cpu")
    assert resolve_mode("auto", cpu) == "off"
    assert resolve_mode("cuda_graphs", cpu) == "off"
    assert resolve_mode("off", torch.device("cuda")) == "off"
    assert resolve_mode("auto", torch.device("cuda")) == "compile"
    assert resolve_mode("compile", cpu) == "compile"  # torch.compile itself works on a CPU
    with pytest.raises(ValueError):
        resolve_mode("fast", cpu)
    default = Engine(FakeModels(tiny_parts()), cpu, torch.float32)
    assert not default.accelerator.active
    result = run(default, preview_job(make_canvas(40, 24)))
    assert result.params["accelerated"] is False


def test_compiled_path_matches_plain_path(warm: Engine) -> None:
    plain = plain_engine()
    canvas = make_canvas(64, 64, seed=11)
    for params in ({"seed": 5, "strength": 0.5, "steps": 8}, {"seed": 6, "strength": 0.75, "steps": 4}):
        accelerated = run(warm, preview_job(canvas, **params))
        assert accelerated.params["accelerated"] is True
        assert_close(accelerated.image, run(plain, preview_job(canvas, **params)).image)
    status = warm.accelerator.status()
    assert status["ready"] >= 1 and status["failed"] == 0 and status["accelerated"] > 0


def test_new_frames_do_not_recompile(warm: Engine) -> None:
    """Timesteps, prompts, seeds and strengths are tensor inputs: no new dynamo graphs for new values."""
    from torch._dynamo.utils import counters

    canvas = make_canvas(64, 64, seed=12)
    run(warm, preview_job(canvas, seed=1))
    graphs = counters["stats"]["unique_graphs"]
    for seed, strength, prompt in ((2, 0.5, "a cat"), (3, 0.8, "a dog"), (4, 0.3, "a tree")):
        run(warm, preview_job(canvas, seed=seed, strength=strength, prompt=prompt, steps=8))
    assert counters["stats"]["unique_graphs"] == graphs
    # A canvas a few pixels smaller falls into the same bucket: same slots, same output size.
    slots = warm.accelerator.status()["slots"]
    smaller = run(warm, preview_job(make_canvas(60, 57, seed=13)))
    assert smaller.image.shape == (57, 60, 4)
    assert smaller.params["generation_size"] == [64, 64]
    assert warm.accelerator.status()["slots"] == slots
    assert counters["stats"]["unique_graphs"] == graphs


def test_bucketing_keeps_output_size_and_final_renders_stay_plain(warm: Engine) -> None:
    canvas = make_canvas(72, 40, seed=14)
    live = run(warm, preview_job(canvas))
    assert live.image.shape == (40, 72, 4) and live.bounds == (0, 0, 72, 40)
    assert live.params["generation_size"] == [128, 64]
    final = run(warm, job(canvas))
    assert final.params["accelerated"] is False and final.params["decoder"] == "vae"
    assert final.params["generation_size"] == [72, 40]
    assert final.image.tobytes() == run(plain_engine(), job(canvas)).image.tobytes()
    assert bucket_side(72) == 128 and bucket_side(512) == 512 and bucket_side(520, 8) == 520


def test_controlnet_cfg_and_inpaint_match_plain_path() -> None:
    engine = accelerated_engine(background=False)  # compile inline: no waiting logic needed here
    plain = plain_engine()
    canvas = make_canvas(64, 64, seed=15)
    lines = np.zeros((64, 64), dtype=np.uint8)
    lines[20:44, 30:34] = 255
    control = ControlParam("scribble", strength=0.8, image="lines", end=0.5)  # inactive for the last steps
    live = preview_job(canvas, controls=[control], cfg=2.0, negative_prompt="blurry", steps=8)
    live.control_images = {"lines": lines}
    fast = run(engine, live)
    assert fast.params["whole_frame"] is True
    assert_close(fast.image, run(plain, live).image)
    # One whole-frame slot, made of 4 compiled parts: the step with the ControlNet acting (first half of the
    # steps) and without it (second half), TAESD encode and decode.
    assert engine.accelerator.status()["slots"] == 1
    assert engine.accelerator.status()["parts"] == 4
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:40, 16:48] = 255
    # The dedicated 9-channel UNet on the per-step path: its extra-input step call (the whole frame has its
    # own tests in test_accelerated_frame.py).
    per_step = accelerated_engine(background=False, whole_frame=False)
    run(per_step, live)
    inpaint = preview_job(canvas, mode="inpaint", mask=mask, checkpoint="tiny-inpainting.safetensors")
    fast = run(per_step, inpaint)
    assert fast.params["accelerated"] is True and fast.params["whole_frame"] is False
    assert_close(fast.image, run(plain, inpaint).image)
    # Another checkpoint: the old slots were dropped (they would keep the old models alive).
    assert per_step.accelerator.status()["slots"] == 3  # the 9-channel step, TAESD encode (batch 2), decode
    assert per_step.accelerator.status()["failed"] == 0


def test_weights_changed_in_place_reach_the_compiled_path() -> None:
    """LoRA re-fusing copies new weights into the same parameters; compiled/captured calls must see them."""
    from tests.fixtures.tiny_models import build_unet

    parts = tiny_parts()
    models = ModelsWithTaesd()
    models.parts = type(parts)(**{**parts.__dict__, "unet": build_unet(seed=1)})  # a UNet of our own
    engine = accelerated_engine(models, background=False)
    canvas = make_canvas(64, 64, seed=16)
    before = run(engine, preview_job(canvas)).image
    with torch.no_grad():
        weight = models.parts.unet.conv_in.weight
        weight.copy_(weight * 1.5)
    after = run(engine, preview_job(canvas)).image
    assert after.tobytes() != before.tobytes()
    assert_close(after, run(plain_engine(models), preview_job(canvas)).image)


def test_failed_compile_falls_back_to_eager() -> None:
    engine = accelerated_engine(backend="no_such_backend", background=False)
    canvas = make_canvas(64, 64, seed=17)
    result = run(engine, preview_job(canvas))
    status = engine.accelerator.status()
    assert status["failed"] >= 1
    assert_close(result.image, run(plain_engine(), preview_job(canvas)).image)


def test_static_buffers_and_host_staging() -> None:
    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x * t + 1

    static = capture_direct(fn, [torch.ones(2, 3), torch.tensor(2.0)])
    first = static(torch.full((2, 3), 3.0), torch.tensor(0.5))
    second = static(torch.zeros(2, 3), torch.tensor(4.0))
    assert torch.equal(first, torch.full((2, 3), 2.5))  # a copy: not overwritten by the next call
    assert torch.equal(second, torch.ones(2, 3))

    staging = HostStaging(torch.device("cpu"))
    rgb = make_canvas(24, 16, seed=18)[..., :3]
    tensor = staging.upload(rgb, torch.float32)
    assert torch.equal(tensor, images.to_tensor(rgb, torch.device("cpu"), torch.float32))
    decoded = tensor * 1.01 - 0.003
    assert np.array_equal(staging.download(decoded), images.to_uint8(images.to_unit_float(decoded)))


def test_accelerator_counts_eager_and_accelerated_calls() -> None:
    accelerator = Accelerator(AcceleratorSettings(mode="compile", compile_backend="eager", background=False),
                              torch.device("cpu"))  # fmt: skip
    x = torch.arange(4.0)
    out = accelerator.call("double", lambda: lambda v: v * 2, [x])
    assert torch.equal(out, x * 2)
    assert accelerator.status()["ready"] == 1
    accelerator.reset()
    assert accelerator.status()["slots"] == 0


def test_host_buffers_are_bounded_per_size() -> None:
    staging = HostStaging(torch.device("cpu"), max_buffers=2)
    first = staging._buffer("out", (8, 8, 3))
    staging._buffer("out", (16, 8, 3))
    assert staging._buffer("out", (8, 8, 3)) is first  # reused, and now the most recent
    staging._buffer("in", (24, 8, 3))
    assert staging.buffer_count == 2
    assert staging._buffer("out", (8, 8, 3)) is first  # (16, 8, 3) was the one freed
