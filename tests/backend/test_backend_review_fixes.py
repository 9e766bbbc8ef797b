"""Regression tests for bugs found in review of the backend (server, scheduler, engine host)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect

from backend.config import ServerConfig
from backend.engine_host import EngineHost
from backend.loading.files import read_tensors
from backend.model_store import ModelError
from backend.scheduler import QueueFullError, ScheduledJob, Scheduler
from backend.server import Server
from protocol import (
    PROTOCOL_VERSION,
    ControlParam,
    Error,
    ImageEncoding,
    ImageFrame,
    JobParams,
    ModelList,
    Result,
    encode_frame,
)
from tests.backend.server_harness import RunningServer, run, running_server
from tests.backend.test_scheduler import GatedWork, Recorder, settle
from tests.fixtures.tiny_models import TinyModels
from tests.protocol_client import Client

pytestmark = pytest.mark.slow


def painting(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    image[..., 3] = 255
    return image


def test_a_control_may_use_the_canvas_slot_as_its_image(
    server: RunningServer, tiny_models: TinyModels
) -> None:
    """`controls[].image` names any of the job's image slots, the canvas included (the protocol accepts it);
    the server used to take the canvas out of the control images, so the job failed."""

    async def scenario() -> None:
        client = await Client.connect(server.url)
        control = ControlParam("scribble", tiny_models.controlnet_scribble, 1.0, image="canvas")
        params = JobParams(checkpoint=tiny_models.checkpoint, steps=2, strength=0.6, controls=[control])
        reply = await client.run(painting(32, 32, 1), params)
        assert isinstance(reply.final, Result), reply.final
        assert reply.image is not None and reply.image.shape == (32, 32, 4)
        await client.close()

    run(scenario())


@contextmanager
def manager_busy(server: RunningServer) -> Iterator[None]:
    """Holds the model manager's lock from another thread, as the worker does while it loads a checkpoint."""
    manager = server.server.engine._manager
    assert manager is not None, "the engine has not loaded its models"
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with manager._lock:
            held.set()
            release.wait(20)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(5)
    try:
        yield
    finally:
        release.set()
        thread.join(10)


def test_handshakes_and_model_lists_are_answered_while_a_checkpoint_loads(
    server: RunningServer, tiny_models: TinyModels
) -> None:
    async def wait_ready() -> None:
        client = await Client.connect(server.url)
        await client.run(painting(16, 16), JobParams(checkpoint=tiny_models.checkpoint, strength=0.0))
        await client.close()

    run(wait_ready())
    assert server.call(lambda: server.server.engine.ready)

    async def scenario() -> None:
        client = await asyncio.wait_for(Client.connect(server.url), 3)
        assert (
            client.welcome is not None and client.welcome.loaded.get("checkpoint") == tiny_models.checkpoint
        )
        await client.socket.send(json.dumps({"type": "list_models"}))
        listing = await asyncio.wait_for(client.receive(), 3)
        assert isinstance(listing, ModelList)
        await client.close()

    with manager_busy(server):
        run(scenario(), timeout=8)


def test_a_live_frame_refused_for_a_full_queue_does_not_cancel_the_running_one() -> None:
    async def scenario() -> None:
        work = GatedWork(steps=1)
        scheduler: Scheduler[str] = Scheduler(work, max_queued_per_client=2)
        recorder = Recorder()
        scheduler.register(1, recorder)
        scheduler.start()
        scheduler.submit(ScheduledJob(1, "live-1", True, "live-1"))
        await settle(lambda: scheduler.running is not None)
        scheduler.submit(ScheduledJob(1, "gen-1", False, "gen-1"))
        scheduler.submit(ScheduledJob(1, "gen-2", False, "gen-2"))
        with pytest.raises(QueueFullError):
            scheduler.submit(ScheduledJob(1, "live-2", True, "live-2"))
        running = scheduler.running
        assert running is not None and not running.cancel_flag.is_set()
        for _ in range(3):
            work.gate.release()
        await settle(lambda: len([e for e in recorder.events if e[0] != "progress"]) == 3)
        outcomes: list[tuple[str, str, Any]] = [e for e in recorder.events if e[0] != "progress"]
        assert [(kind, job_id) for kind, job_id, _ in outcomes] == [
            ("done", "live-1"),
            ("done", "gen-1"),
            ("done", "gen-2"),
        ]
        await scheduler.stop()

    asyncio.run(scenario())


