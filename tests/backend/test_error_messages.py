"""Messages for people: every error names the thing and the fix, briefly, and has no developer internals.

Server behaviour is driven through the real server and a real WebSocket (tiny models); the shutdown case runs
the command line's own `serve` and stops it with a real SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from backend import cli
from backend import server as server_module
from backend.config import ServerConfig
from backend.engine import EngineJob, EngineResult, JobCancelled
from backend.engine_worker import EngineWorker
from protocol import ImageEncoding, ImageFrame, encode_frame
from tests.backend.hardening_client import RawClient, job_message
from tests.backend.server_harness import RunningServer, run, running_server
from tests.fixtures.tiny_models import TinyModels

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"


def readable(message: str) -> None:
    """What every message here must be: short, no object reprs, no long digit runs, no diffusers advice."""
    assert len(message) < 400, message
    assert "object at 0x" not in message, message
    assert not re.search(r"\d{25}", message), message
    assert "low_cpu_mem_usage" not in message and "ignore_mismatched_sizes" not in message, message
    assert "github.com" not in message, message


def test_a_huge_seed_is_quoted_short(server: RunningServer) -> None:
    async def scenario() -> dict[str, object]:
        client = await RawClient.connect(server.url)
        # 1e300 is a whole number in JSON's eyes: it must not come back as all 301 of its digits.
        await client.send_json(json.dumps(job_message("s1", params={"steps": 1, "seed": 1e300})))
        reply = await client.receive()
        await client.close()
        assert isinstance(reply, dict)
        return reply

    reply = run(scenario())
    assert (reply["type"], reply["code"], reply["job_id"]) == ("error", "bad_message", "s1"), reply
    message = str(reply["message"])
    readable(message)
    assert "'seed'" in message and "1e+300" in message and str(2**63 - 1) in message, message


def test_a_broken_png_frame_says_what_is_wrong(server: RunningServer) -> None:
    async def scenario() -> dict[str, object]:
        client = await RawClient.connect(server.url)
        images = [{"slot": "canvas", "encoding": "png", "width": 16, "height": 16}]
        await client.send_json(job_message("p1", images=images))
        # PNG's signature, then garbage: past the protocol's signature check, into the decoder.
        payload = b"\x89PNG\r\n\x1a\n" + b"this is not a PNG file at all"
        await client.socket.send(encode_frame(ImageFrame("p1", "canvas", ImageEncoding.PNG, 16, 16, payload)))
        await client.until_ended({"p1"})
        await client.close()
        (end,) = client.ends_of("p1")
        return end

    end = run(scenario())
    assert (end["type"], end["code"]) == ("error", "bad_frame"), end
    message = str(end["message"])
    readable(message)
    assert "'canvas'" in message and "PNG" in message, message


def test_a_controlnet_that_does_not_fit_its_config_names_the_fix(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    # A --model-config folder without controlnet/config.json: the shipped SD1.5 ControlNet config is used,
    # and the tiny ControlNet doesn't fit it.
    configs = tmp_path / "configs"
    shutil.copytree(tiny_models.config_dir, configs)
    shutil.rmtree(configs / "controlnet")
    params = {
        "checkpoint": tiny_models.checkpoint,
        "steps": 1,
        "strength": 0.5,
        "controls": [{"kind": "scribble", "model": tiny_models.controlnet_scribble, "image": "canvas"}],
    }

    async def scenario(url: str) -> dict[str, object]:
        client = await RawClient.connect(url)
        await client.send_job("c1", params=params)
        await client.until_ended({"c1"})
        await client.close()
        (end,) = client.ends_of("c1")
        return end

    with running_server(tiny_models.root, model_config_dir=configs) as running:
        end = run(scenario(running.url))
    assert (end["type"], end["code"]) == ("error", "model_error"), end
    message = str(end["message"])
    readable(message)
    assert tiny_models.controlnet_scribble in message, message
    assert "controlnet/config.json" in message and "--model-config" in message, message
    assert str(tmp_path) not in message, message  # the server's folders are not the client's business


def test_model_config_says_it_needs_controlnet_config_json() -> None:
    help_text = " ".join(cli.build_parser().format_help().split())
    assert "controlnet/config.json" in help_text, help_text
    readme = README.read_text(encoding="utf-8")
    sentence = next((line for line in readme.splitlines() if "--model-config" in line), "")
    assert "controlnet/config.json" in sentence, sentence


class StuckHost(EngineWorker):
    """The real engine behind a job that takes long and can't be interrupted (a step that doesn't return)."""

    started = threading.Event()
    release = threading.Event()

    def run(
        self, job: EngineJob, on_progress: Callable[[int, int], None], is_cancelled: Callable[[], bool]
    ) -> EngineResult:
        StuckHost.started.set()
        StuckHost.release.wait(60)
        # Released after the server is gone: nothing may load models behind the tests that follow (loading
        # patches torch's module construction process-wide while it runs).
        raise JobCancelled()


def test_shutdown_during_a_job_cancels_it_for_the_client_and_logs_what_is_busy(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    servers: list[server_module.Server] = []

    class StuckServer(server_module.Server):
        def __init__(self, config: ServerConfig) -> None:
            super().__init__(config, StuckHost(config))
            servers.append(self)

    monkeypatch.setattr(server_module, "Server", StuckServer)
    monkeypatch.setattr(cli, "SHUTDOWN_GRACE_S", 0.5)
    StuckHost.started.clear()
    StuckHost.release.clear()
    config = ServerConfig(port=0, models_dir=tiny_models.root, model_config_dir=tiny_models.config_dir)
    params = {"checkpoint": tiny_models.checkpoint, "steps": 1, "strength": 0.5}

    async def scenario() -> RawClient:
        serving = asyncio.create_task(cli.serve(config))
        while not servers or servers[0]._socket_server is None:
            await asyncio.sleep(0.02)
        port = servers[0]._socket_server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        client = await RawClient.connect(f"ws://127.0.0.1:{port}")
        await client.send_job("running", params=params)
        await client.send_job("queued", params=params)
        while len(client.messages("accepted")) < 2:
            await client.receive()
        await asyncio.to_thread(StuckHost.started.wait, 30)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl+C in the terminal does
        try:
            while True:
                await client.receive(timeout=30)
        except Exception:  # noqa: BLE001 - the end of the connection is what is waited for
            pass
        await asyncio.wait_for(serving, 30)
        return client

    caplog.set_level(logging.INFO)
    try:
        client = asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        StuckHost.release.set()
    for job_id in ("running", "queued"):
        ends = client.ends_of(job_id)
        assert [(e["type"], e["reason"]) for e in ends] == [("cancelled", "shutdown")], client.received
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("model is still loading" in w for w in warnings), warnings
    assert any("job" in w and "not waiting" in w for w in warnings), warnings
