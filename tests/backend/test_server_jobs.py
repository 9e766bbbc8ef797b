"""Real jobs through the real server and engine on tiny real-architecture models, over loopback WebSocket."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from backend.engine import EngineJob, EngineResult
from backend.engine_worker import EngineWorker
from protocol import Accepted, Bounds, Cancelled, ControlParam, Error, JobParams, Progress, Result
from tests.backend.server_harness import RunningServer, run, running_server
from tests.backend.server_harness import random_canvas as canvas
from tests.fixtures.tiny_models import TinyModels
from tests.protocol_client import Client

pytestmark = pytest.mark.slow


def params(models: TinyModels, **overrides: Any) -> JobParams:
    base: dict[str, Any] = {
        "prompt": "a red apple",
        "checkpoint": models.checkpoint,
        "steps": 3,
        "strength": 0.6,
    }
    base.update(overrides)
    return JobParams(**base)


class SlowStepsWorker(EngineWorker):
    """The real engine, with a pause after each step so a test can act while a job is in flight."""

    step_pause_s = 0.25

    def run(
        self, job: EngineJob, on_progress: Callable[[int, int], None], is_cancelled: Callable[[], bool]
    ) -> EngineResult:
        def slow_progress(step: int, total: int) -> None:
            on_progress(step, total)
            time.sleep(self.step_pause_s)

        return super().run(job, slow_progress, is_cancelled)


def test_img2img_returns_the_sent_size_deterministically(server: Any, tiny_models: TinyModels) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        assert client.welcome is not None and tiny_models.checkpoint in client.welcome.models["checkpoints"]
        image = canvas(37, 29)
        first = await client.run(image, params(tiny_models), bounds=Bounds(100, 50, 37, 29))
        assert first.result is not None, first.messages
        assert first.result.bounds == [100, 50, 37, 29]
        assert first.image is not None and first.image.shape == (29, 37, 4)
        assert first.result.params["checkpoint"] == tiny_models.checkpoint
        assert first.result.params["seed"] == 0
        assert not np.array_equal(first.image[..., :3], image[..., :3])
        kinds = [type(m) for m in first.messages]
        assert kinds[0] is Accepted and kinds[-1] is Result
        steps = [(m.step, m.total) for m in first.messages if isinstance(m, Progress)]
        assert steps and steps[-1][0] == steps[-1][1]
        again = await client.run(image, params(tiny_models))
        assert again.image is not None and np.array_equal(again.image, first.image)
        other_seed = await client.run(image, params(tiny_models, seed=99))
        assert other_seed.image is not None and not np.array_equal(other_seed.image, first.image)
        await client.close()

    run(scenario())


def test_strength_zero_returns_the_canvas_exactly(server: Any, tiny_models: TinyModels) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        image = canvas(20, 13, seed=3)
        image[0, 0, 3] = 17  # alpha too
        for encoding in ("rgba8", "bgra8", "png"):
            reply = await client.run(image, params(tiny_models, strength=0.0), result_encoding=encoding)
            assert reply.image is not None and np.array_equal(reply.image, image), encoding
        await client.close()

    run(scenario())


def test_bad_engine_input_gets_an_error_and_the_server_keeps_serving(
    server: Any, tiny_models: TinyModels
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        missing = await client.run(canvas(16, 16), params(tiny_models, checkpoint="nope.safetensors"))
        assert isinstance(missing.final, Error) and missing.final.code == "model_not_found"
        reply = await client.run(canvas(16, 16), params(tiny_models))
        assert reply.result is not None
        await client.close()

    run(scenario())


def test_superseded_live_frames_are_cancelled_and_only_the_newest_arrives(tiny_models: TinyModels) -> None:
    async def scenario(url: str) -> None:
        client = await Client.connect(url)
        live = params(tiny_models, steps=4, strength=1.0)
        first = await client.send_job(canvas(24, 24, 1), live, live=True)
        while not isinstance(await client.receive(), Progress):
            pass  # the first frame is running now
        second = await client.send_job(canvas(24, 24, 2), live, live=True)
        third = await client.send_job(canvas(24, 24, 3), live, live=True)
        replies = await client.wait_for([first, second, third])
        first_final, second_final = replies[first].final, replies[second].final
        assert isinstance(first_final, Cancelled) and first_final.reason == "superseded"
        assert isinstance(second_final, Cancelled) and second_final.reason == "superseded"
        third_image = replies[third].image
        assert replies[third].result is not None and third_image is not None
        steps_of_first = [m.step for m in replies[first].messages if isinstance(m, Progress)]
        assert len(steps_of_first) < 4  # stopped at a step boundary, not run to the end
        # the same canvas again is answered from the last result, with no engine work
        started = time.perf_counter()
        repeat = await client.run(canvas(24, 24, 3), live, live=True)
        assert repeat.image is not None and np.array_equal(repeat.image, third_image)
        assert not any(isinstance(m, Progress) for m in repeat.messages)
        assert time.perf_counter() - started < SlowStepsWorker.step_pause_s
        await client.close()

    with running_server(tiny_models.root, SlowStepsWorker, model_config_dir=tiny_models.config_dir) as server:
        run(scenario(server.url))


def test_cancel_a_running_job_and_other_clients_are_served_meanwhile(tiny_models: TinyModels) -> None:
    async def scenario(url: str) -> None:
        painter = await Client.connect(url)
        job = await painter.send_job(canvas(24, 24), params(tiny_models, steps=6, strength=1.0))
        while not isinstance(await painter.receive(), Progress):
            pass
        started = time.perf_counter()
        observer = await Client.connect(url)  # a handshake is answered while the job runs
        assert observer.welcome is not None and time.perf_counter() - started < 1.0
        await painter.cancel(job)
        replies = await painter.wait_for([job])
        final = replies[job].final
        assert isinstance(final, Cancelled) and final.reason == "cancelled"
        follow_up = await observer.run(canvas(16, 16), params(tiny_models, steps=1))
        assert follow_up.result is not None
        await painter.close()
        await observer.close()

    with running_server(tiny_models.root, SlowStepsWorker, model_config_dir=tiny_models.config_dir) as server:
        run(scenario(server.url))


def test_a_client_that_disconnects_mid_job_frees_the_worker(tiny_models: TinyModels) -> None:
    async def scenario(url: str) -> None:
        leaver = await Client.connect(url)
        await leaver.send_job(canvas(24, 24), params(tiny_models, steps=8, strength=1.0))
        while not isinstance(await leaver.receive(), Progress):
            pass
        await leaver.close()
        started = time.perf_counter()
        stayer = await Client.connect(url)
        reply = await stayer.run(canvas(16, 16), params(tiny_models, steps=1))
        assert reply.result is not None
        # the abandoned 8-step job stopped at its next step instead of running to the end
        assert time.perf_counter() - started < 6 * SlowStepsWorker.step_pause_s
        await stayer.close()

    with running_server(tiny_models.root, SlowStepsWorker, model_config_dir=tiny_models.config_dir) as server:
        run(scenario(server.url))


def test_live_frames_decode_with_taesd_and_generate_with_the_full_vae(
    server: Any, tiny_models: TinyModels
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        image = canvas(32, 32, 4)
        live = await client.run(image, params(tiny_models), live=True)
        final = await client.run(image, params(tiny_models), live=False)
        assert live.result is not None and final.result is not None
        assert live.result.params["decoder"] == "taesd"
        assert final.result.params["decoder"] == "vae"
        assert live.image is not None and final.image is not None and live.image.shape == final.image.shape
        await client.close()

    run(scenario())


def test_a_control_may_use_the_canvas_slot_as_its_image(
    server: RunningServer, tiny_models: TinyModels
) -> None:
    """`controls[].image` names any of the job's image slots, the canvas included (the protocol accepts it);
    the server used to take the canvas out of the control images, so the job failed."""

    async def scenario() -> None:
        client = await Client.connect(server.url)
        control = ControlParam("scribble", tiny_models.controlnet_scribble, 1.0, image="canvas")
        params = JobParams(checkpoint=tiny_models.checkpoint, steps=2, strength=0.6, controls=[control])
        reply = await client.run(canvas(32, 32, 1), params)
        assert isinstance(reply.final, Result), reply.final
        assert reply.image is not None and reply.image.shape == (32, 32, 4)
        await client.close()

    run(scenario())
