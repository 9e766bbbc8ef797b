"""Generate's variations: one job renders `batch` images with consecutive seeds (issue 10, point 6), through
the real server and engine on tiny real-architecture models, over a loopback WebSocket."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.codec import frame_to_array
from backend.engine import EngineJob, EngineResult
from backend.engine_worker import EngineWorker
from protocol import (
    Accepted,
    Bounds,
    Cancelled,
    Error,
    ImageFrame,
    InpaintParam,
    JobParams,
    Limits,
    Progress,
    Result,
)
from tests.backend.fake_headers import sd15_checkpoint, write_safetensors
from tests.backend.server_harness import random_canvas as painting
from tests.backend.server_harness import run, running_server
from tests.backend.test_server_jobs import SlowStepsWorker as ServerJobsSlowWorker
from tests.fixtures.tiny_models import TinyModels
from tests.protocol_client import Client

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


def img2img_params(models: TinyModels, **overrides: Any) -> JobParams:
    base: dict[str, Any] = {
        "prompt": "a red apple",
        "checkpoint": models.checkpoint,
        "steps": 3,
        "strength": 0.7,
        "seed": 40,
    }
    base.update(overrides)
    return JobParams(**base)


def inpaint_params(models: TinyModels, **overrides: Any) -> JobParams:
    base: dict[str, Any] = {
        "prompt": "a window",
        "checkpoint": models.checkpoint,
        "steps": 2,
        "strength": 1.0,
        "seed": 900,
        "inpaint": InpaintParam(grow=0, feather=2, padding=4),
    }
    base.update(overrides)
    return JobParams(**base)


def blob_mask(width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    yy, xx = np.ogrid[:height, :width]
    mask[(xx - width // 2) ** 2 + (yy - height // 2) ** 2 <= (min(width, height) // 4) ** 2] = 255
    mask[(mask == 0) & (np.roll(mask, 1, axis=1) == 255)] = 128  # a feathered edge
    return mask


async def read_job(client: Client, job_id: str) -> list[Result | ImageFrame | Any]:
    """Everything the server sends up to and including the job's end: its result and `count` frames, or
    its cancelled or error."""
    items: list[Any] = []
    frames_due = -1
    while frames_due != 0:
        item = await client.receive()
        items.append(item)
        if isinstance(item, ImageFrame):
            frames_due -= 1
        elif isinstance(item, Result) and item.job_id == job_id:
            frames_due = item.count
        elif isinstance(item, (Cancelled, Error)) and item.job_id == job_id:
            break
    return items


def test_img2img_batch_is_one_job_whose_images_equal_single_jobs_with_their_seeds(
    server: Any, tiny_models: TinyModels
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = painting(40, 32, 3)
        params = img2img_params(tiny_models, batch=3)
        job_id = await client.send_job(canvas, params, bounds=Bounds(100, 50, 40, 32))
        items = await read_job(client, job_id)
        # Exactly one accepted and one result, the result's frames right behind it, in slot order.
        assert [type(i) for i in items if not isinstance(i, Progress)] == [
            Accepted,
            Result,
            ImageFrame,
            ImageFrame,
            ImageFrame,
        ]
        result = next(i for i in items if isinstance(i, Result))
        frames = [i for i in items[items.index(result) + 1 :] if isinstance(i, ImageFrame)]
        assert [f.slot for f in frames] == ["result", "result.1", "result.2"]
        assert all(f.job_id == job_id for f in frames)
        assert result.count == 3 and result.seeds == [40, 41, 42]
        assert result.params["seed"] == 40 and result.params["batch"] == 3
        assert result.params["seeds"] == [40, 41, 42]
        assert result.bounds == [100, 50, 40, 32] and (result.width, result.height) == (40, 32)
        assert all((f.width, f.height) == (40, 32) for f in frames)
        # Progress counts every step of every image, in order, once.
        steps = [(p.step, p.total) for p in items if isinstance(p, Progress)]
        total = 3 * result.params["denoise_steps"]
        assert steps == [(step, total) for step in range(1, total + 1)]

        batch_images = [frame_to_array(frame) for frame in frames]
        for index, seed in enumerate([40, 41, 42]):
            single = await client.run(
                canvas, img2img_params(tiny_models, seed=seed), bounds=Bounds(100, 50, 40, 32)
            )
            assert single.result is not None and single.result.count == 1 and single.result.seeds == [seed]
            assert single.image is not None
            assert np.array_equal(batch_images[index], single.image), (
                f"image {index} differs from seed {seed}"
            )
        assert not np.array_equal(batch_images[0], batch_images[1]), "the variations are all the same image"
        await client.close()

    run(scenario())


def test_inpaint_batch_images_equal_single_jobs_and_share_the_selection_bounds(
    server: Any, tiny_models: TinyModels
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = painting(48, 40, 5)
        mask = blob_mask(48, 40)
        batch = await client.run(
            canvas,
            inpaint_params(tiny_models, batch=2),
            mode="inpaint",
            mask=mask,
            bounds=Bounds(10, 20, 48, 40),
            result_encoding="png",
        )
        assert batch.result is not None, batch.messages
        assert batch.result.count == 2 and batch.result.seeds == [900, 901]
        assert len(batch.images) == 2
        for index, seed in enumerate([900, 901]):
            single = await client.run(
                canvas,
                inpaint_params(tiny_models, seed=seed),
                mode="inpaint",
                mask=mask,
                bounds=Bounds(10, 20, 48, 40),
                result_encoding="png",
            )
            assert single.result is not None and single.image is not None
            assert single.result.bounds == batch.result.bounds
            assert np.array_equal(batch.images[index], single.image), (
                f"image {index} differs from seed {seed}"
            )
        x, y, w, h = batch.result.bounds
        outside = mask[y - 20 : y - 20 + h, x - 10 : x - 10 + w] == 0
        for image in batch.images:
            assert image.shape == (h, w, 4)
            assert np.all(image[..., 3][outside] == 0), "a variation is not transparent outside the selection"
        assert not np.array_equal(batch.images[0], batch.images[1])
        await client.close()

    run(scenario())


def test_strength_zero_batch_returns_the_canvas_for_each_seed(server: Any, tiny_models: TinyModels) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = painting(20, 12, 9)
        reply = await client.run(canvas, img2img_params(tiny_models, strength=0.0, batch=4, seed=7))
        assert reply.result is not None and reply.result.seeds == [7, 8, 9, 10]
        assert len(reply.images) == 4 and all(np.array_equal(image, canvas) for image in reply.images)
        await client.close()

    run(scenario())


def test_a_live_job_asking_for_a_batch_is_refused_and_the_server_keeps_serving(
    server: Any, tiny_models: TinyModels
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = painting(16, 16, 1)
        reply = await client.run(canvas, img2img_params(tiny_models, batch=2), live=True)
        assert isinstance(reply.final, Error) and reply.final.code == "bad_message"
        assert "batch" in reply.final.message and reply.result is None
        live = await client.run(canvas, img2img_params(tiny_models, steps=1), live=True)
        assert live.result is not None and live.result.count == 1 and len(live.images) == 1
        await client.close()

    run(scenario())


class SlowStepsWorker(ServerJobsSlowWorker):
    step_pause_s = 0.2


def test_cancelling_a_batch_between_images_ends_it_once(tiny_models: TinyModels) -> None:
    async def scenario(url: str) -> None:
        client = await Client.connect(url)
        job_id = await client.send_job(
            painting(24, 24), img2img_params(tiny_models, steps=2, strength=1.0, batch=4)
        )
        while True:  # into the second image
            item = await client.receive()
            if isinstance(item, Progress) and item.step > 2:
                break
        await client.cancel(job_id)
        items = await read_job(client, job_id)
        assert isinstance(items[-1], Cancelled) and items[-1].reason == "cancelled"
        assert not any(isinstance(i, (Result, ImageFrame)) for i in items)
        steps = [i.step for i in items if isinstance(i, Progress)]
        assert not steps or max(steps) < 8, "the batch ran to its end despite the cancel"
        follow_up = await client.run(painting(16, 16), img2img_params(tiny_models, steps=1))
        assert follow_up.result is not None
        # Nothing more of the cancelled batch (the inbox holds what came while waiting for the follow-up).
        assert not any(getattr(m, "job_id", None) == job_id for m in client.inbox)
        await client.close()

    with running_server(tiny_models.root, SlowStepsWorker, model_config_dir=tiny_models.config_dir) as server:
        run(scenario(server.url))


# --- a batch of large images and the unread-reply limits ---------------------------------------------------


@pytest.fixture
def named_models(tmp_path: Path) -> Path:
    """A checkpoint name that resolves; the engine below never opens it."""
    root = tmp_path / "models"
    write_safetensors(root / "checkpoints" / "model.safetensors", sd15_checkpoint())  # a header, no weights
    return root


class LargestImagesWorker(EngineWorker):
    """Answers each job with `batch` images of the largest size the limits allow (no engine)."""

    side = 256

    def run(
        self, job: EngineJob, on_progress: Callable[[int, int], None], is_cancelled: Callable[[], bool]
    ) -> EngineResult:
        images = [
            np.full((self.side, self.side, 4), index, dtype=np.uint8) for index in range(job.params.batch)
        ]
        return EngineResult(images[0], (0, 0, self.side, self.side), {}, {}, images[1:])


def test_a_batch_larger_than_the_unread_hard_limit_reaches_a_reading_client(named_models: Path) -> None:
    """8 of the largest results at once are 2 MiB here, over the 64 KiB + 2 x 256 KiB that drops a client
    at once: a batch gets that room once per image, so a client that reads is not dropped for asking."""
    side = LargestImagesWorker.side
    limits = Limits(max_width=side, max_height=side, max_unread_bytes=64 * 1024, max_upscale_side=side)

    async def scenario(url: str) -> None:
        client = await Client.connect(url)
        params = JobParams(checkpoint="model.safetensors", batch=8)
        reply = await client.run(painting(8, 8), params)
        assert reply.result is not None, reply.messages
        assert reply.result.count == 8 and len(reply.images) == 8
        assert [int(image[0, 0, 0]) for image in reply.images] == list(range(8))
        follow_up = await client.run(painting(8, 8), JobParams(checkpoint="model.safetensors"))
        assert follow_up.result is not None and len(follow_up.images) == 1
        await client.close()

    with running_server(named_models, LargestImagesWorker, limits=limits, preload=False) as server:
        assert server.server.config.max_unread_hard_bytes < 8 * side * side * 4
        run(scenario(server.url))
