"""Reference images through the engine equal diffusers' img2img pipelines with `load_ip_adapter` on the same
IP-Adapter files, bit for bit on the CPU: one reference, two at once (each with its strength), the plus
variant, SD1.5 and SDXL.

The engine reads the tiny files through the model store and the project's loaders (the single-file CLIP
vision encoder's config inferred from its shapes, the folder one from its config.json); the pipelines get
the same files through diffusers' own IP-Adapter loader and transformers' encoder classes.
"""

# diffusers' annotations reject their own documented calls (pipeline construction and calls)
# pyright: reportArgumentType=false, reportCallIssue=false

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from backend.engine import Engine, EngineJob, EngineSettings
from backend.loading.model_cache import ModelCache
from backend.model_files import ModelStore
from protocol.messages import JobParams
from protocol.references import ReferenceParam
from protocol.regions import RegionParam, region_prompt
from tests.backend.test_engine_agreement import SCHEDULERS, assert_agrees
from tests.backend.test_engine_support import make_canvas, run
from tests.fixtures.tiny_ip_adapter import (
    FOLDER_ENCODER,
    SINGLE_FILE_ENCODER,
    TinyReferences,
    write_tiny_references,
)
from tests.fixtures.tiny_models import TinyModels, build_tiny_models
from tests.fixtures.tiny_sdxl import TinySdxl, build_tiny_sdxl

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyModels, TinySdxl, TinyReferences]:
    root = tmp_path_factory.mktemp("refs") / "models"
    sd15 = build_tiny_models(root)
    sdxl = build_tiny_sdxl(root)
    return sd15, sdxl, write_tiny_references(root)


@pytest.fixture(scope="module")
def engine(tiny: tuple[TinyModels, TinySdxl, TinyReferences]) -> Engine:
    sd15, sdxl, _ = tiny
    cache = ModelCache(ModelStore(sd15.root), CPU, torch.float32, sdxl.shared_config_dir)
    return Engine(cache, CPU, torch.float32, EngineSettings(working_size=False, min_side=32))


def picture(width: int, height: int, seed: int) -> np.ndarray:
    """A reference image: RGBA with some transparency (flattened on white, as the pipeline is given)."""
    image = make_canvas(width, height, seed=seed)
    image[: height // 4, :, 3] = 0
    return image


def flattened(rgba: np.ndarray) -> Image.Image:
    alpha = rgba[..., 3:4].astype(np.uint32)
    rgb = (rgba[..., :3].astype(np.uint32) * alpha + 255 * (255 - alpha) + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8))


def processor(config: dict[str, Any]) -> Any:
    from transformers import CLIPImageProcessor

    size = config["image_size"]
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def encoder(refs: TinyReferences, plus: bool) -> Any:
    from transformers import CLIPVisionModelWithProjection

    if plus:
        return CLIPVisionModelWithProjection.from_pretrained(refs.path("clip_vision", refs.encoder_folder))
    from tests.fixtures.tiny_ip_adapter import build_encoder

    return build_encoder(SINGLE_FILE_ENCODER, seed=61)


