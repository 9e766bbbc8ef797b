"""ControlNet guidance: agreement with diffusers, strength and range, scribble and pose hints, inpaint."""

# diffusers' and torch's annotations reject their own documented calls here (pipelines with
# safety_checker=None, from_config results, config and submodule attributes)
# pyright: reportArgumentType=false

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from backend.engine import EngineInputError, EngineJob
from backend.engine.controlnet import scribble_hint
from backend.engine.pose import render_pose
from backend.model_errors import ModelNotFoundError
from protocol.messages import ControlParam, JobParams
from tests.backend.test_engine_agreement import assert_agrees, scheduler_for
from tests.backend.test_engine_support import (
    FakeStore,
    count_calls,
    make_canvas,
    make_engine,
    run,
    tiny_parts,
)

pytestmark = pytest.mark.slow

PERSON = [
    (32, 8), (32, 16), (24, 17), (20, 28), (18, 38), (40, 17), (44, 28), (46, 38), (27, 36),
    (26, 48), (25, 60), (37, 36), (38, 48), (39, 60), (30, 6), (34, 6), (28, 7), (36, 7),
]  # fmt: skip


def scribble(width: int, height: int, white_on_black: bool = True) -> np.ndarray:
    image = Image.new("RGB", (width, height), "black" if white_on_black else "white")
    draw = ImageDraw.Draw(image)
    ink = "white" if white_on_black else "black"
    draw.rectangle((width * 0.2, height * 0.4, width * 0.7, height * 0.85), outline=ink, width=2)
    draw.line(
        (width * 0.1, height * 0.4, width * 0.45, height * 0.1, width * 0.8, height * 0.4), fill=ink, width=2
    )
    rgba = np.full((height, width, 4), 255, dtype=np.uint8)
    rgba[..., :3] = np.asarray(image)
    return rgba


def control_job(
    canvas: np.ndarray, controls: list[ControlParam], images: dict[str, np.ndarray], **params: Any
) -> EngineJob:
    defaults: dict[str, Any] = {"prompt": "a house", "steps": 4, "strength": 0.75, "seed": 3}
    return EngineJob("img2img", JobParams(**{**defaults, **params}, controls=controls), canvas, None, images)


def controlnet_pipeline(sampler: str, nets: list[Any]) -> Any:
    from diffusers import StableDiffusionControlNetImg2ImgPipeline
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    parts = tiny_parts()
    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        controlnet=nets[0] if len(nets) == 1 else MultiControlNetModel(nets),
        scheduler=scheduler_for(sampler, parts), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("sampler", "cfg", "scale", "start", "end"),
    [("lcm", 1.0, 0.8, 0.0, 1.0), ("euler_a", 2.5, 1.3, 0.25, 0.75)],
)
def test_one_controlnet_matches_diffusers(
    sampler: str, cfg: float, scale: float, start: float, end: float
) -> None:
    canvas = make_canvas(64, 48, seed=1)
    hint = scribble(64, 48)
    engine, _ = make_engine(min_side=32, working_size=False)  # the pipeline renders at the canvas's size
    control = ControlParam("scribble", strength=scale, start=start, end=end, image="lines")
    params = {"sampler": sampler, "cfg": cfg, "negative_prompt": "blurry", "steps": 8, "strength": 0.5}
    ours = run(engine, control_job(canvas, [control], {"lines": hint}, **params)).image
    reference = controlnet_pipeline(sampler, [tiny_parts().scribble])(
        prompt="a house", negative_prompt="blurry", image=Image.fromarray(canvas[..., :3]),
        control_image=Image.fromarray(scribble_hint(hint)), strength=0.5, num_inference_steps=8,
        guidance_scale=cfg, controlnet_conditioning_scale=scale, control_guidance_start=start,
        control_guidance_end=end, generator=torch.Generator().manual_seed(3), output_type="np",
    ).images  # fmt: skip
    assert_agrees(ours, reference)


def test_two_controlnets_match_diffusers() -> None:
    canvas = make_canvas(64, 64, seed=2)
    hint = scribble(64, 64)
    pose = render_pose([PERSON], (64, 64), (64, 64))
    engine, _ = make_engine(min_side=32, working_size=False)  # the pipeline renders at the canvas's size
    controls = [
        ControlParam("scribble", strength=0.7, end=0.5, image="lines"),
        ControlParam("pose", strength=1.1, start=0.25, pose=[list(PERSON)]),  # type: ignore[list-item]
    ]
    ours = run(engine, control_job(canvas, controls, {"lines": hint}, steps=8, strength=1.0)).image
    parts = tiny_parts()
    reference = controlnet_pipeline("lcm", [parts.scribble, parts.openpose])(
        prompt="a house", image=Image.fromarray(canvas[..., :3]),
        control_image=[Image.fromarray(scribble_hint(hint)), Image.fromarray(pose)], strength=1.0,
        num_inference_steps=8, guidance_scale=1.0, controlnet_conditioning_scale=[0.7, 1.1],
        control_guidance_start=[0.0, 0.25], control_guidance_end=[0.5, 1.0],
        generator=torch.Generator().manual_seed(3), output_type="np",
    ).images  # fmt: skip
    assert_agrees(ours, reference)


