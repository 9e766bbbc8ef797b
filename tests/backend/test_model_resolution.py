"""One job, resolved once (issue 11): a job's model names are resolved when it arrives, the choice rides on
the engine's own job object through the scheduler, and neither the live cache nor the engine resolves them
again."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.config import ServerConfig
from backend.engine import EngineJob, EngineResult, LoraSpec, ModelChoice
from backend.engine_worker import EngineWorker
from backend.model_files import ModelStore
from protocol import ControlParam, JobParams, Result
from tests.backend.server_harness import RunningServer, random_canvas, run, running_server
from tests.fixtures.tiny_models import TinyModels
from tests.protocol_client import Client

# The tiny store's first checkpoint (a diffusers folder sorts before the .ckpt and .safetensors files).
DEFAULT_CHECKPOINT = "tiny-sd15-diffusers"


class RecordingWorker(EngineWorker):
    """The real engine worker, noting the job object each run gets from the scheduler."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.jobs: list[Any] = []

    def run(
        self, job: EngineJob, on_progress: Callable[[int, int], None], is_cancelled: Callable[[], bool]
    ) -> EngineResult:
        self.jobs.append(job)
        return super().run(job, on_progress, is_cancelled)


@pytest.fixture(scope="module")
def recording_server(tiny_models: TinyModels) -> Iterator[RunningServer]:
    with running_server(
        tiny_models.root, engine_factory=RecordingWorker, model_config_dir=tiny_models.config_dir
    ) as running:
        deadline = time.monotonic() + 120
        while not running.call(lambda: running.server.engine.ready):  # its start-up lists the checkpoints
            assert time.monotonic() < deadline, "the engine did not start"
            time.sleep(0.05)
        yield running


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Folder walks of every model store, per kind (list_kind walks the kind's folders)."""
    counted: Counter[str] = Counter()
    list_kind = ModelStore.list_kind

    def counting(store: ModelStore, kind: str) -> list[str]:
        counted[kind] += 1
        return list_kind(store, kind)

    monkeypatch.setattr(ModelStore, "list_kind", counting)
    return counted


def defaults(**overrides: Any) -> JobParams:
    """No checkpoint and no LCM-LoRA named: both are the store's defaults."""
    return JobParams(**{"prompt": "a harbour", "steps": 2, "strength": 0.5, "seed": 3, **overrides})


def test_a_live_frame_with_the_default_checkpoint_walks_each_model_folder_once(
    recording_server: RunningServer, walks: Counter[str], tiny_models: TinyModels
) -> None:
    async def scenario() -> None:
        client = await Client.connect(recording_server.url)  # the welcome lists every kind
        for seed in (1, 2):
            walks.clear()
            reply = await client.run(random_canvas(64, 48, seed=seed), defaults(), live=True)
            assert reply.result is not None, reply.messages
            assert reply.result.params["checkpoint"] == DEFAULT_CHECKPOINT
            assert reply.result.params["lcm_lora"] == tiny_models.lcm_lora
            # Before: the intake check, the live-cache key and the engine each resolved the defaults (five
            # walks per frame). Now: once, at intake.
            assert walks == Counter({"checkpoints": 1, "loras": 1})
        await client.close()

    run(scenario())


def test_a_control_naming_no_controlnet_is_resolved_once_at_intake(
    recording_server: RunningServer, walks: Counter[str], tiny_models: TinyModels
) -> None:
    worker: RecordingWorker = recording_server.server.engine  # type: ignore[assignment]
    worker.jobs.clear()

    async def scenario() -> None:
        client = await Client.connect(recording_server.url)
        walks.clear()
        lines = np.zeros((48, 64), np.uint8)
        lines[20:24, 8:56] = 255
        params = defaults(controls=[ControlParam("scribble", strength=0.8, image="lines")])
        reply = await client.run(random_canvas(64, 48, seed=5), params, controls={"lines": lines})
        assert reply.result is not None, reply.messages
        assert reply.result.params["controlnets"] == [tiny_models.controlnet_scribble]
        await client.close()

    run(scenario())
    assert walks["controlnet"] == 1  # at intake; the engine loads the file chosen then
    [job] = worker.jobs
    assert job.models is not None and job.models.controlnets == (tiny_models.controlnet_scribble,)


def test_the_scheduler_hands_the_engine_its_own_job_with_the_resolved_choice(
    recording_server: RunningServer, tiny_models: TinyModels
) -> None:
    worker: RecordingWorker = recording_server.server.engine  # type: ignore[assignment]
    worker.jobs.clear()

    async def scenario() -> None:
        client = await Client.connect(recording_server.url)
        style = {"name": tiny_models.style_lora, "model_strength": 0.5, "clip_strength": 0.25}
        params = JobParams.from_dict({**defaults().to_dict(), "loras": [style]})
        reply = await client.run(random_canvas(64, 48, seed=4), params)
        assert reply.result is not None, reply.messages
        await client.close()

    run(scenario())
    [job] = worker.jobs
    assert type(job) is EngineJob
    assert job.live is False
    assert job.models == ModelChoice(
        checkpoint=DEFAULT_CHECKPOINT,
        vae=None,
        loras=(LoraSpec(tiny_models.style_lora, 0.5, 0.25),),
        lcm_lora=LoraSpec(tiny_models.lcm_lora, 1.0, 1.0),
    )
    assert recording_server.server.scheduler.running is None


def test_resolving_refuses_a_missing_lora_even_at_strength_zero(tiny_models: TinyModels) -> None:
    from protocol import ErrorCode, JobRequest, ProtocolError

    worker = EngineWorker(ServerConfig(models_dir=tiny_models.root))
    params = JobParams.from_dict(
        {"loras": [{"name": "missing.safetensors", "model_strength": 0, "clip_strength": 0}]}
    )
    with pytest.raises(ProtocolError) as refused:
        worker.resolve_models(JobRequest("j", params=params))
    assert refused.value.code is ErrorCode.MODEL_NOT_FOUND and refused.value.job_id == "j"
    choice = worker.resolve_models(JobRequest("k", params=JobParams(lcm_lora_strength=0)))
    assert choice == ModelChoice(DEFAULT_CHECKPOINT, None, (), None)


@pytest.mark.slow
def test_the_live_cache_does_not_answer_for_another_default_checkpoint(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    """A live frame naming no checkpoint ("backend default", the plugin's default) is answered from the last
    result only while the default is still the same checkpoint: after a new checkpoint becomes the default,
    the same canvas must be rendered with it."""
    root = tmp_path / "models"
    shutil.copytree(tiny_models.root, root)

    async def scenario(url: str) -> None:
        client = await Client.connect(url)
        image = random_canvas(24, 24, 3)
        params = JobParams(steps=1, strength=0.5)
        first = await client.run(image, params, live=True)
        assert isinstance(first.final, Result), first.final
        assert first.final.params["checkpoint"] != "aaa-new.safetensors"
        shutil.copy(
            root / "checkpoints" / tiny_models.checkpoint, root / "checkpoints" / "aaa-new.safetensors"
        )
        second = await client.run(image, params, live=True)
        assert isinstance(second.final, Result), second.final
        assert second.final.params["checkpoint"] == "aaa-new.safetensors"
        await client.close()

    with running_server(root, model_config_dir=tiny_models.config_dir, preload=False) as server:
        run(scenario(server.url))
