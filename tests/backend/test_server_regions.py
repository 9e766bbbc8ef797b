"""Regions through the real server: a live job with regions is served with them counted; a region mask of
another size than the canvas is refused at intake."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import JobParams
from protocol.messages import Error, Result
from protocol.regions import RegionParam
from tests.backend.server_harness import RunningServer, random_canvas, run
from tests.protocol_client import Client, JobReply

pytestmark = pytest.mark.slow


def left_half(width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[:, : width // 2] = 255
    return mask


def test_a_live_job_with_regions_and_a_mask_of_another_size(server: RunningServer) -> None:
    canvas = random_canvas(64, 48, 3)
    params = JobParams(
        prompt="a harbour", steps=2, strength=0.6, cfg=3.0, regions=[RegionParam("left", "a boat")]
    )

    async def scenario() -> tuple[JobReply, JobReply]:
        client = await Client.connect(server.url)
        live = await client.run(canvas, params, live=True, controls={"left": left_half(64, 48)})
        bad = await client.run(canvas, params, controls={"left": left_half(32, 48)})
        await client.close()
        return live, bad

    live, bad = run(scenario())
    assert isinstance(live.result, Result), live.messages
    assert live.result.params["regions_counted"] == 1
    assert live.image is not None and live.image.shape == (48, 64, 4)
    assert isinstance(bad.final, Error) and bad.final.code == "bad_message"
    assert "'left'" in bad.final.message and "same size as the canvas" in bad.final.message
