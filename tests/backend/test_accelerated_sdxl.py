"""SDXL's live frames on the accelerated paths: its added conditioning (pooled text embeddings, size time ids)
is a static input of the whole frame and of the per-step denoiser, and the pixels equal the plain path's.

As in test_accelerated_frame, the CPU compile uses dynamo's "eager" backend, so float32 results are exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from backend.engine import EngineJob
from backend.loading.model_cache import ModelCache
from backend.model_files import ModelStore
from tests.backend.test_accelerated_frame import frame_engine, per_step_engine, plain_engine
from tests.backend.test_engine_support import make_canvas, run
from tests.backend.test_taesd_preview import preview_job
from tests.fixtures import ldm_writer
from tests.fixtures.tiny_models import TinyModels, build_taesd, build_tiny_models
from tests.fixtures.tiny_sdxl import TinySdxl, build_tiny_sdxl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModelCache, TinySdxl]]:
    root = tmp_path_factory.mktemp("sdxl-live") / "models"
    sd15: TinyModels = build_tiny_models(root)
    sdxl = build_tiny_sdxl(root)
    encoder, decoder = ldm_writer.taesd_to_files(build_taesd(seed=41).state_dict())
    torch.save(encoder, sd15.path("taesd", "taesdxl_encoder.pth"))
    torch.save(decoder, sd15.path("taesd", "taesdxl_decoder.pth"))
    yield ModelCache(ModelStore(root), torch.device("cpu"), torch.float32, sd15.config_dir), sdxl


def sdxl_live(tiny: TinySdxl, canvas: np.ndarray, **params: object) -> EngineJob:
    return preview_job(canvas, **{"checkpoint": tiny.checkpoint, **params})


def test_sdxl_frame_equals_the_plain_path(models: tuple[ModelCache, TinySdxl]) -> None:
    cache, tiny = models
    frame, plain, per_step = frame_engine(cache), plain_engine(cache), per_step_engine(cache)
    canvas = make_canvas(64, 64, seed=51)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[8:40, 20:60] = 255
    jobs = [
        sdxl_live(tiny, canvas, seed=3, steps=4, strength=0.5),
        sdxl_live(tiny, canvas, seed=4, steps=4, strength=0.6, cfg=2.5, negative_prompt="dull"),  # CFG batch
        sdxl_live(tiny, canvas, seed=5, steps=4, strength=0.6, cfg=2.0),  # empty negative: zeros
        sdxl_live(tiny, canvas, mode="inpaint", mask=mask, seed=7, steps=4, strength=0.75),
        sdxl_live(
            tiny, canvas, mode="inpaint", mask=mask, seed=8, strength=1.0, checkpoint=tiny.inpaint_checkpoint
        ),
    ]
    for live in jobs:
        ours = run(frame, live)
        assert ours.params["whole_frame"] is True and ours.params["family"] == "sdxl", live.params
        assert ours.params["decoder"] == "taesd"
        reference = run(plain, live)
        assert ours.image.tobytes() == reference.image.tobytes(), live.params
        stepped = run(per_step, live)
        assert stepped.params["whole_frame"] is False and stepped.params["accelerated"] is True
        assert stepped.image.tobytes() == reference.image.tobytes(), live.params


def test_time_ids_are_the_images_size_and_an_input_of_the_frame(models: tuple[ModelCache, TinySdxl]) -> None:
    """Two canvas sizes in one shape bucket share one captured frame: the size conditioning (the image's own
    size, not the padded bucket's) is an input, and each frame equals the per-step path at its size."""
    cache, tiny = models
    frame, per_step = frame_engine(cache), per_step_engine(cache)
    for width in (168, 176):  # both generate in the 192 x 128 bucket
        live = sdxl_live(tiny, make_canvas(width, 128, seed=52), seed=6, steps=4, strength=0.5)
        ours = run(frame, live)
        assert ours.params["generation_size"] == [192, 128] and ours.params["whole_frame"] is True
        assert ours.image.tobytes() == run(per_step, live).image.tobytes()
    assert frame.accelerator.status()["slots"] == 1
