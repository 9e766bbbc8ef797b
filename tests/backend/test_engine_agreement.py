"""The engine's output equals diffusers' reference pipelines for the same weights, inputs and seed.

No real weights exist here, so this agreement is the stand-in for image quality: the engine's own loop must do
what the reference does, step for step.
"""

# diffusers' and torch's annotations reject their own documented calls here (pipelines with
# safety_checker=None, from_config results, config and submodule attributes)
# pyright: reportArgumentType=false

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.backend.test_engine_support import TinyParts, job, make_canvas, make_engine, run, tiny_parts

pytestmark = pytest.mark.slow

SCHEDULERS = {
    "lcm": "LCMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
}


def scheduler_for(sampler: str, parts: TinyParts) -> Any:
    import diffusers

    return getattr(diffusers, SCHEDULERS[sampler]).from_config(parts.scheduler_config)


def img2img_pipeline(parts: TinyParts, sampler: str) -> Any:
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        scheduler=scheduler_for(sampler, parts), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def in_owned_memory(*modules: torch.nn.Module) -> None:
    """The modules' weights as the engine's loader leaves them: copied out of the file's memory map (where a
    weight starts in memory can pick another vectorised kernel on the CPU) and frozen (on AVX-512 machines a
    weight that requires grad takes another matrix-multiply path, even under no_grad); either can change the
    last bits of a float result."""
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone()
        module.requires_grad_(False)


def owned_pipeline(pipe: Any) -> Any:
    """A diffusers pipeline whose models' weights are as the engine's are (in_owned_memory)."""
    in_owned_memory(*(part for part in pipe.components.values() if isinstance(part, torch.nn.Module)))
    return pipe


def as_uint8(reference: np.ndarray) -> np.ndarray:
    return (reference[0] * 255).round().astype(np.uint8)


def assert_agrees(ours: np.ndarray, reference: np.ndarray, tolerance: int = 0) -> None:
    """On the CPU the engine does the reference's arithmetic in the same order: the images are
    bit-identical."""
    expected = as_uint8(reference)
    diff = np.abs(ours[..., :3].astype(int) - expected.astype(int))
    assert diff.max() <= tolerance, f"max difference {diff.max()} uint8 levels"


CASES = [
    ("lcm", 1.0, "", 8, 0.5),
    ("lcm", 2.5, "blurry, dark", 4, 0.75),
    ("euler", 1.0, "", 6, 0.5),
    ("euler", 3.0, "blurry", 4, 1.0),
    ("euler_a", 1.0, "", 4, 0.5),
    ("euler_a", 2.0, "blurry", 5, 0.8),
]


@pytest.mark.parametrize(("sampler", "cfg", "negative", "steps", "strength"), CASES)
def test_img2img_matches_diffusers(
    sampler: str, cfg: float, negative: str, steps: int, strength: float
) -> None:
    parts = tiny_parts()
    canvas = make_canvas(64, 48, seed=5)
    params = {"prompt": "a red house by a lake", "negative_prompt": negative, "cfg": cfg, "steps": steps,
              "strength": strength, "seed": 1234, "sampler": sampler}  # fmt: skip
    engine, _ = make_engine(store=None)
    engine.settings.min_side = 32
    engine.settings.working_size = False  # the pipeline renders at the canvas's own size
    ours = run(engine, job(canvas, **params)).image
    reference = img2img_pipeline(parts, sampler)(
        prompt=params["prompt"], negative_prompt=negative or None, image=Image.fromarray(canvas[..., :3]),
        strength=strength, num_inference_steps=steps, guidance_scale=cfg,
        generator=torch.Generator().manual_seed(1234), output_type="np",
    ).images  # fmt: skip
    assert_agrees(ours, reference)