def test_a_broken_default_checkpoint_does_not_mark_the_engine_failed(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    """Preloading the default checkpoint is a convenience: when that file is damaged the engine still works
    (other checkpoints load, jobs get a model error naming the file), so the handshake must not say the
    engine failed to start."""
    root = tmp_path / "models"
    shutil.copytree(tiny_models.root, root)
    (root / "checkpoints" / "aaa-broken.safetensors").write_bytes(b"not a safetensors file")

    async def scenario(url: str, server: RunningServer) -> None:
        await settle(lambda: server.call(lambda: server.server.engine._loaded.is_set()), timeout=60)
        client = await Client.connect(url)
        assert client.welcome is not None and client.welcome.ready, client.welcome
        assert "failed to start" not in client.welcome.message
        broken = await client.run(painting(16, 16), JobParams(steps=1))
        assert isinstance(broken.final, Error) and broken.final.code == "model_error"
        assert "aaa-broken.safetensors" in broken.final.message
        good = await client.run(painting(16, 16), JobParams(checkpoint=tiny_models.checkpoint, steps=1))
        assert isinstance(good.final, Result)
        await client.close()

    with running_server(root, model_config_dir=tiny_models.config_dir) as server:
        run(scenario(server.url, server))


def test_a_port_in_use_fails_before_the_engine_starts_loading(tmp_path: Path) -> None:
    """`python -m backend` on a busy port (usually: the backend already runs there) must fail at once, not
    first load torch and a checkpoint onto the GPU next to the running instance (and keep the process alive
    until that load ends, since the worker thread is joined at exit)."""

    class RecordingHost(EngineHost):
        loads = 0

        def start_loading(self, scheduler: Scheduler[Any]) -> None:
            RecordingHost.loads += 1

    async def scenario() -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            config = ServerConfig(port=busy.getsockname()[1], models_dir=tmp_path / "models")
            server = Server(config, RecordingHost(config))
            with pytest.raises(OSError):
                await server.start()
            assert RecordingHost.loads == 0
            assert server.scheduler._task is None
            await server.close()

    asyncio.run(scenario())


def test_an_unreadable_frame_ends_the_job_it_was_sent_for(tmp_path: Path) -> None:
    """A frame that fails its own checks (truncated, wrong magic) arrives while its job waits for it: the
    error must name that job, or the client waits forever for a job the server silently keeps pending."""
    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "model.safetensors").write_bytes(b"")
    job = {
        "type": "job",
        "job_id": "j",
        "images": [{"slot": "canvas", "encoding": "bgra8", "width": 2, "height": 2}],
    }
    short = encode_frame(ImageFrame("j", "canvas", ImageEncoding.BGRA8, 2, 2, bytes(16)))[:-3]
    good = encode_frame(ImageFrame("j2", "canvas", ImageEncoding.BGRA8, 2, 2, bytes(16)))

    async def scenario(url: str) -> None:
        async with connect(url) as socket:
            await socket.send(json.dumps({"type": "hello", "protocol_version": PROTOCOL_VERSION}))
            json.loads(await socket.recv())
            await socket.send(json.dumps(job))
            await socket.send(short)
            error = json.loads(await socket.recv())
            assert error["type"] == "error" and error["code"] == "bad_frame" and error["job_id"] == "j"
            # the connection keeps serving, and the dropped job's id can be used again
            await socket.send(json.dumps({**job, "job_id": "j2", "params": {"strength": 0.0}}))
            await socket.send(good)
            replies = [json.loads(await socket.recv()) for _ in range(2)]
            assert [r["type"] for r in replies] == ["accepted", "result"], replies

    with running_server(root, preload=False) as server:
        run(scenario(server.url), timeout=60)


def test_a_damaged_taesd_file_does_not_break_live_frames(tiny_models: TinyModels, tmp_path: Path) -> None:
    """TAESD is an optional speed-up for previews: when its files can't be read, live frames decode with the
    checkpoint's VAE instead of every live frame failing with a model error."""
    root = tmp_path / "models"
    shutil.copytree(tiny_models.root, root)
    (root / "vae_approx" / tiny_models.taesd_decoder).write_bytes(b"truncated download")

    async def scenario(url: str) -> None:
        client = await Client.connect(url)
        params = JobParams(checkpoint=tiny_models.checkpoint, steps=2, strength=0.6)
        for _ in range(2):
            live = await client.run(painting(32, 32, 2), params, live=True)
            assert isinstance(live.final, Result), live.final
            assert live.final.params["decoder"] == "vae"
            params = JobParams(checkpoint=tiny_models.checkpoint, steps=2, strength=0.7)
        await client.close()

    with running_server(root, model_config_dir=tiny_models.config_dir) as server:
        run(scenario(server.url))


@pytest.mark.parametrize("content", [b"truncated download", b"hello world this is text"])
@pytest.mark.parametrize("suffix", [".ckpt", ".pth"])
def test_a_damaged_pickle_file_is_a_model_error(tmp_path: Path, content: bytes, suffix: str) -> None:
    """torch.load raises IndexError/KeyError on some garbage: those must become the painter-readable model
    error, not an internal one."""
    path = tmp_path / f"damaged{suffix}"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="not a readable PyTorch file"):
        read_tensors(path, "Checkpoint")


def test_the_live_cache_does_not_answer_for_another_default_checkpoint(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    """A live frame naming no checkpoint ("backend default", the plugin's default) is answered from the last
    result only while the default is still the same checkpoint: after a new checkpoint becomes the default,
    the same canvas must be rendered with it."""
    root = tmp_path / "models"
    shutil.copytree(tiny_models.root, root)

    async def scenario(url: str) -> None:
        client = await Client.connect(url)
        image = painting(24, 24, 3)
        params = JobParams(steps=1, strength=0.5)
        first = await client.run(image, params, live=True)
        assert isinstance(first.final, Result), first.final
        assert first.final.params["checkpoint"] != "aaa-new.safetensors"
        shutil.copy(
            root / "checkpoints" / tiny_models.checkpoint, root / "checkpoints" / "aaa-new.safetensors"
        )
        second = await client.run(image, params, live=True)
        assert isinstance(second.final, Result), second.final
        assert second.final.params["checkpoint"] == "aaa-new.safetensors"
        await client.close()

    with running_server(root, model_config_dir=tiny_models.config_dir, preload=False) as server:
        run(scenario(server.url))


def test_size_limits_on_the_command_line_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    from backend.cli import build_parser

    for flag in ("--max-size", "--max-message-mb"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([flag, "0"])
        assert "must be at least 1" in capsys.readouterr().err
    assert build_parser().parse_args(["--max-size", "2048"]).max_size == 2048
