"""Upscale jobs through the real server and engine over the WebSocket, with the tiny models and a tiny
Real-ESRGAN file: a selection's upscale comes back as one image of twice its size at its document place."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from protocol import Bounds, Error, JobParams, Progress, UpscaleParam
from protocol.upscale import MAX_UPSCALE_SIDE
from tests.backend.server_harness import RunningServer, run, running_server
from tests.backend.server_harness import random_canvas as painting
from tests.fixtures.tiny_models import TinyModels
from tests.fixtures.tiny_upscalers import write_realesrgan_x2
from tests.protocol_client import Client

pytestmark = pytest.mark.slow
UPSCALER = "RealESRGAN_x2plus.pth"


@pytest.fixture(scope="module")
def server(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The tiny models as an extra models folder beside one holding an upscale model."""
    root = tmp_path_factory.mktemp("models")
    write_realesrgan_x2(root / "upscale_models" / UPSCALER)
    with running_server(
        root, extra_model_dirs=(tiny_models.root,), model_config_dir=tiny_models.config_dir
    ) as running:
        yield running


def params(models: TinyModels, **upscale: Any) -> JobParams:
    return JobParams(
        prompt="a quiet street", checkpoint=models.checkpoint, steps=2, strength=0.5, seed=5,
        upscale=UpscaleParam(**upscale),
    )  # fmt: skip


def test_the_welcome_lists_upscale_models_and_the_result_limit(server: RunningServer) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        assert client.welcome is not None
        assert client.welcome.models["upscale_models"] == [UPSCALER]
        assert "upscale" in client.welcome.modes
        assert client.welcome.limits.max_upscale_side == MAX_UPSCALE_SIDE
        await client.close()

    run(scenario())


def test_a_selection_upscaled_2x_comes_back_twice_its_size_at_its_place(
    server: RunningServer, tiny_models: TinyModels
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = painting(64, 48, seed=2)
        mask = np.zeros((48, 64), dtype=np.uint8)
        mask[5:30, 12:40] = 255  # the selection: 28 x 25 pixels at (12, 5)
        reply = await client.run(
            canvas,
            params(tiny_models, factor=2.0, model=UPSCALER),
            mode="upscale",
            mask=mask,
            bounds=Bounds(100, 200, 64, 48),  # the canvas is this rectangle of the document
        )
        assert reply.result is not None, reply.messages
        assert reply.result.bounds == [112, 205, 28, 25]  # the selection's box, in document coordinates
        assert (reply.result.width, reply.result.height) == (56, 50)
        assert reply.image is not None and reply.image.shape == (50, 56, 4)
        assert np.all(reply.image[..., 3] == 255)
        assert reply.result.params["upscaler"] == UPSCALER and reply.result.params["tiles"] == 1
        assert any(isinstance(m, Progress) for m in reply.messages)
        await client.close()

    run(scenario())


def test_a_selection_sent_as_its_own_crop_covers_its_bounds(
    server: RunningServer, tiny_models: TinyModels
) -> None:
    """The plugin's way: the selection's box as the canvas, its document rectangle as the bounds."""

    async def scenario() -> None:
        client = await Client.connect(server.url)
        crop = painting(30, 20, seed=3)
        reply = await client.run(
            crop, params(tiny_models, factor=4.0, refine=False), mode="upscale", bounds=Bounds(7, 9, 30, 20)
        )
        assert reply.result is not None, reply.messages
        assert reply.result.bounds == [7, 9, 30, 20]
        assert reply.image is not None and reply.image.shape == (80, 120, 4)
        assert reply.result.params["upscaler"] == "lanczos"
        await client.close()

    run(scenario())


def test_unusable_upscale_jobs_are_refused_when_they_arrive(
    server: RunningServer, tiny_models: TinyModels
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        missing = await client.run(painting(16, 16), params(tiny_models, model="absent.pth"), mode="upscale")
        assert isinstance(missing.final, Error) and missing.final.code == "model_not_found"
        assert "upscale_models/" in missing.final.message
        too_large = await client.run(painting(2100, 8), params(tiny_models, factor=4.0), mode="upscale")
        assert isinstance(too_large.final, Error) and too_large.final.code == "too_large"
        await client.close()

    run(scenario())


def test_the_plugins_incoming_limit_and_the_servers_unread_room_hold_the_largest_upscale(
    server: RunningServer,
) -> None:
    """An 8192 x 8192 BGRA result is 256 MiB in one frame: the server must not drop a reading client for
    it, and the plugin's WebSocket must take it."""
    from krita_plugin.network import MAX_INCOMING_BYTES

    largest_frame = MAX_UPSCALE_SIDE * MAX_UPSCALE_SIDE * 4 + 1024  # pixels + the frame's header and name
    config = server.server.config
    assert config.max_unread_hard_bytes - config.limits.max_unread_bytes >= largest_frame
    assert MAX_INCOMING_BYTES >= largest_frame
