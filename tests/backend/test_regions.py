"""Regions (engine/regions.py): a prompt for part of the image, by blending the rows' predictions per pixel.

SD1.5 runs on the tiny in-memory models (tests/backend/test_engine_support.py), SDXL on the tiny SDXL files
loaded through the real model cache.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from backend.engine import Engine, EngineInputError, EngineJob, EngineSettings
from backend.engine.region import scaled_region
from backend.engine.regions import coverage, expand_added, region_rows
from backend.loading.model_cache import ModelCache
from backend.model_files import ModelStore
from protocol.messages import ControlParam, InpaintParam, JobParams
from protocol.regions import RegionParam, region_prompt
from tests.backend.test_engine_controlnet import scribble
from tests.backend.test_engine_support import count_calls, make_canvas, make_engine, run, tiny_parts
from tests.fixtures.tiny_sdxl import TinySdxl, build_tiny_sdxl

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
DOCUMENT = "snowy mountains, blue sky"


def make_job(
    canvas: np.ndarray,
    regions: list[tuple[str, np.ndarray]],
    mode: str = "img2img",
    mask: np.ndarray | None = None,
    images: dict[str, np.ndarray] | None = None,
    **params: Any,
) -> EngineJob:
    base: dict[str, Any] = {"prompt": DOCUMENT, "steps": 4, "strength": 0.7, "seed": 5, "sampler": "euler"}
    slots = {f"region{i}": region_mask for i, (_, region_mask) in enumerate(regions)}
    param_regions = [RegionParam(f"region{i}", text) for i, (text, _) in enumerate(regions)]
    job_params = JobParams(**{**base, **params}, regions=param_regions)
    return EngineJob(mode, job_params, canvas, mask, {**(images or {}), **slots})


def full(canvas: np.ndarray) -> np.ndarray:
    return np.full(canvas.shape[:2], 255, dtype=np.uint8)


def left_half(canvas: np.ndarray) -> np.ndarray:
    mask = np.zeros(canvas.shape[:2], dtype=np.uint8)
    mask[:, : canvas.shape[1] // 2] = 255
    return mask


def test_weights_follow_coverage_and_unused_rows_drop() -> None:
    region = scaled_region(0, 0, 32, 16, (32, 16))
    soft = np.zeros((16, 32), np.uint8)
    soft[:, :8] = 255
    soft[:, 8:16] = 51  # a fifth covered
    cover = coverage(soft, region)
    assert cover.shape == (1, 1, 2, 4)
    assert torch.allclose(cover[0, 0, 0], torch.tensor([1.0, 0.2, 0.0, 0.0]))
    rows = region_rows("doc", [("a", cover), ("b", cover), ("nowhere", torch.zeros_like(cover))])
    assert rows is not None
    assert rows.prompts == ["doc", "a, doc", "b, doc"]  # the region outside drops out
    assert torch.allclose(rows.weights.sum(dim=0), torch.ones(1, 2, 4))
    # Two full regions overlapping share that cell; where they cover 0.2 each the document keeps 0.6.
    assert torch.allclose(rows.weights[:, 0, 0, 0], torch.tensor([0.0, 0.5, 0.5]))
    assert torch.allclose(rows.weights[:, 0, 0, 1], torch.tensor([0.6, 0.2, 0.2]))
    everywhere = region_rows("doc", [("a", torch.ones_like(cover))])
    assert everywhere is not None and everywhere.plain and everywhere.prompts == ["a, doc"]
    assert region_rows("doc", [("a", torch.zeros_like(cover))]) is None


def test_added_conditioning_repeats_the_cond_row_for_every_region_row() -> None:
    """The contract for `Guidance.added` values (SDXL's time ids, an IP-Adapter's image embeddings): first
    dimension the plain batch (uncond, cond); the regions' batch repeats the cond row."""
    batch = torch.tensor([[0.0], [1.0]])
    assert expand_added(batch, True, 3)[:, 0].tolist() == [0.0, 1.0, 1.0, 1.0]
    listed = expand_added([batch, 2 * batch], True, 2)
    assert isinstance(listed, list) and [each[:, 0].tolist() for each in listed] == [[0, 1, 1], [0, 2, 2]]
    assert expand_added(torch.tensor([[5.0]]), False, 2)[:, 0].tolist() == [5.0, 5.0]


