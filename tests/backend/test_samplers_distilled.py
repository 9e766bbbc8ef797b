"""The samplers of distilled few-step LoRAs and checkpoints (SDXL Lightning, Hyper-SD, TCD, DMD2,
SDXL-Turbo) run as their authors' diffusers setups do: the engine's images equal
StableDiffusionImg2ImgPipeline's with the scheduler configured the way each model card configures it, on the
tiny SD1.5 models, byte for byte.

The references below are written from those setups, not from the engine's sampler table, so a wrong entry
in the table (spacing, eta, timesteps) fails here.
"""

# diffusers' and torch's annotations reject their own documented calls here (from_config results, config
# attributes)
# pyright: reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from backend.engine.samplers import SamplerFactory, trailing_timesteps
from tests.backend.test_accelerated_frame import frame_engine, plain_engine
from tests.backend.test_engine_agreement import SCHEDULERS as AGREEMENT_SAMPLERS
from tests.backend.test_engine_agreement import assert_agrees, img2img_pipeline
from tests.backend.test_engine_inpaint import assert_outside_untouched, inpaint_engine
from tests.backend.test_engine_support import (
    Recorder,
    TinyParts,
    job,
    make_canvas,
    make_engine,
    run,
    tiny_parts,
)
from tests.backend.test_taesd_preview import preview_job


@dataclass(frozen=True)
class Reference:
    """A LoRA's published diffusers setup: the scheduler class with its overrides, and the pipeline call's
    extra arguments."""

    scheduler: str
    overrides: dict[str, Any] = field(default_factory=dict)
    call: dict[str, Any] = field(default_factory=dict)


