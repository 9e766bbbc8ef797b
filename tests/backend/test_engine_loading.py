"""The engine on models loaded by the product's own code from tiny real-format files."""

# diffusers' and torch's annotations reject their own documented calls here (pipelines with
# safety_checker=None, from_config results, config and submodule attributes)
# pyright: reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

from typing import Any

import pytest
import torch
from PIL import Image

from backend.engine import Engine, EngineSettings
from tests.backend.test_engine_agreement import SCHEDULERS, assert_agrees
from tests.backend.test_engine_support import job, make_canvas, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(tiny_models: Any) -> tuple[Engine, Any]:
    from backend.loading.model_cache import ModelCache
    from backend.model_files import ModelStore

    manager = ModelCache(
        ModelStore(tiny_models.root), torch.device("cpu"), torch.float32, tiny_models.config_dir
    )
    return Engine(
        manager, torch.device("cpu"), torch.float32, EngineSettings(min_side=32, working_size=False)
    ), manager


def test_lcm_img2img_on_real_files_matches_diffusers(loaded: tuple[Engine, Any], tiny_models: Any) -> None:
    import diffusers
    from diffusers import StableDiffusionImg2ImgPipeline

    from backend.engine.model_choice import LoraSpec

    engine, manager = loaded
    canvas = make_canvas(64, 64, seed=11)
    params = {
        "checkpoint": tiny_models.checkpoint,
        "prompt": "a cat",
        "steps": 4,
        "strength": 0.75,
        "seed": 5,
    }
    result = run(engine, job(canvas, **params))
    # The LCM sampler picked the store's LCM-LoRA by itself and the manager fused it.
    assert result.params["lcm_lora"] == tiny_models.lcm_lora
    assert manager.loaded()["lcm_lora"]["name"] == tiny_models.lcm_lora

    parts = manager.components(tiny_models.checkpoint, lcm_lora=LoraSpec(tiny_models.lcm_lora, 1.0, 1.0))
    pipe = StableDiffusionImg2ImgPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        scheduler=getattr(diffusers, SCHEDULERS["lcm"]).from_config(parts.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        prompt="a cat", image=Image.fromarray(canvas[..., :3]), strength=0.75, num_inference_steps=4,
        guidance_scale=1.0, generator=torch.Generator().manual_seed(5), output_type="np",
    ).images  # fmt: skip
    assert_agrees(result.image, reference)


def test_user_lora_clip_strength_changes_the_image(loaded: tuple[Engine, Any], tiny_models: Any) -> None:
    from protocol.messages import LoraParam

    engine, _ = loaded
    canvas = make_canvas(32, 32, seed=2)
    base = {"checkpoint": tiny_models.checkpoint, "sampler": "euler", "steps": 2, "strength": 1.0}
    plain = run(engine, job(canvas, **base)).image
    styled = run(engine, job(canvas, **base, loras=[LoraParam(tiny_models.style_lora, 0.0, 1.0)])).image
    again = run(engine, job(canvas, **base)).image
    assert plain.tobytes() != styled.tobytes()  # the text-encoder-only LoRA reached the prompt embedding
    assert plain.tobytes() == again.tobytes()  # and unfusing it (and the prompt cache) restored the original


def test_controlnet_from_files_matches_diffusers(loaded: tuple[Engine, Any], tiny_models: Any) -> None:
    from diffusers import LCMScheduler, StableDiffusionControlNetImg2ImgPipeline

    from backend.engine import EngineJob
    from backend.engine.controlnet import scribble_hint
    from protocol.messages import ControlParam, JobParams
    from tests.backend.test_engine_controlnet import scribble

    engine, manager = loaded
    canvas, lines = make_canvas(64, 64, seed=12), scribble(64, 64)
    control = ControlParam("scribble", strength=0.9, image="lines")  # model picked by name: tiny-scribble
    params = JobParams(
        prompt="a hut", checkpoint=tiny_models.checkpoint, sampler="lcm", lcm_lora_strength=0.0, steps=4,
        strength=0.75, seed=8, controls=[control],
    )  # fmt: skip
    result = engine.run(
        EngineJob("img2img", params, canvas, None, {"lines": lines}), lambda *_: None, lambda: False
    )
    assert result.params["controlnets"] == [tiny_models.controlnet_scribble]

    parts = manager.components(tiny_models.checkpoint)
    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        controlnet=manager.controlnet(tiny_models.controlnet_scribble),
        scheduler=LCMScheduler.from_config(parts.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        prompt="a hut", image=Image.fromarray(canvas[..., :3]),
        control_image=Image.fromarray(scribble_hint(lines)),
        strength=0.75, num_inference_steps=4, guidance_scale=1.0, controlnet_conditioning_scale=0.9,
        generator=torch.Generator().manual_seed(8), output_type="np",
    ).images  # fmt: skip
    assert_agrees(result.image, reference)


def test_inpainting_checkpoint_from_files(loaded: tuple[Engine, Any], tiny_models: Any) -> None:
    import numpy as np

    engine, manager = loaded
    canvas = make_canvas(48, 40, seed=13)
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[8:30, 10:40] = 255
    result = run(engine, job(canvas, "inpaint", mask, checkpoint=tiny_models.inpaint_checkpoint))
    assert manager.loaded()["is_inpaint"] is True
    x, y, w, h = result.bounds
    outside = mask[y : y + h, x : x + w] == 0
    assert np.array_equal(result.image[..., :3][outside], canvas[y : y + h, x : x + w, :3][outside])
