"""Engine behaviour on tiny models: sizes, strength 0, determinism, cancellation, progress, prompt cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.engine import JobCancelled, select_device
from backend.engine.samplers import denoise_steps
from backend.model_errors import ModelError
from tests.backend.test_engine_support import (
    FakeStore,
    Recorder,
    count_calls,
    job,
    make_canvas,
    make_engine,
    run,
    tiny_parts,
)

pytestmark = pytest.mark.slow


def test_odd_size_comes_back_exactly() -> None:
    engine, _ = make_engine()
    canvas = make_canvas(37, 53)
    result = run(engine, job(canvas))
    assert result.image.shape == (53, 37, 4)
    assert result.image.dtype == np.uint8
    assert result.bounds == (0, 0, 37, 53)
    assert (result.image[..., 3] == 255).all()
    # scaled up to the tiny model's working size (about 128x128 pixels of area, aspect kept), and back
    assert result.params["generation_size"] == [104, 152]
    assert set(result.timings) >= {"load", "prompt", "encode", "denoise", "decode", "total"}


def test_strength_zero_returns_canvas_without_unet() -> None:
    engine, models = make_engine()
    canvas = make_canvas(24, 16, alpha=None)  # random alpha: must come back untouched too
    with count_calls(tiny_parts().unet) as calls:
        result = run(engine, job(canvas, strength=0.0))
    assert calls == []
    assert result.image.tobytes() == canvas.tobytes()
    assert result.bounds == (0, 0, 24, 16)
    assert models.calls == []  # nothing was even loaded


def test_same_seed_is_bit_identical_and_seeds_differ() -> None:
    engine, _ = make_engine()
    canvas = make_canvas(32, 32)
    first = run(engine, job(canvas, seed=3)).image
    second = run(engine, job(canvas, seed=3)).image
    other = run(engine, job(canvas, seed=4)).image
    assert first.tobytes() == second.tobytes()
    assert first.tobytes() != other.tobytes()


@pytest.mark.parametrize("sampler", ["lcm", "euler", "euler_a"])
def test_progress_reports_each_step(sampler: str) -> None:
    engine, _ = make_engine()
    recorder = Recorder()
    with count_calls(tiny_parts().unet) as calls:
        run(engine, job(make_canvas(16, 16), sampler=sampler, steps=6, strength=0.5), recorder)
    assert recorder.progress == [(1, 3), (2, 3), (3, 3)]
    assert len(calls) == 3


def test_cancel_at_step_boundary() -> None:
    engine, _ = make_engine()
    recorder = Recorder(cancel_after=1)
    with count_calls(tiny_parts().unet) as calls, pytest.raises(JobCancelled):
        run(engine, job(make_canvas(16, 16), steps=8, strength=0.5), recorder)
    assert recorder.progress == [(1, 4)]
    assert len(calls) == 1


def test_cancel_before_first_step() -> None:
    engine, _ = make_engine()
    recorder = Recorder(cancel_after=0)
    with count_calls(tiny_parts().unet) as calls, pytest.raises(JobCancelled):
        run(engine, job(make_canvas(16, 16)), recorder)
    assert calls == [] and recorder.progress == []


def test_cfg_batches_negative_prompt_in_one_unet_call() -> None:
    engine, _ = make_engine()
    canvas = make_canvas(16, 16)
    with count_calls(tiny_parts().unet) as calls:
        guided = run(engine, job(canvas, cfg=3.0, negative_prompt="blurry")).image
    assert [shape[0] for shape in calls] == [2, 2]  # 4 steps x 0.5: two calls, cond + uncond batched
    with count_calls(tiny_parts().unet) as calls:
        plain = run(engine, job(canvas, cfg=1.0, negative_prompt="blurry")).image
    assert [shape[0] for shape in calls] == [1, 1]
    assert guided.tobytes() != plain.tobytes()


def test_prompt_embeddings_are_cached() -> None:
    engine, _ = make_engine()
    canvas = make_canvas(16, 16)
    with count_calls(tiny_parts().text_encoder) as calls:
        run(engine, job(canvas, prompt="a cat", negative_prompt="dark", cfg=2.0))
        run(engine, job(canvas, prompt="a cat", negative_prompt="dark", cfg=2.0, seed=99))
        assert len(calls) == 2  # prompt + negative prompt, once
        run(engine, job(canvas, prompt="a dog", cfg=1.0))
        assert len(calls) == 3
    assert engine.prompts.hits == 2


def test_lora_clip_strength_changes_prompt_cache_key() -> None:
    engine, _ = make_engine(store=FakeStore(loras=["style.safetensors"]))
    canvas = make_canvas(16, 16)
    from protocol.messages import LoraParam

    with count_calls(tiny_parts().text_encoder) as calls:
        run(engine, job(canvas, loras=[LoraParam("style.safetensors", 1.0, 0.5)]))
        run(engine, job(canvas, loras=[LoraParam("style.safetensors", 0.7, 0.5)]))  # model strength only
        run(engine, job(canvas, loras=[LoraParam("style.safetensors", 1.0, 0.8)]))
    assert len(calls) == 2


def test_transparent_canvas_is_white_paper() -> None:
    engine, _ = make_engine()
    transparent = np.zeros((16, 24, 4), dtype=np.uint8)  # black RGB, alpha 0: an empty Krita layer
    white = np.full((16, 24, 4), 255, dtype=np.uint8)
    a = run(engine, job(transparent)).image
    b = run(engine, job(white)).image
    assert a.tobytes() == b.tobytes()


def test_small_strength_runs_at_least_one_step() -> None:
    assert denoise_steps(4, 0.1) == 1
    assert denoise_steps(4, 0.0) == 0
    assert denoise_steps(8, 0.5) == 4
    assert denoise_steps(4, 1.0) == 4


def test_default_checkpoint_and_lcm_lora_auto_pick() -> None:
    store = FakeStore(loras=["style.safetensors", "sub/LCM-LoRA-sd15.safetensors", "lcm-other.safetensors"])
    engine, models = make_engine(store=store)
    result = run(engine, job(make_canvas(16, 16), lcm_lora_strength=0.8))
    assert models.calls[-1]["checkpoint"] == "tiny.safetensors"
    lcm = models.calls[-1]["lcm_lora"]
    assert (lcm.name, lcm.model_strength) == ("sub/LCM-LoRA-sd15.safetensors", 0.8)
    assert result.params["checkpoint"] == "tiny.safetensors"
    assert result.params["lcm_lora"] == "sub/LCM-LoRA-sd15.safetensors"
    assert result.params["seed"] == 7 and result.params["sampler"] == "lcm"
    run(engine, job(make_canvas(16, 16), sampler="euler"))
    assert models.calls[-1]["lcm_lora"] is None  # only the LCM sampler picks one by itself


def test_no_checkpoint_is_a_model_error() -> None:
    engine, _ = make_engine(store=FakeStore(checkpoints=[]))
    with pytest.raises(ModelError, match="No checkpoint found"):
        run(engine, job(make_canvas(16, 16)))


def test_select_device() -> None:
    device, dtype = select_device("cpu")
    assert device == torch.device("cpu") and dtype == torch.float32
    assert select_device("cpu", "fp16").dtype == torch.float16
    assert select_device("auto").device.type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError):
        select_device("tpu9")
    with pytest.raises(ValueError):
        select_device("cpu", "fp8")