@pytest.mark.parametrize(("cfg", "negative"), [(5.0, ""), (5.0, "blurry"), (1.0, "")])
def test_full_canvas_region_is_the_plain_job_sd15(cfg: float, negative: str) -> None:
    """(a) SD1.5: one region over the whole canvas gives the plain job with the joined prompt, bit for bit."""
    engine, _ = make_engine()
    canvas = make_canvas(64, 48)
    regional = run(
        engine, make_job(canvas, [("a red apple", full(canvas))], cfg=cfg, negative_prompt=negative)
    )
    joined = region_prompt("a red apple", DOCUMENT)
    plain = run(engine, make_job(canvas, [], prompt=joined, cfg=cfg, negative_prompt=negative))
    assert regional.image.tobytes() == plain.image.tobytes()
    assert regional.params["regions_counted"] == 1


def test_left_region_changes_mostly_the_left_half() -> None:
    """(b) A region on the left half: against the same job without it, the mean absolute pixel change inside
    the region is at least 3x the change outside (measured on these tiny models: 4.4 inside, 0.9 outside,
    4.7x). The tiny random models' text conditioning is weak, so the prompts are far apart and cfg 5; what
    leaks outside is the VAE's and the UNet's reach across the border (convolutions, self-attention)."""
    engine, _ = make_engine()
    canvas = make_canvas(128, 128)
    params: dict[str, Any] = {"cfg": 5.0, "steps": 8, "strength": 0.7}
    with count_calls(tiny_parts().unet) as calls:
        regional = run(engine, make_job(canvas, [("a red apple", left_half(canvas))], **params))
    assert {shape[0] for shape in calls} == {3}  # one call a step: uncond, document, region
    plain = run(engine, make_job(canvas, [], **params))
    change = np.abs(regional.image[..., :3].astype(float) - plain.image[..., :3].astype(float)).mean(-1)
    inside, outside = change[:, :64].mean(), change[:, 64:].mean()
    assert inside > 1.0
    assert inside >= 3 * outside, (inside, outside)


def test_regions_outside_the_inpaint_work_area_do_not_count() -> None:
    """(c) Only regions whose mask reaches the inpaint work area count: others leave the result unchanged,
    one that reaches it changes it."""
    engine, _ = make_engine()
    canvas = make_canvas(128, 96)
    selection = np.zeros((96, 128), np.uint8)
    selection[60:90, 90:120] = 255
    away = np.zeros((96, 128), np.uint8)
    away[:30, :40] = 255  # far from the selection's padded box
    inpaint = InpaintParam(padding=8)
    plain = run(engine, make_job(canvas, [], "inpaint", selection, cfg=4.0, inpaint=inpaint))
    ignored = run(engine, make_job(canvas, [("a cat", away)], "inpaint", selection, cfg=4.0, inpaint=inpaint))
    assert ignored.image.tobytes() == plain.image.tobytes()
    assert ignored.bounds == plain.bounds
    assert ignored.params["regions_counted"] == 0
    near = np.zeros((96, 128), np.uint8)
    near[50:96, 80:128] = 255
    counted = run(engine, make_job(canvas, [("a cat", near)], "inpaint", selection, cfg=4.0, inpaint=inpaint))
    assert counted.params["regions_counted"] == 1
    assert counted.image.tobytes() != plain.image.tobytes()


def test_regions_with_a_dedicated_inpainting_checkpoint() -> None:
    """The 9-channel UNet's extra inputs follow the regions' batch (uncond, document, region)."""
    engine, _ = make_engine()
    canvas = make_canvas(64, 64)
    selection = np.zeros((64, 64), np.uint8)
    selection[10:50, 10:50] = 255
    params: dict[str, Any] = {"checkpoint": "tiny-inpainting.safetensors", "cfg": 3.0}
    with count_calls(tiny_parts().inpaint_unet) as calls:
        result = run(engine, make_job(canvas, [("a cat", left_half(canvas))], "inpaint", selection, **params))
    assert calls and all(shape[:2] == (3, 9) for shape in calls)
    assert result.params["regions_counted"] == 1


def test_controlnet_with_regions() -> None:
    """(d) ControlNet hints are repeated for every row; the ControlNet still acts."""
    engine, _ = make_engine()
    canvas = make_canvas(64, 64)
    controls = [ControlParam(kind="scribble", image="hint", strength=1.0)]
    images = {"hint": scribble(64, 64)}
    regions = [("a cat", left_half(canvas))]
    with count_calls(tiny_parts().scribble) as calls:
        guided = run(engine, make_job(canvas, regions, images=images, cfg=3.0, controls=controls))
    assert calls and all(shape[0] == 3 for shape in calls)
    unguided = run(engine, make_job(canvas, regions, cfg=3.0))
    assert guided.params["controlnets"] and guided.image.tobytes() != unguided.image.tobytes()


