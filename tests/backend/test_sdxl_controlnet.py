"""SDXL ControlNets: the published layouts load as built, the engine's guidance equals diffusers' SDXL
ControlNet img2img pipeline bit for bit on the CPU, and a ControlNet of another family than the checkpoint's
is refused.

The engine loads everything through the project's loaders and the real model cache; the reference pipeline
loads the same checkpoint file and ControlNets through diffusers' own loaders (single file, from_pretrained).
"""

# diffusers' annotations reject their own documented calls (from_single_file with config=, pipeline calls)
# pyright: reportArgumentType=false, reportCallIssue=false, reportAttributeAccessIssue=false

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from backend.engine import Engine, EngineSettings
from backend.engine.controlnet import choose_controlnet, scribble_hint
from backend.engine.model_choice import choose_models
from backend.engine.pose import render_pose
from backend.loading.configs import CONFIGS_DIR
from backend.loading.controlnet import controlnet_family, load_controlnet
from backend.loading.model_cache import ModelCache
from backend.model_errors import ModelError, ModelNotFoundError
from backend.model_families import SD15, SDXL
from backend.model_files import ModelStore
from protocol.messages import ControlParam, JobParams
from tests.backend.fake_headers import controlnet as original_controlnet_header
from tests.backend.fake_headers import sd15_checkpoint, sdxl_checkpoint, write_safetensors
from tests.backend.test_engine_agreement import SCHEDULERS, assert_agrees, owned_pipeline
from tests.backend.test_engine_controlnet import PERSON, control_job, scribble
from tests.backend.test_engine_support import make_canvas, run
from tests.fixtures.tiny_models import TinyModels, build_tiny_models
from tests.fixtures.tiny_sdxl import (
    CONTROLNET_SEEDS,
    SdxlModels,
    TinySdxl,
    build_controlnet,
    build_models,
    build_tiny_sdxl,
)

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
WEIGHTS = "diffusion_pytorch_model.safetensors"
# The models folder holds SD1.5's tiny LCM-LoRA too: the lcm sampler would pick it for any checkpoint.
NO_LCM_LORA = {"lcm_lora_strength": 0.0}


@pytest.fixture(scope="module")
def sdxl_weights() -> SdxlModels:
    return build_models()


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, sdxl_weights: SdxlModels) -> tuple[TinyModels, TinySdxl]:
    """SD1.5 and SDXL tiny models (ControlNets included) in one models folder, as a painter's folder holds."""
    root = tmp_path_factory.mktemp("sdxl-controlnet") / "models"
    return build_tiny_models(root), build_tiny_sdxl(root, sdxl_weights)


@pytest.fixture(scope="module")
def tiny_sdxl(both: tuple[TinyModels, TinySdxl]) -> TinySdxl:
    return both[1]


@pytest.fixture(scope="module")
def engine(tiny_sdxl: TinySdxl) -> Engine:
    cache = ModelCache(ModelStore(tiny_sdxl.root), CPU, torch.float32, tiny_sdxl.shared_config_dir)
    # The pipeline renders at the canvas's own size; the tiny UNet takes sides down to 32 px.
    return Engine(cache, CPU, torch.float32, EngineSettings(working_size=False, min_side=32))


def built(sdxl_weights: SdxlModels, kind: str) -> torch.nn.Module:
    return build_controlnet(sdxl_weights.unet, CONTROLNET_SEEDS[kind])


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


# --- loading ------------------------------------------------------------------------------------------------


def test_single_file_loads_as_built(tiny_sdxl: TinySdxl, sdxl_weights: SdxlModels) -> None:
    path = tiny_sdxl.path("controlnet", tiny_sdxl.controlnet_scribble)
    names = load_file(str(path))
    assert "add_embedding.linear_1.weight" in names and "controlnet_cond_embedding.conv_in.weight" in names
    # the one config folder the server gets serves both families: SDXL's ControlNet config is in sdxl/
    model = load_controlnet(path, CPU, torch.float32, tiny_sdxl.shared_config_dir)
    assert_same_weights(model, built(sdxl_weights, "scribble"))
    assert model.config.addition_embed_type == "text_time"
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_folder_loads_as_built_with_its_own_config(tiny_sdxl: TinySdxl, sdxl_weights: SdxlModels) -> None:
    folder = tiny_sdxl.path("controlnet", tiny_sdxl.controlnet_openpose)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", WEIGHTS]
    expected = built(sdxl_weights, "openpose")
    # the folder itself, and its weights file as the model lists name it today; no config folder needed
    for path in (folder, folder / WEIGHTS):
        assert_same_weights(load_controlnet(path, CPU, torch.float32), expected)
    half = load_controlnet(folder, CPU, torch.float16, tiny_sdxl.shared_config_dir)
    assert all(p.dtype == torch.float16 for p in half.parameters())
    assert_same_weights(half, expected.to(torch.float16))


