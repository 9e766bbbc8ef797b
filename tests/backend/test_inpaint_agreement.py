"""Selection inpaint agrees with diffusers' inpaint pipelines on the same weights, inputs and seed: the
regular (4-channel) UNet with the latent hold and the dedicated 9-channel inpainting UNet, SD1.5 and SDXL.

The engine's inpaint does more than the pipelines (a work area cropped around the selection, feathering, the
result as a layer); the comparison takes the case where both mean the same: a binary mask of whole 8x8
cells (the pipeline's nearest-neighbour latent mask and the engine's max-pooled one agree), no grow or
feather, padding over the whole canvas (the work area is the canvas) of the model's working size (so it
is rendered at its own size, as the pipelines render). Inside the selection the layer's pixels are the
pipeline's output."""

# diffusers' annotations reject its own documented calls (pipelines built with None parts)
# pyright: reportArgumentType=false

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from protocol.messages import InpaintParam
from tests.backend.test_engine_agreement import SCHEDULERS, as_uint8, in_owned_memory
from tests.backend.test_engine_support import job, make_canvas, make_engine, run, tiny_parts

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
WIDTH, HEIGHT = 128, 128  # the tiny models' working size: the work area is rendered at its own size
WHOLE_CANVAS = InpaintParam(grow=0, feather=0, padding=2048)


def cell_mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[24:88, 40:104] = 255  # whole 8x8 cells
    return mask


def sd15_pipeline(unet: Any, sampler: str) -> Any:
    import diffusers
    from diffusers import StableDiffusionInpaintPipeline

    parts = tiny_parts()
    pipe = StableDiffusionInpaintPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=unet,
        scheduler=getattr(diffusers, SCHEDULERS[sampler]).from_config(parts.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


CASES = [
    # (checkpoint, sampler, cfg, steps, strength); the 4-channel UNet with samplers that draw no noise in
    # their steps: the pipeline encodes the masked image for it too, a draw the engine has no use for.
    ("tiny.safetensors", "euler", 1.0, 4, 0.75),
    ("tiny.safetensors", "euler", 3.0, 4, 1.0),
    ("tiny-inpainting.safetensors", "lcm", 1.0, 8, 0.5),
    ("tiny-inpainting.safetensors", "euler", 2.5, 4, 0.75),
    ("tiny-inpainting.safetensors", "euler_a", 1.0, 4, 1.0),
]


@pytest.mark.parametrize(("checkpoint", "sampler", "cfg", "steps", "strength"), CASES)
def test_sd15_inpaint_matches_the_pipeline(
    checkpoint: str, sampler: str, cfg: float, steps: int, strength: float
) -> None:
    parts = tiny_parts()
    canvas, mask = make_canvas(WIDTH, HEIGHT, seed=9), cell_mask()
    params = {"prompt": "a red house by a lake", "negative_prompt": "blurry" if cfg > 1 else "", "cfg": cfg,
              "steps": steps, "strength": strength, "seed": 99, "sampler": sampler, "checkpoint": checkpoint,
              "inpaint": WHOLE_CANVAS}  # fmt: skip
    engine, _ = make_engine()
    result = run(engine, job(canvas, mode="inpaint", mask=mask, **params))
    assert result.bounds == (0, 0, WIDTH, HEIGHT)
    unet = parts.inpaint_unet if "inpainting" in checkpoint else parts.unet
    reference = sd15_pipeline(unet, sampler)(
        prompt=params["prompt"], negative_prompt=params["negative_prompt"] or None,
        image=Image.fromarray(canvas[..., :3]), mask_image=Image.fromarray(mask), height=HEIGHT, width=WIDTH,
        strength=strength, num_inference_steps=steps, guidance_scale=cfg,
        generator=torch.Generator().manual_seed(99), output_type="np",
    ).images  # fmt: skip
    inside = mask > 0
    difference = np.abs(result.image[..., :3].astype(int) - as_uint8(reference).astype(int))[inside]
    assert difference.max() == 0, f"max difference {difference.max()} uint8 levels inside the selection"


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.fixtures.tiny_sdxl import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "models")


def reference_configs(tiny_sdxl: Any, which: str) -> Path:
    """The tiny SDXL configs for diffusers' single-file loader; for the inpainting file, with the UNet's 9
    input channels (diffusers reads them from the config, not from the weights)."""
    if which == "checkpoint":
        return tiny_sdxl.config_dir
    folder = tiny_sdxl.root.parent / "tiny-config-inpaint" / "sdxl"
    if not folder.exists():
        shutil.copytree(tiny_sdxl.config_dir, folder)
        config = json.loads((folder / "unet" / "config.json").read_text())
        (folder / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": 9}))
    return folder


SDXL_CASES = [
    ("checkpoint", "euler", 3.0, "blurry, dark", 4, 0.75),
    ("checkpoint", "euler", 2.5, "", 4, 1.0),  # an empty negative prompt is zeros, as the pipeline makes it
    ("inpaint_checkpoint", "lcm", 1.0, "", 8, 0.5),
    ("inpaint_checkpoint", "euler", 2.0, "blurry", 4, 0.75),
    ("inpaint_checkpoint", "euler_a", 1.0, "", 4, 1.0),
]


@pytest.mark.parametrize(("which", "sampler", "cfg", "negative", "steps", "strength"), SDXL_CASES)
def test_sdxl_inpaint_matches_the_pipeline(
    tiny_sdxl: Any, which: str, sampler: str, cfg: float, negative: str, steps: int, strength: float
) -> None:
    import diffusers

    from backend.engine import Engine
    from backend.loading.model_cache import ModelCache
    from backend.model_files import ModelStore

    checkpoint = getattr(tiny_sdxl, which)
    cache = ModelCache(ModelStore(tiny_sdxl.root), CPU, torch.float32, tiny_sdxl.shared_config_dir)
    engine = Engine(cache, CPU, torch.float32)
    canvas, mask = make_canvas(WIDTH, HEIGHT, seed=10), cell_mask()
    # lcm_lora_strength 0: the base model alone, as the reference pipeline has no LCM-LoRA fused
    params = {"prompt": "a lighthouse at dusk", "negative_prompt": negative, "cfg": cfg, "steps": steps,
              "strength": strength, "seed": 77, "sampler": sampler, "checkpoint": checkpoint,
              "lcm_lora_strength": 0.0, "inpaint": WHOLE_CANVAS}  # fmt: skip
    result = run(engine, job(canvas, mode="inpaint", mask=mask, **params))
    assert result.bounds == (0, 0, WIDTH, HEIGHT) and result.params["generation_size"] == [WIDTH, HEIGHT]
    pipe: Any = diffusers.StableDiffusionXLInpaintPipeline.from_single_file(
        str(tiny_sdxl.path("checkpoints", checkpoint)),
        config=str(reference_configs(tiny_sdxl, which)),
        local_files_only=True,
    )
    pipe.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    in_owned_memory(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
    reference = pipe(
        prompt=params["prompt"], negative_prompt=negative or None, image=Image.fromarray(canvas[..., :3]),
        mask_image=Image.fromarray(mask), height=HEIGHT, width=WIDTH, strength=strength,
        num_inference_steps=steps, guidance_scale=cfg, generator=torch.Generator().manual_seed(77),
        output_type="np",
    ).images  # fmt: skip
    inside = mask > 0
    difference = np.abs(result.image[..., :3].astype(int) - as_uint8(reference).astype(int))[inside]
    assert difference.max() == 0, f"max difference {difference.max()} uint8 levels inside the selection"