def test_strength_zero_is_plain_img2img_and_loads_nothing() -> None:
    canvas = make_canvas(40, 40, seed=3)
    engine, models = make_engine()
    plain = run(engine, control_job(canvas, [], {})).image
    with count_calls(tiny_parts().scribble) as calls:
        zero = run(engine, control_job(canvas, [ControlParam("scribble", strength=0.0, image="s")], {})).image
        empty_range = ControlParam("scribble", start=0.6, end=0.6, image="s")
        ranged = run(engine, control_job(canvas, [empty_range], {}, steps=2)).image
    assert zero.tobytes() == plain.tobytes()
    assert ranged.shape == plain.shape
    assert calls == [] and models.controlnet_calls == []
    guided = run(
        engine, control_job(canvas, [ControlParam("scribble", image="s")], {"s": scribble(40, 40)})
    ).image
    assert guided.tobytes() != plain.tobytes()


def test_scribble_polarity_and_transparency_are_normalized() -> None:
    white_on_black = scribble(48, 40, True)
    black_on_white = scribble(48, 40, False)
    strokes_on_transparent = np.zeros_like(white_on_black)
    strokes_on_transparent[..., 3] = white_on_black[..., 0]  # black paint where the lines are
    expected = scribble_hint(white_on_black)
    assert expected[..., 0].mean() < 60  # white lines on black
    assert np.array_equal(scribble_hint(black_on_white), expected)
    assert np.array_equal(scribble_hint(strokes_on_transparent), expected)
    assert np.array_equal(scribble_hint(white_on_black[..., 0]), expected)  # gray
    engine, _ = make_engine()
    canvas = make_canvas(48, 40, seed=4)
    outputs = {
        run(engine, control_job(canvas, [ControlParam("scribble", image="s")], {"s": image})).image.tobytes()
        for image in (white_on_black, black_on_white, strokes_on_transparent)
    }
    assert len(outputs) == 1


def test_control_images_of_another_size_are_stretched() -> None:
    engine, _ = make_engine()
    canvas = make_canvas(40, 32, seed=5)
    control = [ControlParam("scribble", image="s")]
    result = run(engine, control_job(canvas, control, {"s": scribble(80, 64)}))
    assert result.image.shape == (32, 40, 4)


def test_pose_keypoints_and_pose_image_agree() -> None:
    # at the canvas's own size: keypoints drawn at the generation size equal the canvas-sized pose image
    engine, models = make_engine(min_side=64, working_size=False)
    canvas = make_canvas(64, 64, seed=6)
    from_points = run(engine, control_job(canvas, [ControlParam("pose", pose=[list(PERSON)])], {}))  # type: ignore[list-item]
    pose_rgba = np.full((64, 64, 4), 255, dtype=np.uint8)
    pose_rgba[..., :3] = render_pose([PERSON], (64, 64), (64, 64))
    from_image = run(engine, control_job(canvas, [ControlParam("pose", image="p")], {"p": pose_rgba}))
    assert from_points.image.tobytes() == from_image.image.tobytes()
    assert models.controlnet_calls == ["tiny-openpose.safetensors"] * 2  # auto-picked by kind
    assert from_points.params["controlnets"] == ["tiny-openpose.safetensors"]


def test_pose_guided_inpaint_of_a_selection() -> None:
    engine, _ = make_engine(inpaint_resolution=64)
    canvas = make_canvas(96, 80, seed=7)
    mask = np.zeros((80, 96), dtype=np.uint8)
    mask[10:70, 20:60] = 255
    people = [[(x + 10, y + 8) for x, y in PERSON]]
    params = JobParams(prompt="a dancer", steps=4, strength=1.0, controls=[ControlParam("pose", pose=people)])  # type: ignore[arg-type]
    with count_calls(tiny_parts().openpose) as calls:
        guided = run(engine, EngineJob("inpaint", params, canvas, mask))
    plain = run(
        engine, EngineJob("inpaint", JobParams(prompt="a dancer", steps=4, strength=1.0), canvas, mask)
    )
    assert len(calls) == 4
    assert guided.bounds == plain.bounds
    assert guided.image.tobytes() != plain.image.tobytes()
    x, y, w, h = guided.bounds
    outside = mask[y : y + h, x : x + w] == 0
    assert np.array_equal(guided.image[..., :3][outside], canvas[y : y + h, x : x + w, :3][outside])


def test_bad_control_inputs() -> None:
    engine, _ = make_engine(store=FakeStore(controlnet=["tiny-scribble.safetensors"]))
    canvas = make_canvas(32, 32)
    with pytest.raises(EngineInputError, match="was not sent"):
        run(engine, control_job(canvas, [ControlParam("scribble", image="missing")], {}))
    with pytest.raises(EngineInputError, match="must be H x W x 4"):
        run(
            engine,
            control_job(canvas, [ControlParam("scribble", image="s")], {"s": np.zeros((4, 4), np.float32)}),
        )
    with pytest.raises(EngineInputError, match="keypoint"):
        run(engine, control_job(canvas, [ControlParam("pose", model="x", pose=[[(1, 2, 3)]])], {}))  # type: ignore[list-item]
    with pytest.raises(ModelNotFoundError, match="No pose ControlNet"):
        run(engine, control_job(canvas, [ControlParam("pose", pose=[list(PERSON)])], {}))  # type: ignore[list-item]
