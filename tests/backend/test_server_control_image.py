"""`control_image` jobs through the real server over a loopback WebSocket: the canvas in, the control layer
out (canny computed by the backend, depth from an estimator put in `models/annotators/`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.engine.annotate import canny_edges
from protocol import Bounds, Error, JobParams, Result
from tests.backend.server_harness import run, running_server
from tests.fixtures.tiny_annotators import DEPTH_FOLDER, write_tiny_depth
from tests.fixtures.tiny_models import TinyModels
from tests.protocol_client import Client

pytestmark = pytest.mark.slow


@pytest.fixture
def models(tiny_models: TinyModels, tmp_path: Path) -> Path:
    """A models folder with a checkpoint (jobs name the painter's model choice) and no annotators yet."""
    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / tiny_models.checkpoint).symlink_to(
        tiny_models.path("checkpoints", tiny_models.checkpoint)
    )
    return root


def boxes(width: int, height: int) -> np.ndarray:
    """Two coloured boxes on white, opaque."""
    canvas = np.full((height, width, 4), 255, dtype=np.uint8)
    canvas[10:30, 8:40, :3] = (200, 30, 30)
    canvas[36:50, 44:70, :3] = (20, 20, 160)
    return canvas


def test_canny_from_the_image_comes_back_as_a_line_layer(models: Path) -> None:
    canvas = boxes(80, 60)

    async def scenario() -> tuple[Client, list]:
        client = await Client.connect(server.url)
        assert client.welcome is not None and "control_image" in client.welcome.modes
        plain = await client.run(canvas, JobParams(control_kind="canny"), mode="control_image")
        # Sent at half size for a document twice as large: the layer covers the document's rectangle.
        scaled = await client.run(
            canvas, JobParams(control_kind="canny"), mode="control_image", bounds=Bounds(10, 20, 160, 120)
        )
        await client.close()
        return client, [plain, scaled]

    with running_server(models, preload=False) as server:
        _, (plain, scaled) = run(scenario())
    assert isinstance(plain.result, Result), plain.messages
    assert plain.result.bounds == [0, 0, 80, 60] and plain.result.params["control_kind"] == "canny"
    assert plain.result.params["annotator"] == "canny (100, 200)"
    layer = plain.image
    assert layer is not None and layer.shape == (60, 80, 4)
    expected = canny_edges(canvas[..., :3])
    assert np.array_equal(layer[..., 3], expected) and not layer[..., :3].any()
    # The edges lie on the boxes' outlines, nowhere else.
    lines = expected > 0
    assert np.asarray(lines[9:31, 7:9].any(axis=1))[2:-2].all()
    assert np.asarray(lines[35:51, 69:71].any(axis=1))[2:-2].all()
    assert not lines[13:27, 11:37].any() and not lines[:8].any() and not lines[52:].any()
    assert isinstance(scaled.result, Result) and scaled.result.bounds == [10, 20, 160, 120]
    assert scaled.image is not None and np.array_equal(scaled.image, layer)


def test_depth_needs_its_estimator_and_works_once_it_is_there(models: Path) -> None:
    canvas = boxes(64, 48)

    async def ask(client: Client) -> Result | Error:
        reply = await client.run(canvas, JobParams(control_kind="depth"), mode="control_image")
        final = reply.result or reply.final
        assert isinstance(final, (Result, Error))
        if isinstance(final, Result):
            assert reply.image is not None
            images.append(reply.image)
        return final

    images: list[np.ndarray] = []

    async def scenario() -> tuple[Result | Error, Result | Error, list]:
        client = await Client.connect(server.url)
        missing = await ask(client)
        write_tiny_depth(models / "annotators")  # the painter puts the folder in place: no restart
        found = await ask(client)
        refused = await client.run(canvas, JobParams(control_kind="normal"), mode="control_image")
        live = await client.run(canvas, JobParams(control_kind="canny"), mode="control_image", live=True)
        await client.close()
        return missing, found, [refused.final, live.final]

    with running_server(models, preload=False) as server:
        missing, found, (refused, live) = run(scenario())
    assert isinstance(missing, Error) and missing.code == "model_not_found"
    assert "Depth Anything" in missing.message and "annotators/" in missing.message
    assert str(models) not in missing.message  # the server's paths stay on the server
    assert isinstance(found, Result), found
    assert found.params["annotator"] == f"annotators/{DEPTH_FOLDER}"
    (depth,) = images
    assert depth.shape == (48, 64, 4) and (depth[..., 3] == 255).all()
    assert depth[..., 0].min() == 0 and depth[..., 0].max() == 255
    assert isinstance(refused, Error) and refused.code == "bad_message" and "can't be made" in refused.message
    assert isinstance(live, Error) and live.code == "bad_message" and "not live" in live.message
