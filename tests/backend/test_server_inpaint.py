"""Selection inpaint and ControlNet guidance through the real server, engine and tiny models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from protocol import Bounds, ControlParam, Error, InpaintParam, JobParams
from tests.backend.server_harness import random_canvas as painting
from tests.backend.server_harness import run
from tests.fixtures.tiny_models import TinyModels
from tests.protocol_client import Client

pytestmark = pytest.mark.slow

PADDING = 6


def inpaint_params(models: TinyModels, **overrides: Any) -> JobParams:
    base: dict[str, Any] = {
        "prompt": "a window",
        "checkpoint": models.checkpoint,
        "steps": 2,
        "strength": 1.0,
        "inpaint": InpaintParam(grow=0, feather=2, padding=PADDING),
    }
    base.update(overrides)
    return JobParams(**base)


def expected_bounds(mask: np.ndarray, padding: int) -> list[int]:
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    x0, y0 = max(int(cols.min()) - padding, 0), max(int(rows.min()) - padding, 0)
    x1, y1 = min(int(cols.max()) + 1 + padding, width), min(int(rows.max()) + 1 + padding, height)
    return [x0, y0, x1 - x0, y1 - y0]


def place(canvas: np.ndarray, layer: np.ndarray, bounds: list[int]) -> np.ndarray:
    """Normal alpha blending, as Krita composites the result layer over the document."""
    x, y, w, h = bounds
    out = canvas.copy()
    under = out[y : y + h, x : x + w, :3].astype(np.uint32)
    alpha = layer[..., 3:4].astype(np.uint32)
    out[y : y + h, x : x + w, :3] = ((layer[..., :3] * alpha + under * (255 - alpha) + 127) // 255).astype(
        np.uint8
    )
    return out


def random_blob_mask(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(3):
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        radius = rng.integers(3, max(4, min(width, height) // 3))
        yy, xx = np.ogrid[:height, :width]
        mask[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2] = 255
    soft_edge = (mask == 0) & (np.roll(mask, 1, axis=1) == 255)
    mask[soft_edge] = 128  # Krita selections are feathered: soft values blend
    return mask


def check_inpaint_result(canvas: np.ndarray, mask: np.ndarray, reply: Any, offset: tuple[int, int]) -> None:
    assert reply.result is not None, reply.messages
    bounds = reply.result.bounds
    local = [bounds[0] - offset[0], bounds[1] - offset[1], bounds[2], bounds[3]]
    assert local == expected_bounds(mask, PADDING)
    layer = reply.image
    assert layer.shape == (local[3], local[2], 4)
    region_mask = mask[local[1] : local[1] + local[3], local[0] : local[0] + local[2]]
    assert np.all(layer[..., 3][region_mask == 0] == 0), "the layer must be transparent outside the selection"
    composed = place(canvas, layer, local)
    outside = mask == 0
    assert np.array_equal(composed[outside], canvas[outside]), "pixels outside the selection changed"
    inside = mask == 255
    assert np.any(composed[inside] != canvas[inside]), "the selection was not redrawn"


@pytest.mark.parametrize(("width", "height", "seed"), [(45, 37, 1), (70, 51, 2), (33, 90, 3)])
def test_outside_the_selection_stays_bit_identical(
    server: Any, tiny_models: TinyModels, width: int, height: int, seed: int
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = painting(width, height, seed)
        mask = random_blob_mask(width, height, seed)
        reply = await client.run(
            canvas,
            inpaint_params(tiny_models, seed=seed),
            mode="inpaint",
            mask=mask,
            bounds=Bounds(10, 20, width, height),
        )
        check_inpaint_result(canvas, mask, reply, offset=(10, 20))
        await client.close()

    run(scenario())


@pytest.mark.parametrize(
    "selection",
    [
        pytest.param((0, 0, 9, 7), id="top-left-edge"),
        pytest.param((50, 40, 14, 9), id="bottom-right-edge"),
        pytest.param((30, 20, 1, 1), id="one-pixel"),
        pytest.param((0, 0, 64, 49), id="everything"),
    ],
)
def test_selections_at_edges_tiny_and_full(
    server: Any, tiny_models: TinyModels, selection: tuple[int, int, int, int]
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = painting(64, 49, 7)
        mask = np.zeros((49, 64), dtype=np.uint8)
        x, y, w, h = selection
        mask[y : y + h, x : x + w] = 255
        params = inpaint_params(tiny_models, inpaint=InpaintParam(grow=0, feather=0, padding=PADDING))
        reply = await client.run(canvas, params, mode="inpaint", mask=mask)
        check_inpaint_result(canvas, mask, reply, offset=(0, 0))
        await client.close()

    run(scenario())


def test_empty_selection_is_an_immediate_no_op(server: Any, tiny_models: TinyModels) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = painting(40, 30, 1)
        reply = await client.run(
            canvas, inpaint_params(tiny_models), mode="inpaint", mask=np.zeros((30, 40), np.uint8)
        )
        assert reply.result is not None and reply.result.params.get("empty_mask") is True
        assert reply.image is not None and np.all(reply.image[..., 3] == 0)
        await client.close()

    run(scenario())


def test_scribble_and_pose_guide_a_selection_redraw(server: Any, tiny_models: TinyModels) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = painting(64, 64, 5)
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[10:50, 12:52] = 255
        scribble = np.zeros((64, 64, 4), dtype=np.uint8)
        scribble[..., 3] = 255
        scribble[30:33, 5:60, :3] = 255  # white line on black
        pose = [[(32.0, 12.0), (32.0, 22.0), (24.0, 22.0), None, None, (40.0, 22.0)] + [None] * 12]
        controls = [
            ControlParam("scribble", tiny_models.controlnet_scribble, 0.8, image="scribble"),
            ControlParam("pose", tiny_models.controlnet_openpose, 1.0, 0.0, 0.5, pose=pose),
        ]
        guided_params = inpaint_params(tiny_models, controls=controls)
        guided = await client.run(
            canvas, guided_params, mode="inpaint", mask=mask, controls={"scribble": scribble}
        )
        check_inpaint_result(canvas, mask, guided, offset=(0, 0))
        plain = await client.run(canvas, inpaint_params(tiny_models), mode="inpaint", mask=mask)
        assert plain.image is not None and guided.image is not None
        assert not np.array_equal(plain.image, guided.image), "ControlNet guidance changed nothing"
        echoed = guided.result.params if guided.result else {}
        assert [c["kind"] for c in echoed["controls"]] == ["scribble", "pose"]
        zero = [ControlParam(c.kind, c.model, 0.0, c.start, c.end, c.image, c.pose) for c in controls]
        unguided = await client.run(
            canvas,
            inpaint_params(tiny_models, controls=zero),
            mode="inpaint",
            mask=mask,
            controls={"scribble": scribble},
        )
        assert unguided.image is not None and np.array_equal(unguided.image, plain.image)
        await client.close()

    run(scenario())


def test_malformed_guidance_is_a_clear_error(server: Any, tiny_models: TinyModels) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        canvas = painting(32, 32, 1)
        unknown = [ControlParam("scribble", "missing-controlnet.safetensors", 1.0, image="scribble")]
        reply = await client.run(
            canvas, inpaint_params(tiny_models, controls=unknown), controls={"scribble": canvas}
        )
        assert isinstance(reply.final, Error) and reply.final.code == "model_not_found"
        follow_up = await client.run(canvas, inpaint_params(tiny_models, strength=0.0))
        assert follow_up.result is not None
        await client.close()

    run(scenario())
