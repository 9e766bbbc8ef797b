"""Union ControlNets (one SDXL ControlNet for many kinds): the published folder and a lone weights file load
as built, a control naming no ControlNet gets the union when no file of its kind is there, the engine's
guidance equals diffusers' SDXL ControlNet-union img2img pipeline bit for bit on the CPU, several kinds share
one union file, and a kind the union has no mode for is refused naming it."""

# diffusers' annotations reject their own documented calls (from_single_file with config=, pipeline calls)
# pyright: reportArgumentType=false, reportCallIssue=false, reportAttributeAccessIssue=false

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from backend.engine import Engine, EngineInputError, EngineSettings
from backend.engine.controlnet import scribble_hint
from backend.loading.controlnet import load_controlnet
from backend.loading.model_cache import ModelCache
from backend.model_files import ModelStore
from protocol.messages import ControlParam
from protocol.registry import CONTROL_KINDS, pick_controlnet
from tests.backend.test_engine_agreement import SCHEDULERS, assert_agrees, owned_pipeline
from tests.backend.test_engine_controlnet import control_job, scribble
from tests.backend.test_engine_support import make_canvas, run
from tests.fixtures.tiny_sdxl import TinySdxl, build_tiny_sdxl
from tests.fixtures.tiny_union import UNION_FILE, UNION_FOLDER, build_union, union_path, write_union

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
NO_LCM_LORA = {"lcm_lora_strength": 0.0}


@pytest.fixture(scope="module")
def union_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinySdxl, Any]:
    tiny = build_tiny_sdxl(tmp_path_factory.mktemp("union") / "models")
    union = build_union(tiny)
    write_union(tiny, union, lone=None)
    return tiny, union


@pytest.fixture(scope="module")
def engine(union_setup: tuple[TinySdxl, Any]) -> Engine:
    tiny, _ = union_setup
    cache = ModelCache(ModelStore(tiny.root), CPU, torch.float32, tiny.shared_config_dir)
    return Engine(cache, CPU, torch.float32, EngineSettings(working_size=False, min_side=32))


def test_the_folder_and_a_lone_file_load_as_built(union_setup: tuple[TinySdxl, Any], tmp_path: Path) -> None:
    tiny, union = union_setup
    lone = tmp_path / UNION_FILE  # read with the SDXL ControlNet config and the sizes its tensors tell
    shutil.copy(union_path(tiny) / "diffusion_pytorch_model.safetensors", lone)
    for path in (union_path(tiny), lone):
        loaded = load_controlnet(path, CPU, torch.float32, tiny.shared_config_dir)
        assert type(loaded).__name__ == "ControlNetUnionModel" and loaded.config.num_control_type == 8
        built, read = union.state_dict(), loaded.state_dict()
        assert built.keys() == read.keys() and all(torch.equal(built[k], read[k]) for k in built)


def test_kinds_pick_their_own_file_first_then_the_union() -> None:
    names = ["controlnet-union-sdxl-1.0/diffusion_pytorch_model.safetensors", "controlnet-canny-sdxl-1.0"]
    assert pick_controlnet(names, "canny") == "controlnet-canny-sdxl-1.0"
    assert pick_controlnet(names, "depth") == names[0]
    assert pick_controlnet(names, "pose") == names[0]  # "pose" is no word of the union's name
    assert all(kind.union_mode is not None for kind in CONTROL_KINDS.values())


def reference(tiny: TinySdxl, union_folder: Path, sampler: str) -> Any:
    import diffusers

    pipe = diffusers.StableDiffusionXLControlNetUnionImg2ImgPipeline.from_single_file(
        str(tiny.path("checkpoints", tiny.checkpoint)), config=str(tiny.config_dir),
        controlnet=diffusers.ControlNetUnionModel.from_pretrained(str(union_folder)), local_files_only=True,
    )  # fmt: skip
    pipe.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return owned_pipeline(pipe)


@pytest.mark.parametrize(
    ("kind", "sampler", "cfg", "negative", "scale", "start", "end"),
    [
        ("canny", "lcm", 1.0, "", 0.8, 0.0, 1.0),
        ("softedge", "euler", 3.0, "blurry", 1.2, 0.25, 0.75),  # no softedge file: the union serves it
        ("depth", "euler_a", 2.0, "", 0.7, 0.0, 0.5),
    ],
)
def test_a_union_control_matches_the_union_pipeline(
    engine: Engine, union_setup: tuple[TinySdxl, Any], kind: str, sampler: str, cfg: float, negative: str,
    scale: float, start: float, end: float,
) -> None:  # fmt: skip
    tiny, _ = union_setup
    canvas, lines = make_canvas(64, 48, seed=11), scribble(64, 48)
    control = ControlParam(kind, strength=scale, start=start, end=end, image="lines")
    params = {"checkpoint": tiny.checkpoint, "prompt": "a lighthouse", "negative_prompt": negative,
              "sampler": sampler, "cfg": cfg, "steps": 4, "strength": 0.75, "seed": 21,
              **NO_LCM_LORA}  # fmt: skip
    result = run(engine, control_job(canvas, [control], {"lines": lines}, **params))
    assert result.params["controlnets"] == [f"{UNION_FOLDER}/diffusion_pytorch_model.safetensors"]
    hint = scribble_hint(lines) if kind != "depth" else lines[..., :3]  # depth is taken as drawn
    expected = reference(tiny, union_path(tiny), sampler)(
        prompt="a lighthouse", negative_prompt=negative or None, image=Image.fromarray(canvas[..., :3]),
        control_image=[Image.fromarray(hint)], control_mode=[CONTROL_KINDS[kind].union_mode], strength=0.75,
        num_inference_steps=4, guidance_scale=cfg, controlnet_conditioning_scale=scale,
        control_guidance_start=start, control_guidance_end=end, generator=torch.Generator().manual_seed(21),
        output_type="np",
    ).images  # fmt: skip
    assert_agrees(result.image, expected)


def test_two_kinds_share_one_union_file(engine: Engine, union_setup: tuple[TinySdxl, Any]) -> None:
    tiny, _ = union_setup
    canvas, lines = make_canvas(64, 48, seed=12), scribble(64, 48)
    params = {"checkpoint": tiny.checkpoint, "prompt": "a lighthouse", "steps": 4, "strength": 0.75,
              "seed": 5, "sampler": "euler", **NO_LCM_LORA}  # fmt: skip
    canny = ControlParam("canny", strength=0.9, image="lines")
    depth = ControlParam("depth", strength=0.9, image="lines")
    both = run(engine, control_job(canvas, [canny, depth], {"lines": lines}, **params)).image
    alone = run(engine, control_job(canvas, [canny], {"lines": lines}, **params)).image
    assert not np.array_equal(both, alone)


def test_a_kind_without_a_mode_in_the_file_is_refused(tmp_path: Path) -> None:
    tiny = build_tiny_sdxl(tmp_path / "models")
    write_union(tiny, build_union(tiny, modes=6), lone=None)  # the first union: no tile (6) or repaint (7)
    cache = ModelCache(ModelStore(tiny.root), CPU, torch.float32, tiny.shared_config_dir)
    engine = Engine(cache, CPU, torch.float32, EngineSettings(working_size=False, min_side=32))
    canvas = make_canvas(64, 48, seed=13)
    control = ControlParam("tile", image="tile")
    job = control_job(canvas, [control], {"tile": canvas}, checkpoint=tiny.checkpoint, **NO_LCM_LORA)
    with pytest.raises(EngineInputError, match=f"union ControlNet '{UNION_FOLDER}.*' has no tile mode"):
        run(engine, job)
