"""SDXL in every mode through the real server: live (with SDXL's own preview decoder), Generate, selection
inpaint with a 4-channel and a 9-channel SDXL checkpoint, and switching families between jobs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from protocol import Bounds, InpaintParam, JobParams
from tests.backend.server_harness import RunningServer, run, running_server
from tests.backend.server_harness import random_canvas as painting
from tests.backend.test_server_inpaint import PADDING, check_inpaint_result, random_blob_mask
from tests.fixtures import ldm_writer
from tests.fixtures.tiny_models import TinyModels, build_taesd, build_tiny_models
from tests.fixtures.tiny_sdxl import TinySdxl, build_tiny_sdxl
from tests.protocol_client import Client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyModels, TinySdxl]:
    """A painter's models folder with both families, and SDXL's preview decoder (taesdxl_*) beside SD1.5's."""
    root = tmp_path_factory.mktemp("both") / "models"
    sd15, sdxl = build_tiny_models(root), build_tiny_sdxl(root)
    encoder, decoder = ldm_writer.taesd_to_files(build_taesd(seed=31).state_dict())
    torch.save(encoder, sd15.path("taesd", "taesdxl_encoder.pth"))
    torch.save(decoder, sd15.path("taesd", "taesdxl_decoder.pth"))
    return sd15, sdxl


@pytest.fixture(scope="module")
def server(both: tuple[TinyModels, TinySdxl]) -> Iterator[RunningServer]:
    sd15, _ = both
    with running_server(sd15.root, model_config_dir=sd15.config_dir) as running:
        yield running


def sdxl_params(tiny: TinySdxl, **overrides: Any) -> JobParams:
    base: dict[str, Any] = {"prompt": "a harbour at night", "checkpoint": tiny.checkpoint, "steps": 2,
                            "strength": 0.6, "seed": 11}  # fmt: skip
    base.update(overrides)
    return JobParams(**base)


def test_live_and_generate_with_an_sdxl_checkpoint(
    server: RunningServer, both: tuple[TinyModels, TinySdxl]
) -> None:
    _, sdxl = both

    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = painting(96, 80, 4)
        live = await client.run(canvas, sdxl_params(sdxl), live=True)
        assert live.result is not None, live.messages
        assert live.result.params["family"] == "sdxl"
        assert live.result.params["decoder"] == "taesd"  # SDXL's own TAESD, from the taesdxl_* files
        final = await client.run(canvas, sdxl_params(sdxl))
        assert final.result is not None, final.messages
        assert final.result.params["decoder"] == "vae"
        assert final.image is not None and final.image.shape[2] == 4
        assert np.any(final.image[..., :3] != canvas[..., :3])
        await client.close()

    run(scenario())


@pytest.mark.parametrize("checkpoint", ["checkpoint", "inpaint_checkpoint"])
def test_sdxl_selection_inpaint_keeps_the_outside(
    server: RunningServer, both: tuple[TinyModels, TinySdxl], checkpoint: str
) -> None:
    _, sdxl = both

    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = painting(70, 51, 2)
        mask = random_blob_mask(70, 51, 2)
        params = sdxl_params(
            sdxl,
            checkpoint=getattr(sdxl, checkpoint),
            strength=1.0,
            inpaint=InpaintParam(grow=0, feather=2, padding=PADDING),
        )
        reply = await client.run(canvas, params, mode="inpaint", mask=mask, bounds=Bounds(5, 7, 70, 51))
        check_inpaint_result(canvas, mask, reply, offset=(5, 7))
        assert reply.result is not None and reply.result.params["family"] == "sdxl"
        await client.close()

    run(scenario())


def test_switching_families_between_jobs(server: RunningServer, both: tuple[TinyModels, TinySdxl]) -> None:
    sd15, sdxl = both

    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = painting(64, 64, 9)
        families = []
        for checkpoint in (sd15.checkpoint, sdxl.checkpoint, sd15.checkpoint, sdxl.diffusers_checkpoint):
            reply = await client.run(canvas, sdxl_params(sdxl, checkpoint=checkpoint), live=True)
            assert reply.result is not None, reply.messages
            families.append(reply.result.params["family"])
        assert families == ["sd15", "sdxl", "sd15", "sdxl"]
        await client.close()

    run(scenario())