def test_batch_of_two_with_regions() -> None:
    """(e) Each image of a batch is the batch-1 job of its seed, regions included."""
    engine, _ = make_engine()
    canvas = make_canvas(64, 64)
    regions = [("a cat", left_half(canvas))]
    batch = run(engine, make_job(canvas, regions, cfg=3.0, batch=2, seed=9))
    assert batch.params["seeds"] == [9, 10] and len(batch.extra) == 1
    second = run(engine, make_job(canvas, regions, cfg=3.0, seed=10))
    assert batch.extra[0].tobytes() == second.image.tobytes()


def test_live_regions_run_on_the_accelerated_path_step_by_step() -> None:
    """A live job with regions is accelerated call by call (the whole-frame graph blends no rows; LCM and
    TAESD would otherwise take it): the plain path's bytes, the ControlNet hint repeated for every row."""
    from tests.backend.test_accelerated_path import accelerated_engine, plain_engine

    canvas = make_canvas(64, 64)
    controls = [ControlParam(kind="scribble", image="hint", strength=1.0)]
    live = replace(
        make_job(canvas, [("a cat", left_half(canvas))], images={"hint": scribble(64, 64)}, cfg=3.0,
                 controls=controls, sampler="lcm", steps=8, strength=0.5),
        live=True,
    )  # fmt: skip
    fast = accelerated_engine(background=False)
    result = run(fast, live)
    assert result.params["accelerated"] is True and result.params["whole_frame"] is False
    assert result.params["regions_counted"] == 1 and result.params["controlnets"]
    assert fast.accelerator.status()["failed"] == 0 and fast.accelerator.stats["accelerated"] > 0
    assert result.image.tobytes() == run(plain_engine(), live).image.tobytes()


def test_a_region_mask_of_another_size_is_an_input_error() -> None:
    engine, _ = make_engine()
    canvas = make_canvas(64, 64)
    with pytest.raises(EngineInputError, match="region0"):
        run(engine, make_job(canvas, [("a cat", np.zeros((32, 64), np.uint8))]))


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, TinySdxl]:
    tiny = build_tiny_sdxl(Path(tmp_path_factory.mktemp("regions-sdxl")) / "models")
    cache = ModelCache(ModelStore(tiny.root), CPU, torch.float32, tiny.shared_config_dir)
    return Engine(cache, CPU, torch.float32, EngineSettings(min_side=32)), tiny


@pytest.mark.parametrize(("cfg", "negative"), [(5.0, ""), (5.0, "blurry")])
def test_full_canvas_region_is_the_plain_job_sdxl(
    sdxl: tuple[Engine, TinySdxl], cfg: float, negative: str
) -> None:
    """(a) SDXL: the same, its pooled text embedding the joined prompt's and its time ids shared."""
    engine, tiny = sdxl
    canvas = make_canvas(48, 40)
    common: dict[str, Any] = {"checkpoint": tiny.checkpoint, "cfg": cfg, "negative_prompt": negative}
    regional = run(engine, make_job(canvas, [("a red apple", full(canvas))], **common))
    plain = run(engine, make_job(canvas, [], **{**common, "prompt": region_prompt("a red apple", DOCUMENT)}))
    assert regional.params["family"] == "sdxl"
    assert regional.image.tobytes() == plain.image.tobytes()


def test_sdxl_regions_blend_rows_with_their_own_pooled_embeddings(
    sdxl: tuple[Engine, TinySdxl], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two regions and the document on SDXL: one UNet call of four rows a step (uncond, document, regions),
    each row's pooled text embedding its own prompt's, the time ids the same for every row."""
    from diffusers import UNet2DConditionModel

    engine, tiny = sdxl
    canvas = make_canvas(64, 48)
    top = np.zeros((48, 64), np.uint8)
    top[:16] = 255
    seen: list[dict[str, torch.Tensor]] = []
    forward = UNet2DConditionModel.forward

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append({key: value.clone() for key, value in kwargs["added_cond_kwargs"].items()})
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    regions = [("a red apple", left_half(canvas)), ("a green tree", top)]
    result = run(engine, make_job(canvas, regions, checkpoint=tiny.checkpoint, cfg=4.0))
    assert result.params["regions_counted"] == 2
    text_embeds, time_ids = seen[0]["text_embeds"], seen[0]["time_ids"]
    assert text_embeds.shape[0] == 4 and time_ids.shape[0] == 4
    assert all(torch.equal(time_ids[0], row) for row in time_ids)
    assert not torch.equal(text_embeds[1], text_embeds[2]) and not torch.equal(text_embeds[2], text_embeds[3])
