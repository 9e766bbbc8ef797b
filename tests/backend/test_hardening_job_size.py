"""The welcome's image limits are what this machine's memory holds: on a machine with little memory they
shrink, a job beyond them is refused as too_large with the limit in words, and a job at them runs.

Real server, engine and tiny models over a real WebSocket; only the memory figure is made small.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backend import job_size
from backend.config import ServerConfig
from backend.engine_worker import EngineWorker
from backend.job_size import BYTES_PER_PIXEL, MIN_SIDE, SHARE, fit_limits, fitting_side
from protocol import Limits
from tests.backend.hardening_client import RawClient
from tests.backend.server_harness import run, running_server
from tests.fixtures.tiny_models import TinyModels

MIB = 1024 * 1024


@pytest.mark.slow
def test_a_machine_with_little_memory_states_smaller_limits_and_holds_to_them(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = EngineWorker(ServerConfig(models_dir=tiny_models.root)).default_model_file()
    assert default is not None
    model_reserve = job_size.model_bytes(default) * job_size.MODEL_MEMORY_PER_FILE_BYTE
    # Room for a job of 768x768 (and not of 832x832) once the model is loaded.
    for_jobs = int(800 * 800 * BYTES_PER_PIXEL / SHARE)
    monkeypatch.setattr(job_size, "available_memory_bytes", lambda: model_reserve + for_jobs)
    params = {"checkpoint": tiny_models.checkpoint, "steps": 1, "strength": 0.5}

    async def scenario(url: str) -> None:
        client = await RawClient.connect(url)
        welcome = client.received[0]
        assert isinstance(welcome, dict)
        assert (welcome["limits"]["max_width"], welcome["limits"]["max_height"]) == (768, 768), welcome
        await client.send_job("huge", 1024, 1024, params=params)
        await client.send_job("wide", 4096, 64, params=params)  # within 4096, beyond the memory's limit
        await client.send_job("fits", 768, 768, params=params)  # the limit itself works
        await client.until_ended({"huge", "wide", "fits"})
        for job_id, (width, height) in (("huge", (1024, 1024)), ("wide", (4096, 64))):
            (error,) = client.ends_of(job_id)
            assert (error["type"], error["code"]) == ("error", "too_large"), error
            assert f"{width}x{height} exceeds the server limit of 768x768" in error["message"], error
            assert "scaled down" in error["message"]
        (result,) = client.ends_of("fits")
        assert result["type"] == "result", result
        await client.close()

    with running_server(tiny_models.root, model_config_dir=tiny_models.config_dir) as server:
        assert server.server.config.limits.max_width == 768
        run(scenario(server.url))


def test_limits_are_never_raised_and_have_a_floor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    configured = Limits(max_width=2048, max_height=1024)
    monkeypatch.setattr(job_size, "available_memory_bytes", lambda: 1 << 40)  # a terabyte
    assert fit_limits(configured) == configured
    monkeypatch.setattr(job_size, "available_memory_bytes", lambda: None)  # unknown: the configured stand
    assert fit_limits(configured) == configured
    monkeypatch.setattr(job_size, "available_memory_bytes", lambda: 2 * 1024 * MIB)
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"\0" * (200 * MIB // 100))  # 2 MiB file: a 4 MiB reserve
    fitted = fit_limits(Limits(), model)
    side = fitting_side(2 * 1024 * MIB - 4 * MIB)
    assert (fitted.max_width, fitted.max_height) == (side, side) == (4032, 4032)
    assert fitted.max_message_bytes == Limits().max_message_bytes  # the rest is left alone
    # With 1024x1024 configured, more memory than that needs changes nothing.
    assert fit_limits(Limits(max_width=1024, max_height=1024), model).max_width == 1024
    assert fitting_side(0) == fitting_side(-5) == MIN_SIDE


def test_the_real_memory_figure_is_read() -> None:
    available = job_size.available_memory_bytes()
    if Path("/proc/meminfo").exists():
        assert available is not None and available > 64 * MIB