REFERENCES = {
    "euler_trailing": Reference("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "ddim_trailing": Reference("DDIMScheduler", {"timestep_spacing": "trailing"}),
    "tcd": Reference("TCDScheduler", call={"eta": 0.3}),
    "lcm_trailing": Reference("LCMScheduler"),  # the explicit timesteps go with each case
    "euler_a_trailing": Reference("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
}


def reference_image(
    parts: TinyParts, sampler: str, canvas: np.ndarray, params: dict[str, Any], **call: Any
) -> np.ndarray:
    import diffusers

    reference = REFERENCES[sampler]
    pipe = img2img_pipeline(parts, "lcm")
    scheduler_class = getattr(diffusers, reference.scheduler)
    pipe.scheduler = scheduler_class.from_config(parts.scheduler_config, **reference.overrides)
    steps = {"num_inference_steps": params["steps"]} if "timesteps" not in call else {}
    return pipe(
        prompt=params["prompt"], negative_prompt=params["negative_prompt"] or None,
        image=Image.fromarray(canvas[..., :3]), strength=params["strength"], guidance_scale=params["cfg"],
        generator=torch.Generator().manual_seed(params["seed"]), output_type="np",
        **steps, **reference.call, **call,
    ).images  # fmt: skip


def engine_image(canvas: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    engine, _ = make_engine(store=None)
    engine.settings.min_side = 32
    engine.settings.working_size = False  # the pipeline renders at the canvas's own size
    return run(engine, job(canvas, **params)).image


# (sampler, cfg, negative prompt, steps, strength, explicit reference timesteps)
CASES = [
    ("euler_trailing", 1.0, "", 4, 0.5, None),
    ("euler_trailing", 2.0, "blurry", 8, 1.0, None),
    ("ddim_trailing", 1.0, "", 4, 0.75, None),
    ("ddim_trailing", 3.0, "dark", 6, 1.0, None),
    ("tcd", 1.0, "", 4, 1.0, None),  # TCD's noise draws come from the job's generator
    ("tcd", 2.5, "blurry", 8, 0.6, None),
    # DMD2's card passes its 4 timesteps to the pipeline, which counts them as the steps and cuts them by
    # strength as it would any schedule: strength 0.5 runs t=499 and t=249.
    ("lcm_trailing", 1.0, "", 4, 1.0, [999, 749, 499, 249]),
    ("lcm_trailing", 1.0, "", 4, 0.5, [999, 749, 499, 249]),
    ("lcm_trailing", 2.0, "dull", 2, 0.8, [999, 499]),
    ("euler_a_trailing", 1.0, "", 1, 1.0, None),  # SDXL-Turbo's card: 1 step from noise, no CFG
    ("euler_a_trailing", 1.0, "", 2, 0.5, None),  # and its img2img: 2 steps at strength 0.5
    ("euler_a_trailing", 2.0, "blurry", 4, 0.75, None),
]


@pytest.mark.slow
@pytest.mark.parametrize(("sampler", "cfg", "negative", "steps", "strength", "timesteps"), CASES)
def test_img2img_matches_the_loras_diffusers_setup(
    sampler: str, cfg: float, negative: str, steps: int, strength: float, timesteps: list[int] | None
) -> None:
    canvas = make_canvas(64, 48, seed=11)
    params = {"prompt": "a lighthouse at dusk", "negative_prompt": negative, "cfg": cfg, "steps": steps,
              "strength": strength, "seed": 4321, "sampler": sampler}  # fmt: skip
    call = {} if timesteps is None else {"timesteps": timesteps}
    assert_agrees(
        engine_image(canvas, params), reference_image(tiny_parts(), sampler, canvas, params, **call)
    )


def test_trailing_timesteps_are_the_schedulers_trailing_spacing() -> None:
    from diffusers import DDIMScheduler

    assert trailing_timesteps(4) == [999, 749, 499, 249]  # DMD2's
    assert trailing_timesteps(1) == [999]
    ddim = DDIMScheduler(timestep_spacing="trailing")
    for steps in range(1, 51):  # the protocol's step range
        ddim.set_timesteps(steps)
        assert trailing_timesteps(steps) == ddim.timesteps.tolist(), steps
    with pytest.raises(ValueError, match=r"steps must be 1\.\.1000"):
        trailing_timesteps(0)


@pytest.mark.parametrize(
    ("sampler", "strength", "expected"),
    [
        ("euler_trailing", 1.0, [999, 749, 499, 249]),
        ("ddim_trailing", 0.75, [749, 499, 249]),
        ("tcd", 1.0, [999, 759, 499, 259]),  # TCD's own 50-step grid starts at 999 without a spacing setting
        ("lcm_trailing", 0.5, [499, 249]),
        ("lcm_trailing", 0.1, [249]),  # a strength above 0 runs at least one step
    ],
)
def test_schedules_start_where_each_lora_was_trained(
    sampler: str, strength: float, expected: list[int]
) -> None:
    config = tiny_parts().scheduler_config
    schedule = SamplerFactory().schedule(sampler, config, 4, strength, torch.device("cpu"))
    assert [int(t) for t in schedule.timesteps] == expected
    # A scheduler that counts steps starts at the cut, so add_noise and the step use the run's first timestep
    # (DDIM works from the timestep alone).
    assert getattr(schedule.scheduler, "begin_index", 4 - len(expected)) == 4 - len(expected)


def test_step_arguments_carry_the_samplers_options_and_the_jobs_generator() -> None:
    config = tiny_parts().scheduler_config
    generator = torch.Generator().manual_seed(1)
    factory = SamplerFactory()
    tcd = factory.schedule("tcd", config, 4, 1.0, torch.device("cpu")).step_arguments(generator)
    assert tcd == {"eta": 0.3, "generator": generator}
    ddim = factory.schedule("ddim_trailing", config, 4, 1.0, torch.device("cpu")).step_arguments(generator)
    assert ddim == {"eta": 0.0, "generator": generator}
    euler = factory.schedule("euler_trailing", config, 4, 1.0, torch.device("cpu")).step_arguments(generator)
    assert euler == {"generator": generator}


@pytest.mark.slow
def test_tcd_draws_its_noise_from_the_job_seed() -> None:
    """Same seed, same image whatever torch's global generator holds; another seed, another image."""
    canvas = make_canvas(64, 48, seed=12)
    params = {"prompt": "a lighthouse", "negative_prompt": "", "cfg": 1.0, "steps": 4, "strength": 1.0,
              "sampler": "tcd"}  # fmt: skip
    torch.manual_seed(1)
    first = engine_image(canvas, {**params, "seed": 5})
    torch.manual_seed(2)
    assert engine_image(canvas, {**params, "seed": 5}).tobytes() == first.tobytes()
    assert engine_image(canvas, {**params, "seed": 6}).tobytes() != first.tobytes()


@pytest.mark.slow
def test_live_jobs_take_the_accelerated_paths_with_the_same_bytes() -> None:
    """DMD2's sampler is LCM's step on other timesteps: the whole-frame path takes it. The others keep the
    per-step path (the accelerated model call, the scheduler's own step), as Euler does."""
    accelerated, plain = frame_engine(), plain_engine()
    canvas = make_canvas(64, 64, seed=13)
    for sampler, whole_frame in (
        ("lcm_trailing", True),
        ("euler_trailing", False),
        ("ddim_trailing", False),
        ("tcd", False),
    ):
        live = preview_job(canvas, sampler=sampler, seed=3, steps=4, strength=0.75)
        ours = run(accelerated, live)
        assert ours.params["accelerated"] is True and ours.params["whole_frame"] is whole_frame, sampler
        assert ours.image.tobytes() == run(plain, live).image.tobytes(), sampler


@pytest.mark.slow
@pytest.mark.parametrize("strength", [0.6, 1.0])  # 1.0 starts from the scheduler's pure noise
def test_inpaint_runs_with_each_distilled_sampler(strength: float) -> None:
    engine = inpaint_engine()
    canvas = make_canvas(64, 64, seed=15)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[12:44, 16:48] = 255
    for sampler in REFERENCES:
        recorder = Recorder()
        params = {"sampler": sampler, "steps": 4, "strength": strength, "seed": 8}
        result = run(engine, job(canvas, mode="inpaint", mask=mask, **params), recorder)
        assert recorder.progress[-1] == (int(4 * strength), int(4 * strength)), sampler
        assert_outside_untouched(canvas, mask, result)
        x, y, w, h = result.bounds
        inside = mask[y : y + h, x : x + w] > 0
        assert not np.array_equal(result.image[..., :3][inside], canvas[y : y + h, x : x + w, :3][inside])


def test_every_protocol_sampler_has_an_agreement_test() -> None:
    from protocol import registry

    assert set(registry.SAMPLERS) == set(REFERENCES) | set(AGREEMENT_SAMPLERS)
    assert {case[0] for case in CASES} == set(REFERENCES)