def test_the_listed_folder_loads_through_the_model_cache(
    tiny_sdxl: TinySdxl, sdxl_weights: SdxlModels
) -> None:
    store = ModelStore(tiny_sdxl.root)
    listed = [n for n in store.list_kind("controlnet") if n.startswith(tiny_sdxl.controlnet_openpose)]
    assert len(listed) == 1, store.list_kind("controlnet")
    cache = ModelCache(store, CPU, torch.float32, tiny_sdxl.shared_config_dir)
    assert_same_weights(cache.controlnet(listed[0]), built(sdxl_weights, "openpose"))


def test_family_is_told_from_the_file(both: tuple[TinyModels, TinySdxl]) -> None:
    sd15, sdxl = both

    def shapes(path: Path) -> dict[str, tuple[int, ...]]:
        return {name: tuple(t.shape) for name, t in load_file(str(path)).items()}

    # tiny models: a width of no family, told by SDXL's text_time embedding (present or not)
    assert controlnet_family(shapes(sd15.path("controlnet", sd15.controlnet_scribble)), "a") is SD15
    assert controlnet_family(shapes(sd15.path("controlnet", sd15.controlnet_openpose)), "b") is SD15
    assert controlnet_family(shapes(sdxl.path("controlnet", sdxl.controlnet_scribble)), "c") is SDXL
    openpose = sdxl.path("controlnet", sdxl.controlnet_openpose) / WEIGHTS
    assert controlnet_family(shapes(openpose), "d") is SDXL
    # full size, from the shipped configs (built without memory): the text features' width says
    from diffusers import ControlNetModel

    for family in (SD15, SDXL):
        config = ControlNetModel.load_config(str(CONFIGS_DIR / family.controlnet_configs))
        with torch.device("meta"):
            model = ControlNetModel.from_config(config)
        full = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        assert controlnet_family(full, "full") is family
    with pytest.raises(ModelError, match=r"sd21-canny\.safetensors is made for SD 2\.x"):
        controlnet_family(original_controlnet_header(1024), "sd21-canny.safetensors")


def test_the_shipped_sdxl_config_refuses_a_file_of_another_size(tiny_sdxl: TinySdxl, tmp_path: Path) -> None:
    path = tiny_sdxl.path("controlnet", tiny_sdxl.controlnet_scribble)
    with pytest.raises(ModelError, match="doesn't fit the SDXL ControlNet config") as refused:
        load_controlnet(path, CPU, torch.float32)
    assert "config.json" in refused.value.message and "folder of its own" in refused.value.message
    # a --model-config folder without the SDXL ControlNet config: the message says where it goes
    configs = tmp_path / "configs"
    shutil.copytree(tiny_sdxl.shared_config_dir, configs)
    shutil.rmtree(configs / "sdxl" / "controlnet")
    with pytest.raises(ModelError, match=r"sdxl/controlnet/config\.json") as refused:
        load_controlnet(path, CPU, torch.float32, configs)
    assert "--model-config" in refused.value.message and str(tmp_path) not in refused.value.message


def test_broken_folders_are_refused(tiny_sdxl: TinySdxl, tmp_path: Path) -> None:
    folder = tmp_path / "controlnet-union"
    shutil.copytree(tiny_sdxl.path("controlnet", tiny_sdxl.controlnet_openpose), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "ControlNetUnionModel"}))
    with pytest.raises(ModelError, match="names a ControlNetUnionModel, its weights are a ControlNetModel"):
        load_controlnet(folder, CPU, torch.float32)
    (folder / "config.json").unlink()
    with pytest.raises(ModelError, match=r"has no config\.json"):
        load_controlnet(folder, CPU, torch.float32)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"has no diffusion_pytorch_model\.safetensors"):
        load_controlnet(empty, CPU, torch.float32)


