"""The engine worker (backend/engine_worker.py) as the server starts it: loading the engine behind the
handshake, and what a damaged default model does to that."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from protocol import Error, JobParams, Result
from tests.backend.server_harness import RunningServer, random_canvas, run, running_server
from tests.backend.test_scheduler import settle
from tests.fixtures.tiny_models import TinyModels
from tests.protocol_client import Client

pytestmark = pytest.mark.slow


def test_a_broken_default_checkpoint_does_not_mark_the_engine_failed(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    """Preloading the default checkpoint is a convenience: a damaged file that sorts first must not make the
    engine look failed. It is not the default either (the first usable checkpoint is: jobs naming none
    work); a job naming it gets a model error naming the file."""
    root = tmp_path / "models"
    shutil.copytree(tiny_models.root, root)
    (root / "checkpoints" / "aaa-broken.safetensors").write_bytes(b"not a safetensors file")

    async def scenario(url: str, server: RunningServer) -> None:
        await settle(lambda: server.call(lambda: server.server.engine._loaded.is_set()), timeout=60)
        client = await Client.connect(url)
        assert client.welcome is not None and client.welcome.ready, client.welcome
        assert "failed to start" not in client.welcome.message
        default = await client.run(random_canvas(16, 16), JobParams(steps=1))
        assert isinstance(default.final, Result), default.messages
        assert default.final.params["checkpoint"] != "aaa-broken.safetensors"
        named = JobParams(checkpoint="aaa-broken.safetensors", steps=1)
        broken = await client.run(random_canvas(16, 16), named)
        assert isinstance(broken.final, Error) and broken.final.code == "model_error"
        assert "aaa-broken.safetensors" in broken.final.message
        good = await client.run(random_canvas(16, 16), JobParams(checkpoint=tiny_models.checkpoint, steps=1))
        assert isinstance(good.final, Result)
        await client.close()

    with running_server(root, model_config_dir=tiny_models.config_dir) as server:
        run(scenario(server.url, server))
