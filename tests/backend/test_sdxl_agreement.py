"""SDXL through the engine equals diffusers' SDXL pipelines on the same file, bit for bit on the CPU.

The engine loads the tiny SDXL single file through the project's own loader (backend/loading) and the model
cache; the reference pipeline loads the same file through diffusers' own single-file loader. So this checks
the loader and the engine's SDXL conditioning (two text encoders, pooled embedding, size time ids, zeros for
an empty negative prompt) together.
"""

# diffusers' annotations reject their own documented calls (from_single_file with config=, pipeline calls)
# pyright: reportArgumentType=false, reportCallIssue=false

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from backend.engine import Engine, EngineSettings
from backend.loading.model_cache import ModelCache
from backend.model_files import ModelStore
from tests.backend.test_engine_agreement import SCHEDULERS, assert_agrees, owned_pipeline
from tests.backend.test_engine_support import job, make_canvas, run
from tests.fixtures.tiny_sdxl import TinySdxl, build_tiny_sdxl

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> TinySdxl:
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "models")


@pytest.fixture(scope="module")
def engine(tiny_sdxl: TinySdxl) -> Engine:
    cache = ModelCache(ModelStore(tiny_sdxl.root), CPU, torch.float32, tiny_sdxl.shared_config_dir)
    # The pipeline renders at the canvas's own size; the tiny UNet takes sides down to 32 px.
    return Engine(cache, CPU, torch.float32, EngineSettings(working_size=False, min_side=32))


def reference_pipeline(tiny: TinySdxl, name: str, pipeline: str, sampler: str) -> Any:
    import diffusers

    pipe = getattr(diffusers, pipeline).from_single_file(
        str(tiny.path("checkpoints", name)), config=str(tiny.config_dir), local_files_only=True
    )
    pipe.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return owned_pipeline(pipe)


CASES = [
    ("lcm", 1.0, "", 4, 0.5),
    ("euler", 3.0, "blurry, dark", 4, 0.75),
    ("euler", 2.5, "", 5, 0.6),  # an empty negative prompt is zeros, as SDXL's pipelines make it
    ("euler_a", 2.0, "blurry", 4, 1.0),
]


@pytest.mark.parametrize(("sampler", "cfg", "negative", "steps", "strength"), CASES)
def test_sdxl_img2img_matches_diffusers(
    engine: Engine, tiny_sdxl: TinySdxl, sampler: str, cfg: float, negative: str, steps: int, strength: float
) -> None:
    canvas = make_canvas(64, 48, seed=9)
    # lcm_lora_strength 0: the base model alone, as the reference pipeline has no LCM-LoRA fused
    params = {"prompt": "a lighthouse at dusk", "negative_prompt": negative, "cfg": cfg, "steps": steps,
              "strength": strength, "seed": 4321, "sampler": sampler, "lcm_lora_strength": 0.0}  # fmt: skip
    result = run(engine, job(canvas, checkpoint=tiny_sdxl.checkpoint, **params))
    pipe = reference_pipeline(tiny_sdxl, tiny_sdxl.checkpoint, "StableDiffusionXLImg2ImgPipeline", sampler)
    reference = pipe(
        prompt=params["prompt"], negative_prompt=negative or None, image=Image.fromarray(canvas[..., :3]),
        strength=strength, num_inference_steps=steps, guidance_scale=cfg,
        generator=torch.Generator().manual_seed(4321), output_type="np",
    ).images  # fmt: skip
    assert_agrees(result.image, reference)
    assert result.params["checkpoint"] == tiny_sdxl.checkpoint