# --- agreement with diffusers -----------------------------------------------------------------------------


def reference_pipeline(tiny: TinySdxl, sampler: str, controlnet: Any) -> Any:
    import diffusers

    pipe = diffusers.StableDiffusionXLControlNetImg2ImgPipeline.from_single_file(
        str(tiny.path("checkpoints", tiny.checkpoint)), config=str(tiny.config_dir), controlnet=controlnet,
        local_files_only=True,
    )  # fmt: skip
    pipe.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return owned_pipeline(pipe)


def diffusers_controlnet(tiny: TinySdxl, kind: str) -> Any:
    """The ControlNet as diffusers itself loads it: the lone file with the config, the folder as published."""
    from diffusers import ControlNetModel

    if kind == "scribble":
        return ControlNetModel.from_single_file(
            str(tiny.path("controlnet", tiny.controlnet_scribble)),
            config=str(tiny.config_dir / "controlnet"),
            local_files_only=True,
        )
    return ControlNetModel.from_pretrained(str(tiny.path("controlnet", tiny.controlnet_openpose)))


@pytest.mark.parametrize(
    ("sampler", "cfg", "negative", "scale", "start", "end"),
    [
        ("lcm", 1.0, "", 0.8, 0.0, 1.0),
        ("euler", 3.0, "blurry", 1.3, 0.25, 0.75),
        ("euler_a", 2.5, "", 0.6, 0.0, 0.5),
    ],
)
def test_scribble_control_matches_diffusers(
    engine: Engine, tiny_sdxl: TinySdxl, sampler: str, cfg: float, negative: str, scale: float, start: float,
    end: float,
) -> None:  # fmt: skip
    canvas = make_canvas(64, 48, seed=11)
    lines = scribble(64, 48)
    control = ControlParam("scribble", strength=scale, start=start, end=end, image="lines",
                           model=tiny_sdxl.controlnet_scribble)  # fmt: skip
    params = {"checkpoint": tiny_sdxl.checkpoint, "prompt": "a lighthouse", "negative_prompt": negative,
              "sampler": sampler, "cfg": cfg, "steps": 4, "strength": 0.75, "seed": 21,
              **NO_LCM_LORA}  # fmt: skip
    result = run(engine, control_job(canvas, [control], {"lines": lines}, **params))
    reference = reference_pipeline(tiny_sdxl, sampler, diffusers_controlnet(tiny_sdxl, "scribble"))(
        prompt="a lighthouse", negative_prompt=negative or None, image=Image.fromarray(canvas[..., :3]),
        control_image=Image.fromarray(scribble_hint(lines)), strength=0.75, num_inference_steps=4,
        guidance_scale=cfg, controlnet_conditioning_scale=scale, control_guidance_start=start,
        control_guidance_end=end, generator=torch.Generator().manual_seed(21), output_type="np",
    ).images  # fmt: skip
    assert_agrees(result.image, reference)
    assert result.params["controlnets"] == [tiny_sdxl.controlnet_scribble]


def test_file_and_folder_controlnets_together_match_diffusers(engine: Engine, tiny_sdxl: TinySdxl) -> None:
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    canvas = make_canvas(64, 64, seed=12)
    lines = scribble(64, 64)
    pose = render_pose([PERSON], (64, 64), (64, 64))
    openpose = f"{tiny_sdxl.controlnet_openpose}/{WEIGHTS}"  # as the model lists name it
    controls = [
        ControlParam("scribble", strength=0.7, end=0.5, image="lines", model=tiny_sdxl.controlnet_scribble),
        ControlParam("pose", strength=1.1, start=0.25, pose=[list(PERSON)], model=openpose),  # type: ignore[list-item]
    ]
    params = {
        "checkpoint": tiny_sdxl.checkpoint,
        "prompt": "a dancer",
        "steps": 4,
        "strength": 1.0,
        **NO_LCM_LORA,
    }
    result = run(engine, control_job(canvas, controls, {"lines": lines}, **params))
    nets = MultiControlNetModel([diffusers_controlnet(tiny_sdxl, kind) for kind in ("scribble", "openpose")])
    reference = reference_pipeline(tiny_sdxl, "lcm", nets)(
        prompt="a dancer", image=Image.fromarray(canvas[..., :3]),
        control_image=[Image.fromarray(scribble_hint(lines)), Image.fromarray(pose)], strength=1.0,
        num_inference_steps=4, guidance_scale=1.0, controlnet_conditioning_scale=[0.7, 1.1],
        control_guidance_start=[0.0, 0.25], control_guidance_end=[0.5, 1.0],
        generator=torch.Generator().manual_seed(3), output_type="np",
    ).images  # fmt: skip
    assert_agrees(result.image, reference)
    assert result.params["controlnets"] == [tiny_sdxl.controlnet_scribble, openpose]
    unguided = run(engine, control_job(canvas, [], {}, **params))
    assert np.abs(unguided.image.astype(int) - result.image.astype(int)).max() > 8  # the guidance shows