def reference_pipeline(checkpoint: Path, config: Path, sdxl: bool, sampler: str, refs: TinyReferences,
                       adapters: list[str], plus: bool) -> Any:  # fmt: skip
    import diffusers

    name = "StableDiffusionXLImg2ImgPipeline" if sdxl else "StableDiffusionImg2ImgPipeline"
    pipe = getattr(diffusers, name).from_single_file(
        str(checkpoint), config=str(config), local_files_only=True,
        image_encoder=encoder(refs, plus),
        feature_extractor=processor(FOLDER_ENCODER if plus else SINGLE_FILE_ENCODER),
    )  # fmt: skip
    pipe.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    pipe.load_ip_adapter(
        str(refs.root / "ipadapter"), subfolder="", weight_name=adapters, image_encoder_folder=None
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


CASES = [
    # family, plus, sampler, cfg, strengths
    ("sd15", False, "euler", 3.0, [0.8]),
    ("sd15", False, "lcm", 1.0, [0.6, 1.3]),
    ("sd15", True, "euler_a", 2.0, [1.0]),
    ("sdxl", False, "euler", 2.5, [0.7, 0.4]),
    ("sdxl", True, "lcm", 1.0, [0.9]),
]


@pytest.mark.parametrize(("family", "plus", "sampler", "cfg", "strengths"), CASES)
def test_references_match_diffusers(
    engine: Engine,
    tiny: tuple[TinyModels, TinySdxl, TinyReferences],
    family: str,
    plus: bool,
    sampler: str,
    cfg: float,
    strengths: list[float],
) -> None:
    sd15, sdxl, refs = tiny
    checkpoint = sdxl.checkpoint if family == "sdxl" else sd15.checkpoint
    adapter = refs.adapter(family, plus)
    canvas = make_canvas(64, 48, seed=11)
    images = {f"ref{i}": picture(40 + 8 * i, 36, seed=20 + i) for i in range(len(strengths))}
    references = [ReferenceParam(f"ref{i}", model=adapter, strength=s) for i, s in enumerate(strengths)]
    params = JobParams(
        prompt="a lighthouse", negative_prompt="blurry", cfg=cfg, steps=4, strength=0.75, seed=99,
        sampler=sampler, lcm_lora_strength=0.0, checkpoint=checkpoint, references=references,
    )  # fmt: skip
    result = run(engine, EngineJob("img2img", params, canvas, None, images))
    assert result.params["ip_adapters"] == [adapter] * len(strengths)
    config = sdxl.config_dir if family == "sdxl" else sd15.config_dir
    pipe = reference_pipeline(
        refs.root / "checkpoints" / checkpoint, config, family == "sdxl", sampler, refs,
        [adapter] * len(strengths), plus,
    )  # fmt: skip
    pipe.set_ip_adapter_scale(strengths)
    reference = pipe(
        prompt="a lighthouse", negative_prompt="blurry", image=Image.fromarray(canvas[..., :3]),
        ip_adapter_image=[flattened(images[f"ref{i}"]) for i in range(len(strengths))],
        strength=0.75, num_inference_steps=4, guidance_scale=cfg,
        generator=torch.Generator().manual_seed(99), output_type="np",
    ).images  # fmt: skip
    assert_agrees(result.image, reference)
    assert result.params["clip_vision"] == [refs.encoder_folder if plus else refs.encoder_file] * len(
        strengths
    )


def reference_job(checkpoint: str, references: list[ReferenceParam], images: dict[str, np.ndarray],
                  **overrides: Any) -> EngineJob:  # fmt: skip
    params: dict[str, Any] = {"prompt": "a lighthouse", "cfg": 2.0, "steps": 4, "strength": 0.75,
                              "seed": 5, "sampler": "euler", "lcm_lora_strength": 0.0,
                              "checkpoint": checkpoint}  # fmt: skip
    params.update(overrides)
    return EngineJob(
        "img2img", JobParams(**params, references=references), make_canvas(48, 48, 3), None, images
    )


def test_a_reference_changes_the_result_and_leaves_no_trace(
    engine: Engine, tiny: tuple[TinyModels, TinySdxl, TinyReferences]
) -> None:
    sd15, _, refs = tiny
    images = {"look": picture(40, 40, seed=31)}
    reference = [ReferenceParam("look", model=refs.adapter("sd15"))]
    plain = run(engine, reference_job(sd15.checkpoint, [], {})).image
    first = run(engine, reference_job(sd15.checkpoint, reference, images))
    again = run(engine, reference_job(sd15.checkpoint, reference, images))
    after = run(engine, reference_job(sd15.checkpoint, [], {})).image
    assert first.image.tobytes() != plain.tobytes()
    assert first.params["references_cached"] == 0 and again.params["references_cached"] == 1
    assert again.image.tobytes() == first.image.tobytes()
    assert after.tobytes() == plain.tobytes()  # the UNet's own attention is back: bit-identical
    other = run(engine, reference_job(sd15.checkpoint, reference, {"look": picture(40, 40, seed=32)}))
    assert other.params["references_cached"] == 0 and other.image.tobytes() != first.image.tobytes()


def test_start_end_count_steps_as_controlnets_do(
    engine: Engine, tiny: tuple[TinyModels, TinySdxl, TinyReferences]
) -> None:
    sd15, _, refs = tiny
    images = {"look": picture(40, 40, seed=33)}
    adapter = refs.adapter("sd15", plus=True)
    plain = run(engine, reference_job(sd15.checkpoint, [], {})).image
    full = run(engine, reference_job(sd15.checkpoint, [ReferenceParam("look", model=adapter)], images)).image
    late = ReferenceParam("look", model=adapter, start=0.5)
    half = run(engine, reference_job(sd15.checkpoint, [late], images)).image
    assert len({plain.tobytes(), full.tobytes(), half.tobytes()}) == 3
    never = ReferenceParam("look", model=adapter, start=0.6, end=0.6)  # no step of 4 lies inside
    assert run(engine, reference_job(sd15.checkpoint, [never], images)).image.tobytes() == plain.tobytes()
    zero = ReferenceParam("look", model=adapter, strength=0.0)
    assert run(engine, reference_job(sd15.checkpoint, [zero], {})).image.tobytes() == plain.tobytes()


def test_style_and_composition_use_instantstyle_blocks_on_sdxl_only(
    engine: Engine, tiny: tuple[TinyModels, TinySdxl, TinyReferences]
) -> None:
    from backend.engine import EngineInputError

    sd15, sdxl, refs = tiny
    images = {"look": picture(40, 40, seed=34)}
    made = {
        kind: run(engine, reference_job(
            sdxl.checkpoint, [ReferenceParam("look", kind=kind, model=refs.adapter("sdxl"))], images
        )).image.tobytes()
        for kind in ("reference", "style", "composition")
    }  # fmt: skip
    plain = run(engine, reference_job(sdxl.checkpoint, [], {})).image.tobytes()
    assert len({plain, *made.values()}) == 4
    with pytest.raises(EngineInputError, match=r"'style' is not available for SD 1\.5 checkpoints"):
        run(engine, reference_job(sd15.checkpoint, [ReferenceParam("look", kind="style")], images))


def test_references_ride_along_with_regions(
    engine: Engine, tiny: tuple[TinyModels, TinySdxl, TinyReferences]
) -> None:
    """Regions repeat the cond row of every added-conditioning tensor, the image embeddings included: the
    UNet call takes them row for row (a wrong batch would fail it), with CFG and without."""
    from protocol.regions import RegionParam

    _, sdxl, refs = tiny
    mask = np.zeros((48, 48), np.uint8)
    mask[:, :24] = 255
    images = {"look": picture(40, 40, seed=35), "left": mask}
    reference = [ReferenceParam("look", model=refs.adapter("sdxl", plus=True))]
    regions = [RegionParam("left", "a boat")]
    for cfg in (1.0, 2.5):
        alone = run(engine, reference_job(sdxl.checkpoint, reference, images, cfg=cfg))
        both = run(engine, reference_job(sdxl.checkpoint, reference, images, cfg=cfg, regions=regions))
        assert (
            both.params["regions_counted"] == 1 and both.params["ip_adapters"] == alone.params["ip_adapters"]
        )
        assert both.image.tobytes() != alone.image.tobytes()


def test_inpaint_with_a_reference_changes_only_the_selection(
    engine: Engine, tiny: tuple[TinyModels, TinySdxl, TinyReferences]
) -> None:
    from protocol.messages import InpaintParam

    sd15, _, refs = tiny
    canvas = make_canvas(64, 64, seed=12)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 20:52] = 255
    images = {"look": picture(40, 40, seed=36)}
    reference = [ReferenceParam("look", model=refs.adapter("sd15"), strength=1.2)]

    def inpaint(references: list[ReferenceParam]) -> Any:
        params = JobParams(
            prompt="a lighthouse", cfg=2.0, steps=4, strength=1.0, seed=5, sampler="euler",
            lcm_lora_strength=0.0, checkpoint=sd15.checkpoint, references=references,
            inpaint=InpaintParam(grow=0, feather=0, padding=8),
        )  # fmt: skip
        return run(engine, EngineJob("inpaint", params, canvas, mask, images))

    plain, guided = inpaint([]), inpaint(reference)
    assert plain.bounds == guided.bounds and guided.params["ip_adapters"] == [refs.adapter("sd15")]
    x, y, w, h = guided.bounds
    outside = mask[y : y + h, x : x + w] == 0
    assert np.array_equal(plain.image[outside], guided.image[outside])
    assert not np.array_equal(plain.image[~outside], guided.image[~outside])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_references_with_regions(
    engine: Engine, tiny: tuple[TinyModels, TinySdxl, TinyReferences], family: str
) -> None:
    """A reference acts in every region row: with one region over the whole canvas the job equals the
    plain job with the region's joined prompt and the same reference (CFG on, so the uncond row too)."""
    sd15, sdxl, refs = tiny
    checkpoint = sdxl.checkpoint if family == "sdxl" else sd15.checkpoint
    images = {"look": picture(40, 40, seed=34), "everywhere": np.full((48, 48), 255, np.uint8)}
    reference = [ReferenceParam("look", model=refs.adapter(family))]
    region = RegionParam("everywhere", "a red door")
    regional = run(engine, reference_job(checkpoint, reference, images, regions=[region]))
    joined = run(
        engine,
        reference_job(checkpoint, reference, images, prompt=region_prompt("a red door", "a lighthouse")),
    )
    assert regional.params["regions_counted"] == 1 and regional.params["ip_adapters"]
    assert regional.image.tobytes() == joined.image.tobytes()
    unreferenced = run(
        engine, reference_job(checkpoint, [], {"everywhere": images["everywhere"]}, regions=[region])
    )
    assert unreferenced.image.tobytes() != regional.image.tobytes()
