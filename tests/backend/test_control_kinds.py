"""The ControlNet 1.1 kinds end to end on real files: control layers made "from image" (canny, depth from a
tiny Depth Anything folder) guide a generation through ControlNet 1.1 single files picked by their published
names, several at once, bit-identical to diffusers' StableDiffusionControlNetImg2ImgPipeline fed the
annotators' own white-on-black and gray images."""

# diffusers' and torch's annotations reject their own documented calls here (pipelines with
# safety_checker=None, from_config results, config and submodule attributes)
# pyright: reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from backend.engine import Engine, EngineJob, EngineSettings
from backend.engine.annotate import canny_edges
from protocol.messages import ControlParam, JobParams
from tests.backend.test_engine_agreement import SCHEDULERS, assert_agrees
from tests.backend.test_engine_support import make_canvas, run
from tests.fixtures import ldm_writer
from tests.fixtures.tiny_annotators import write_tiny_depth
from tests.fixtures.tiny_models import TinyModels, build_controlnet, build_unet

pytestmark = pytest.mark.slow

CANNY = "control_v11p_sd15_canny.safetensors"
DEPTH = "control_v11f1p_sd15_depth_fp16.safetensors"
LINEART = "control_v11p_sd15_lineart.safetensors"


@pytest.fixture(scope="module")
def kinds_models(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the tiny checkpoint, ControlNet 1.1 files of three new kinds under their
    published names (with and without the `control_model.` prefix) and a tiny depth estimator."""
    root = tmp_path_factory.mktemp("kinds") / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / tiny_models.checkpoint).symlink_to(
        tiny_models.path("checkpoints", tiny_models.checkpoint)
    )
    unet = build_unet(seed=1)
    for name, seed, prefix in ((CANNY, 21, ldm_writer.CONTROLNET_PREFIX), (DEPTH, 22, ""), (LINEART, 23, "")):
        model = build_controlnet(unet, seed)
        tensors = ldm_writer.controlnet_to_ldm(model.state_dict(), model.config)
        ldm_writer.save_tensors(root / "controlnet" / name, ldm_writer.with_prefix(prefix, tensors))
    write_tiny_depth(root / "annotators")
    return root


@pytest.fixture(scope="module")
def loaded(kinds_models: Path, tiny_models: TinyModels) -> tuple[Engine, Any]:
    from backend.loading.model_cache import ModelCache
    from backend.model_files import ModelStore

    cache = ModelCache(ModelStore(kinds_models), torch.device("cpu"), torch.float32, tiny_models.config_dir)
    settings = EngineSettings(min_side=32, working_size=False)  # the pipeline renders at the canvas's size
    return Engine(cache, torch.device("cpu"), torch.float32, settings), cache


def drawing(width: int, height: int) -> np.ndarray:
    """A canvas with shapes on the test gradient: edges to find, regions at different depths."""
    canvas = make_canvas(width, height, seed=9)
    image = Image.fromarray(canvas[..., :3])
    draw = ImageDraw.Draw(image)
    draw.rectangle((width * 0.15, height * 0.2, width * 0.55, height * 0.8), fill=(240, 240, 30))
    draw.ellipse((width * 0.5, height * 0.35, width * 0.9, height * 0.9), fill=(20, 40, 200))
    canvas[..., :3] = np.asarray(image)
    return canvas


def from_image(engine: Engine, kind: str, canvas: np.ndarray) -> np.ndarray:
    job = EngineJob("control_image", JobParams(control_kind=kind), canvas)
    return run(engine, job).image


def test_canny_and_depth_from_image_together_match_diffusers(loaded: tuple[Engine, Any]) -> None:
    import diffusers
    from diffusers import StableDiffusionControlNetImg2ImgPipeline
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    engine, cache = loaded
    sampler = "euler_a"  # stochastic steps and, with cfg 2, the negative pass: the most that can differ
    canvas = drawing(64, 64)
    canny_layer, depth_layer = from_image(engine, "canny", canvas), from_image(engine, "depth", canvas)
    controls = [
        ControlParam("canny", strength=0.8, end=0.75, image="canny"),
        ControlParam("depth", strength=1.2, start=0.25, image="depth"),
    ]
    params = JobParams(
        prompt="a still life", sampler=sampler, steps=6, strength=0.8, seed=4, cfg=2.0, controls=controls
    )
    images = {"canny": canny_layer, "depth": depth_layer}
    ours = run(engine, EngineJob("img2img", params, canvas, None, images))
    assert ours.params["controlnets"] == [CANNY, DEPTH]  # picked by the kinds' words in the published names

    parts = cache.components(ours.params["checkpoint"])
    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        controlnet=MultiControlNetModel([cache.controlnet(CANNY), cache.controlnet(DEPTH)]),
        scheduler=getattr(diffusers, SCHEDULERS[sampler]).from_config(parts.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    # What the ControlNet 1.1 annotators hand the pipeline: white edges on black, the gray depth map.
    edges = np.repeat(canny_edges(canvas[..., :3])[..., None], 3, axis=2)
    depth = depth_layer[..., :3]
    reference = pipe(
        prompt="a still life", image=Image.fromarray(canvas[..., :3]),
        control_image=[Image.fromarray(edges), Image.fromarray(depth)], strength=0.8, num_inference_steps=6,
        guidance_scale=2.0, controlnet_conditioning_scale=[0.8, 1.2], control_guidance_start=[0.0, 0.25],
        control_guidance_end=[0.75, 1.0], generator=torch.Generator().manual_seed(4), output_type="np",
    ).images  # fmt: skip
    assert_agrees(ours.image, reference)


def test_each_new_kind_guides_and_a_painters_drawing_equals_the_annotators_image(
    loaded: tuple[Engine, Any],
) -> None:
    engine, _ = loaded
    canvas = drawing(48, 48)
    base = {"prompt": "a still life", "steps": 4, "strength": 0.7, "seed": 2}
    plain = run(engine, EngineJob("img2img", JobParams(**base), canvas)).image
    edges = canny_edges(canvas[..., :3])
    layer = from_image(engine, "canny", canvas)
    drawn_on_paper = np.full((48, 48, 4), 255, dtype=np.uint8)
    drawn_on_paper[..., :3] = 255 - edges[..., None]  # black lines on white, as a painter draws them
    outputs = []
    for kind, image in (("canny", layer), ("canny", drawn_on_paper), ("lineart", layer)):
        job = EngineJob("img2img", JobParams(**base, controls=[ControlParam(kind, image="c")]), canvas, None)
        job.control_images = {"c": image}
        result = run(engine, job)
        assert result.params["controlnets"] == [CANNY if kind == "canny" else LINEART]
        outputs.append(result.image)
    assert np.array_equal(outputs[0], outputs[1])  # the from-image layer and the drawing: one hint
    assert not np.array_equal(outputs[0], plain) and not np.array_equal(outputs[0], outputs[2])
