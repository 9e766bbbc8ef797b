"""A live frame with a reference image while the accelerated path compiles in the background: the adapters
it installs into the shared UNet must never be what the compile traces (which failed the compile and left
the painter on the slow path for the session), and the frame is the plain path's frame.

The compile is made slow on purpose (a pause before each warm-up call) so the reference frame arrives
while it runs; torch.compile runs with dynamo's "eager" backend, as in test_accelerated_path.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
import torch

from backend.engine import Engine, EngineJob, EngineSettings
from backend.engine.accelerated import AcceleratorSettings
from backend.engine.accelerated.accelerator import Accelerator
from backend.loading.model_cache import ModelCache
from backend.model_files import ModelStore
from protocol.messages import JobParams
from protocol.references import ReferenceParam
from tests.backend.test_engine_support import make_canvas, run
from tests.fixtures.tiny_ip_adapter import TinyReferences, write_tiny_references
from tests.fixtures.tiny_models import TinyModels, build_tiny_models

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyModels, TinyReferences]:
    root = tmp_path_factory.mktemp("refs-accelerated") / "models"
    return build_tiny_models(root), write_tiny_references(root)


def engine_for(sd15: TinyModels, accelerated: AcceleratorSettings | None = None) -> Engine:
    cache = ModelCache(ModelStore(sd15.root), CPU, torch.float32, sd15.config_dir)
    settings = EngineSettings(working_size=False, min_side=32)
    if accelerated is not None:
        settings = EngineSettings(working_size=False, min_side=32, accelerated=accelerated)
    return Engine(cache, CPU, torch.float32, settings)


def live_frame(checkpoint: str, references: list[ReferenceParam], images: dict[str, np.ndarray]) -> EngineJob:
    params = JobParams(
        prompt="a lighthouse", steps=8, strength=0.5, cfg=1.0, seed=5, sampler="lcm",
        checkpoint=checkpoint, references=references,
    )  # fmt: skip
    return EngineJob("img2img", params, make_canvas(64, 64, seed=3), None, images, live=True)


def test_a_reference_frame_during_a_background_compile(
    tiny: tuple[TinyModels, TinyReferences], monkeypatch: pytest.MonkeyPatch
) -> None:
    sd15, refs = tiny
    compiling = threading.Event()
    reference_frames_done: list[bool] = []  # seen by each warm-up call: had the reference frame ended?
    reference_done = threading.Event()
    warm_function = Accelerator.warm_function

    def slow_warm(self: Accelerator, fn: Any, examples: list[torch.Tensor]) -> None:
        compiling.set()
        time.sleep(0.5)
        reference_frames_done.append(reference_done.is_set())
        warm_function(self, fn, examples)

    monkeypatch.setattr(Accelerator, "warm_function", slow_warm)
    engine = engine_for(sd15, AcceleratorSettings(mode="compile", compile_backend="eager", background=True))
    images = {"look": make_canvas(40, 40, seed=31)}
    reference = [ReferenceParam("look", model=refs.adapter("sd15"))]

    run(engine, live_frame(sd15.checkpoint, [], {}))  # the plain frame starts the compile
    assert compiling.wait(60)
    referenced = run(engine, live_frame(sd15.checkpoint, reference, images))
    reference_done.set()
    assert engine.accelerator.wait(300)

    status = engine.accelerator.status()
    assert status["failed"] == 0 and not status["errors"], status
    assert referenced.params["accelerated"] is False and referenced.params["ip_adapters"]
    # The reference frame waited for the compile to finish with the models: no warm-up call ran after it.
    assert reference_frames_done and not any(reference_frames_done)
    assert np.array_equal(
        referenced.image, run(engine_for(sd15), live_frame(sd15.checkpoint, reference, images)).image
    )
    again = run(engine, live_frame(sd15.checkpoint, [], {}))
    assert again.params["accelerated"] is True
    unaccelerated = run(engine_for(sd15), live_frame(sd15.checkpoint, [], {}))
    assert np.abs(again.image.astype(int) - unaccelerated.image.astype(int)).max() <= 1
