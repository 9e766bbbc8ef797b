"""The prompt syntax over the WebSocket, on the real server and engine with tiny real-format models: an
inline `<lora:...>` tag fuses its LoRA as the job's `loras` list would, embeddings and emphasis reach the
image, and a name without a file is refused when the job arrives, naming it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from protocol import Error, JobParams, LoraParam
from tests.backend.server_harness import RunningServer, random_canvas, run, running_server
from tests.backend.test_embeddings import write_a1111_pt
from tests.fixtures.tiny_models import TinyModels
from tests.protocol_client import Client

pytestmark = pytest.mark.slow

PROMPT = "a red apple on a table"


@pytest.fixture(scope="module")
def server(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A models folder of its own (the session's tiny models linked in, an embedding added), so the shared
    one keeps its listings."""
    root = tmp_path_factory.mktemp("syntax") / "models"
    for kind in ("checkpoints", "loras"):
        (root / kind).mkdir(parents=True)
    (root / "checkpoints" / tiny_models.checkpoint).symlink_to(
        tiny_models.path("checkpoints", tiny_models.checkpoint)
    )
    for lora in (tiny_models.style_lora, tiny_models.lcm_lora):
        (root / "loras" / lora).symlink_to(tiny_models.path("loras", lora))
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(7))
    write_a1111_pt(root / "embeddings" / "zqneg.pt", vectors)
    with running_server(root, model_config_dir=tiny_models.config_dir) as running:
        yield running


def params(**overrides: Any) -> JobParams:
    base: dict[str, Any] = {"prompt": PROMPT, "steps": 3, "strength": 0.6, "seed": 5, "sampler": "euler"}
    return JobParams(**{**base, **overrides})


async def image(client: Client, job: JobParams) -> np.ndarray:
    reply = await client.run(random_canvas(48, 40, seed=2), job)
    assert reply.result is not None and reply.image is not None, reply.messages
    return reply.image


def test_an_inline_lora_is_the_job_list_entry(server: RunningServer, tiny_models: TinyModels) -> None:
    style = Path(tiny_models.style_lora).stem  # as model pages write it: the file name without its suffix

    async def scenario() -> None:
        client = await Client.connect(server.url)
        plain = await image(client, params())
        listed = await image(client, params(loras=[LoraParam(tiny_models.style_lora, 0.8, 0.8)]))
        inline = await image(client, params(prompt=f"{PROMPT} <lora:{style}:0.8>"))
        assert not np.array_equal(listed, plain)  # the LoRA shows
        assert np.array_equal(inline, listed)
        loaded = server.call(lambda: server.server.engine.loaded())
        assert [lora["name"] for lora in loaded["loras"]] == [tiny_models.style_lora]
        # A1111's two numbers: text encoder, then UNet
        split = await image(client, params(prompt=f"<lora:{style}:0.3:0.9> {PROMPT}"))
        assert np.array_equal(
            split, await image(client, params(loras=[LoraParam(tiny_models.style_lora, 0.9, 0.3)]))
        )
        await client.close()

    run(scenario())


def test_embeddings_and_emphasis_reach_the_image(server: RunningServer) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        plain = await image(client, params(cfg=3.0, negative_prompt="blurry"))
        comfy = await image(client, params(cfg=3.0, negative_prompt="blurry, embedding:zqneg"))
        a1111 = await image(client, params(cfg=3.0, negative_prompt="blurry, zqneg"))
        assert not np.array_equal(comfy, plain) and np.array_equal(comfy, a1111)
        emphasis = await image(
            client, params(cfg=3.0, prompt="a (red:1.6) apple on a table", negative_prompt="blurry")
        )
        assert not np.array_equal(emphasis, plain)
        await client.close()

    run(scenario())


@pytest.mark.parametrize(
    ("prompt", "code", "says"),
    [
        (f"{PROMPT} <lora:no-such-style:0.8>", "model_not_found", "No LoRA named 'no-such-style'"),
        (f"{PROMPT}, embedding:no-such-neg", "model_not_found", "No embedding named 'no-such-neg'"),
        (f"{PROMPT} <lora:style:strong>", "model_error", "'strong' is not a strength"),
        (f"{PROMPT} <lora:../../secrets:1>", "unsafe_name", "Unsafe model name"),
    ],
)
def test_a_name_without_a_file_is_refused_at_intake(
    server: RunningServer, prompt: str, code: str, says: str
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        reply = await client.run(random_canvas(48, 40), params(prompt=prompt))
        assert isinstance(reply.final, Error), reply.messages
        assert reply.final.code == code and says in reply.final.message, reply.final
        assert reply.result is None
        await client.close()

    run(scenario())