# --- families ---------------------------------------------------------------------------------------------


def test_a_controlnet_of_another_family_is_refused_naming_both(
    engine: Engine, both: tuple[TinyModels, TinySdxl]
) -> None:
    sd15, sdxl = both
    canvas = make_canvas(48, 48, seed=13)
    lines = {"lines": scribble(48, 48)}
    cases = [
        (sdxl.checkpoint, sd15.controlnet_scribble, "SD 1.5", "SDXL"),
        (sd15.checkpoint, sdxl.controlnet_scribble, "SDXL", "SD 1.5"),
        (sd15.checkpoint, f"{sdxl.controlnet_openpose}/{WEIGHTS}", "SDXL", "SD 1.5"),
    ]
    for checkpoint, name, made_for, in_use in cases:
        control = ControlParam("scribble", image="lines", model=name)
        with pytest.raises(ModelError) as refused:
            run(engine, control_job(canvas, [control], lines, checkpoint=checkpoint, steps=2, **NO_LCM_LORA))
        message = refused.value.message
        assert name in message, message
        assert f"made for {made_for} models; the checkpoint in use is {in_use}" in message, message
    # a skipped control (strength 0) loads nothing, so nothing is refused
    idle = ControlParam("scribble", strength=0.0, image="lines", model=sd15.controlnet_scribble)
    result = run(
        engine, control_job(canvas, [idle], lines, checkpoint=sdxl.checkpoint, steps=2, **NO_LCM_LORA)
    )
    assert result.image.shape == (48, 48, 4)


def test_the_automatic_pick_keeps_to_the_checkpoints_family(tmp_path: Path) -> None:
    """Real ControlNet headers (backend/model_check.py reads their family from the cross-attention width):
    the SD1.5 file comes first by name, and is skipped for an SDXL checkpoint."""
    root = tmp_path / "models"
    sd15_scribble = "control_v11p_sd15_scribble.safetensors"
    write_safetensors(root / "controlnet" / sd15_scribble, original_controlnet_header(768))
    sdxl_scribble = "controlnet-scribble-sdxl-1.0/diffusion_pytorch_model.safetensors"
    write_safetensors(
        root / "controlnet" / sdxl_scribble,
        {
            "controlnet_cond_embedding.conv_in.weight": (1, 3, 1, 1),
            "add_embedding.linear_1.weight": (1, 2816),
            "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": (1, 2048),
        },
    )
    store = ModelStore(root)
    scribble_control = ControlParam("scribble", image="lines")
    assert (
        choose_controlnet(store, scribble_control) == "control_v11p_sd15_scribble.safetensors"
    )  # any family
    assert choose_controlnet(store, scribble_control, SD15) == "control_v11p_sd15_scribble.safetensors"
    assert choose_controlnet(store, scribble_control, SDXL) == sdxl_scribble
    # The same pick when the job arrives (the choice the engine then loads), by the checkpoint's header.
    write_safetensors(root / "checkpoints" / "a15.safetensors", sd15_checkpoint())
    write_safetensors(root / "checkpoints" / "axl.safetensors", sdxl_checkpoint())
    for checkpoint, expected in (("axl.safetensors", sdxl_scribble), ("a15.safetensors", sd15_scribble)):
        params = JobParams(checkpoint=checkpoint, controls=[scribble_control])
        assert choose_models(store, params).controlnets == (expected,), checkpoint
    (root / "controlnet" / sdxl_scribble).unlink()
    with pytest.raises(ModelNotFoundError, match="No scribble ControlNet for SDXL found") as missing:
        choose_controlnet(store, scribble_control, SDXL)
    assert "control_v11p_sd15_scribble.safetensors is made for another model family" in missing.value.message