def _copy_with(source: Path, target: Path, extra: dict[str, torch.Tensor], prefix: str | None = None) -> None:
    """A copy of a single file with extra tensors, or only the tensors under `prefix` (prefix removed)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(source))
    if prefix is not None:
        tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({**tensors, **extra}, str(target))


def test_an_sdxl_vae_override_keeps_sdxls_latent_scale(engine: Engine, tiny_sdxl: TinySdxl) -> None:
    """The checkpoint's own VAE weights as a separate file: read with SDXL's config (scale 0.13025), the image
    is the same as without the override; SD1.5's scale would change it."""
    vae_file = tiny_sdxl.root / "vae" / "tiny-sdxl-vae.safetensors"
    _copy_with(tiny_sdxl.path("checkpoints", tiny_sdxl.checkpoint), vae_file, {}, prefix="first_stage_model.")
    canvas = make_canvas(64, 48, seed=12)
    params = {"checkpoint": tiny_sdxl.checkpoint, "steps": 3, "strength": 0.6, "seed": 8, "sampler": "euler"}
    plain = run(engine, job(canvas, **params)).image
    overridden = run(engine, job(canvas, vae=vae_file.name, **params))
    assert overridden.params["vae"] == vae_file.name
    assert overridden.image.tobytes() == plain.tobytes()


def test_a_v_prediction_file_runs_as_its_markers_say(engine: Engine, tiny_sdxl: TinySdxl) -> None:
    """`v_pred` and `ztsnr` in the file: v-prediction with the zero-terminal-SNR schedule, as diffusers'
    pipeline does when its scheduler is set so."""
    import diffusers

    name = "tiny-sdxl-vpred.safetensors"
    marker = torch.zeros(0)
    _copy_with(
        tiny_sdxl.path("checkpoints", tiny_sdxl.checkpoint),
        tiny_sdxl.path("checkpoints", name),
        {"v_pred": marker, "ztsnr": marker},
    )
    canvas = make_canvas(64, 48, seed=13)
    params = {
        "prompt": "a quiet street",
        "cfg": 2.0,
        "steps": 4,
        "strength": 0.7,
        "seed": 21,
        "sampler": "euler",
    }
    result = run(engine, job(canvas, checkpoint=name, **params))
    pipe = reference_pipeline(tiny_sdxl, tiny_sdxl.checkpoint, "StableDiffusionXLImg2ImgPipeline", "euler")
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, prediction_type="v_prediction", rescale_betas_zero_snr=True
    )
    reference = pipe(
        prompt=params["prompt"], image=Image.fromarray(canvas[..., :3]), strength=0.7, num_inference_steps=4,
        guidance_scale=2.0, generator=torch.Generator().manual_seed(21), output_type="np",
    ).images  # fmt: skip
    assert_agrees(result.image, reference)
    epsilon = run(engine, job(canvas, checkpoint=tiny_sdxl.checkpoint, **params)).image
    assert epsilon.tobytes() != result.image.tobytes()


def test_an_sdxl_turbo_file_runs_as_its_model_card_says(engine: Engine, tiny_sdxl: TinySdxl) -> None:
    """SDXL-Turbo is SDXL's architecture distilled for 1-4 steps without CFG: its card runs the img2img
    pipeline with Euler ancestral on trailing timesteps (its published scheduler config), 2 steps at strength
    0.5 and guidance_scale 0. The same single file through the engine with sampler euler_a_trailing and CFG 1
    (no LCM-LoRA: it is not the LCM sampler) gives the pipeline's image."""
    import diffusers

    name = "tiny-sdxl-turbo.safetensors"
    _copy_with(tiny_sdxl.path("checkpoints", tiny_sdxl.checkpoint), tiny_sdxl.path("checkpoints", name), {})
    canvas = make_canvas(64, 48, seed=17)
    params = {"prompt": "a cat in a hat", "cfg": 1.0, "steps": 2, "strength": 0.5, "seed": 8,
              "sampler": "euler_a_trailing"}  # fmt: skip
    result = run(engine, job(canvas, checkpoint=name, **params))
    assert result.params["lcm_lora"] is None
    pipe = reference_pipeline(tiny_sdxl, name, "StableDiffusionXLImg2ImgPipeline", "euler_a")
    pipe.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing"
    )
    reference = pipe(
        prompt=params["prompt"], image=Image.fromarray(canvas[..., :3]), strength=0.5, num_inference_steps=2,
        guidance_scale=0.0, generator=torch.Generator().manual_seed(8), output_type="np",
    ).images  # fmt: skip
    assert_agrees(result.image, reference)
