"""The job size limit follows the memory available, and a client is always held to the limits its welcome
stated: memory that shrinks after start-up lowers the limits of clients that connect after that (their
welcome says so, and a job beyond them is refused), never those of a client already connected; memory that
comes back raises them again for new clients, up to the configured ones.

Real server, engine and tiny models over real WebSockets; only the memory figure is set by the test.
"""

from __future__ import annotations

from typing import Any

import pytest

from backend import job_size
from backend.config import ServerConfig
from backend.engine_worker import EngineWorker
from backend.job_size import BYTES_PER_PIXEL, SHARE
from tests.backend.hardening_client import RawClient
from tests.backend.server_harness import run, running_server
from tests.fixtures.tiny_models import TinyModels

pytestmark = pytest.mark.slow


def limits_of(client: RawClient) -> tuple[int, int]:
    welcome = client.received[0]
    assert isinstance(welcome, dict) and welcome["type"] == "welcome", welcome
    return welcome["limits"]["max_width"], welcome["limits"]["max_height"]


def test_each_client_is_held_to_the_limits_its_welcome_stated_as_memory_changes(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = EngineWorker(ServerConfig(models_dir=tiny_models.root)).default_model_file()
    assert default is not None
    model_reserve = job_size.model_bytes(default) * job_size.MODEL_MEMORY_PER_FILE_BYTE
    plenty = 1 << 40
    little = model_reserve + int(800 * 800 * BYTES_PER_PIXEL / SHARE)  # room for 768x768, not 832x832
    memory = {"available": plenty}
    monkeypatch.setattr(job_size, "available_memory_bytes", lambda: memory["available"])
    params = {"checkpoint": tiny_models.checkpoint, "steps": 1, "strength": 0.5}

    async def scenario(url: str) -> dict[str, Any]:
        early = await RawClient.connect(url)
        memory["available"] = little  # the painter opened a huge document after the server started
        late = await RawClient.connect(url)
        await late.send_job("over", 1024, 1024, params=params)
        await late.send_job("at", 768, 768, params=params)
        await late.until_ended({"over", "at"})
        await early.send_job("big", 1024, 1024, params=params)  # within what its welcome promised
        await early.until_ended({"big"})
        memory["available"] = plenty
        later = await RawClient.connect(url)
        seen = {
            "early": limits_of(early),
            "late": limits_of(late),
            "later": limits_of(later),
            "over": late.ends_of("over")[0],
            "at": late.ends_of("at")[0],
            "big": early.ends_of("big")[0],
        }
        for client in (early, late, later):
            await client.close()
        return seen

    with running_server(tiny_models.root, model_config_dir=tiny_models.config_dir) as server:
        seen = run(scenario(server.url))
    assert seen["early"] == seen["later"] == (4096, 4096), seen
    assert seen["late"] == (768, 768), seen
    over = seen["over"]
    assert (over["type"], over["code"]) == ("error", "too_large"), over
    assert "1024x1024 exceeds the server limit of 768x768" in over["message"], over
    assert seen["at"]["type"] == "result", seen["at"]
    assert seen["big"]["type"] == "result", seen["big"]
