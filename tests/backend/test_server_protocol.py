"""The server's start-up, handshake, security and input checking over a real WebSocket (model files are only
named, except where a test serves the tiny models)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from backend.config import ServerConfig
from backend.engine_worker import EngineWorker
from backend.scheduler import Scheduler
from backend.server import Server
from protocol import (
    PROTOCOL_VERSION,
    Error,
    ImageEncoding,
    ImageFrame,
    JobParams,
    Limits,
    LoraParam,
    ModelList,
    Welcome,
    encode_frame,
)
from tests.backend.fake_headers import sd15_checkpoint, write_safetensors
from tests.backend.server_harness import RunningServer, random_canvas, run, running_server
from tests.fixtures.tiny_models import TinyModels
from tests.protocol_client import Client

CANVAS = np.full((8, 8, 4), 200, dtype=np.uint8)


@pytest.fixture
def empty_models(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def named_models(tmp_path: Path) -> Path:
    """A models folder with names in place; nothing here is ever loaded by these tests. The checkpoint's
    header is a real one's (the default checkpoint must look usable), its weights are not."""
    root = tmp_path / "models"
    write_safetensors(root / "checkpoints" / "model.safetensors", sd15_checkpoint())
    (root / "loras").mkdir()
    (tmp_path / "secret.safetensors").write_bytes(b"")
    return root


async def raw_exchange(url: str, *messages: str | bytes, replies: int = 1) -> list[dict]:
    async with connect(url) as socket:
        await socket.send(json.dumps({"type": "hello", "protocol_version": PROTOCOL_VERSION}))
        json.loads(await socket.recv())
        for message in messages:
            await socket.send(message)
        return [json.loads(await socket.recv()) for _ in range(replies)]


def test_handshake_without_models_says_what_to_do(empty_models: Path) -> None:
    async def scenario(url: str) -> None:
        client = await Client.connect(url)
        welcome = client.welcome
        assert isinstance(welcome, Welcome)
        assert welcome.protocol_version == PROTOCOL_VERSION
        assert welcome.models["checkpoints"] == []
        assert "lcm" in welcome.samplers
        assert welcome.limits.max_width == 4096
        assert "No checkpoint found" in welcome.message
        # Named relative to the models folder: a client is not told the server's paths.
        assert "checkpoints/" in welcome.message and str(empty_models) not in welcome.message
        reply = await client.run(CANVAS)
        error = reply.final
        assert isinstance(error, Error) and error.code == "no_model" and error.job_id == reply.job_id
        assert "checkpoints/" in error.message and str(empty_models) not in error.message
        await client.socket.send(json.dumps({"type": "list_models"}))
        listing = await client.receive()
        assert isinstance(listing, ModelList) and listing.models["loras"] == []
        await client.close()

    with running_server(empty_models) as server:
        run(scenario(server.url))


def test_version_mismatch_is_a_clear_error_and_a_close(empty_models: Path) -> None:
    async def scenario(url: str) -> None:
        client = await Client.connect(url, hello=False)
        reply = await client.hello(version=PROTOCOL_VERSION + 1)
        assert isinstance(reply, Error) and reply.code == "version_mismatch"
        assert f"speaks version {PROTOCOL_VERSION}" in reply.message
        with pytest.raises(ConnectionClosed):
            await client.receive()

    with running_server(empty_models) as server:
        run(scenario(server.url))


def test_first_message_must_be_hello(empty_models: Path) -> None:
    async def scenario(url: str) -> None:
        async with connect(url) as socket:
            await socket.send(json.dumps({"type": "list_models"}))
            assert json.loads(await socket.recv())["message"] == "The first message must be a hello."
            with pytest.raises(ConnectionClosed):
                await socket.recv()

    with running_server(empty_models) as server:
        run(scenario(server.url))


def test_token_is_required_when_configured(empty_models: Path) -> None:
    async def scenario(url: str) -> None:
        anonymous = await Client.connect(url, hello=False)
        refused = await anonymous.hello()
        assert isinstance(refused, Error) and refused.code == "unauthorized"
        wrong = await Client.connect(url, hello=False)
        assert isinstance(await wrong.hello(token="guess"), Error)
        with pytest.raises(InvalidStatus) as caught:
            await Client.connect(url, headers={"Authorization": "Bearer guess"})
        assert caught.value.response.status_code == 401
        by_header = await Client.connect(url, headers={"Authorization": "Bearer s3cret"})
        assert isinstance(by_header.welcome, Welcome)
        by_hello = await Client.connect(url, token="s3cret")
        assert isinstance(by_hello.welcome, Welcome)
        await by_header.close()
        await by_hello.close()

    with running_server(empty_models, token="s3cret") as server:
        run(scenario(server.url))


def test_browser_origins_are_refused_unless_allowed(empty_models: Path) -> None:
    async def scenario(url: str) -> None:
        with pytest.raises(InvalidStatus) as caught:
            await Client.connect(url, headers={"Origin": "https://evil.example"})
        assert caught.value.response.status_code == 403
        allowed = await Client.connect(url, headers={"Origin": "http://localhost:3000"})
        assert isinstance(allowed.welcome, Welcome)
        await allowed.close()

    with running_server(empty_models, allowed_origins=("http://localhost:3000",)) as server:
        run(scenario(server.url))


def test_binding_beyond_loopback_needs_a_token() -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "backend", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "KLD_TOKEN": ""},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert refused.returncode == 2
    assert "without an access token" in refused.stderr


BAD_INPUTS: list[tuple[str | bytes, str, str]] = [
    ("{oops", "bad_json", "not valid JSON"),
    ('{"type": "paint"}', "unknown_type", "Unknown message type 'paint'"),
    ('{"type": "job"}', "bad_message", "Missing field 'job_id'"),
    ('{"type": "job", "job_id": "a", "images": [], "params": {"steps": -1}}', "bad_message", "'steps' is -1"),
    ('{"type": "job", "job_id": "a", "params": {"cfg": NaN}}', "bad_json", "NaN"),
    ('{"type": "job", "job_id": "a", "params": {"seed": 1e400}}', "bad_json", "out of range"),
    ('{"type": "cancel", "job_id": "nothing"}', "unknown_job", "No queued or running job"),
    (b"\x00\x01", "bad_frame", "shorter than"),
    (
        encode_frame(ImageFrame("j", "canvas", ImageEncoding.BGRA8, 2, 2, bytes(16))),
        "bad_frame",
        "no pending job",
    ),
    (
        '{"type": "job", "job_id": "a", "images": [{"slot": "canvas", "encoding": "bgra8", "width": 9000, '
        '"height": 9000}]}',
        "too_large",
        "exceeds the server limit",
    ),
]


@pytest.mark.parametrize(("message", "code", "text"), BAD_INPUTS)
def test_bad_input_gets_an_error_and_the_server_keeps_serving(
    named_models: Path, message: str | bytes, code: str, text: str
) -> None:
    async def scenario(url: str) -> None:
        (error,) = await raw_exchange(url, message)
        assert error["type"] == "error" and error["code"] == code, error
        assert text in error["message"]
        follow_up = await raw_exchange(url, json.dumps({"type": "list_models"}))
        assert follow_up[0]["type"] == "models"

    with running_server(named_models, preload=False) as server:
        run(scenario(server.url))


def job_json(**params: object) -> str:
    return json.dumps(
        {
            "type": "job",
            "job_id": "j",
            "params": params,
            "images": [{"slot": "canvas", "encoding": "bgra8", "width": 2, "height": 2}],
        }
    )


@pytest.mark.parametrize(
    ("params", "code", "text"),
    [
        (
            {"checkpoint": "missing.safetensors"},
            "model_not_found",
            "No checkpoint named 'missing.safetensors'",
        ),
        ({"checkpoint": "../secret.safetensors"}, "unsafe_name", ""),
        ({"checkpoint": "/etc/passwd"}, "unsafe_name", ""),
        ({"loras": [{"name": "..\\..\\x.safetensors"}]}, "unsafe_name", ""),
        ({"loras": [{"name": "nope.safetensors"}]}, "model_not_found", "Put SD 1.5 or SDXL LoRA"),
        ({"vae": "nope.safetensors"}, "model_not_found", "No VAE named"),
    ],
)
def test_model_names_are_checked_before_any_work(
    named_models: Path, params: dict[str, object], code: str, text: str
) -> None:
    async def scenario(url: str) -> None:
        (error,) = await raw_exchange(url, job_json(**params))
        assert (error["code"], error["job_id"]) == (code, "j"), error
        assert text in error["message"]

    with running_server(named_models, preload=False) as server:
        run(scenario(server.url))


def test_frames_must_match_their_declaration(named_models: Path) -> None:
    wrong_size = encode_frame(ImageFrame("j", "canvas", ImageEncoding.BGRA8, 3, 2, bytes(24)))
    wrong_slot = encode_frame(ImageFrame("j", "mask", ImageEncoding.GRAY8, 2, 2, bytes(4)))
    short = encode_frame(ImageFrame("j", "canvas", ImageEncoding.BGRA8, 2, 2, bytes(16)))[:-3]

    async def scenario(url: str) -> None:
        (error,) = await raw_exchange(url, job_json(), wrong_size)
        assert error["code"] == "bad_frame" and "declared bgra8 2x2" in error["message"]
        (error,) = await raw_exchange(url, job_json(), wrong_slot)
        assert error["code"] == "bad_frame" and "Unexpected or repeated image slot 'mask'" in error["message"]
        (error,) = await raw_exchange(url, job_json(), short)
        assert (
            error["code"] == "bad_frame" and "declares a 16-byte payload but carries 13" in error["message"]
        )

    with running_server(named_models, preload=False) as server:
        run(scenario(server.url))


def test_oversized_messages_close_only_that_connection(named_models: Path) -> None:
    async def scenario(url: str) -> None:
        async with connect(url, max_size=None) as socket:
            await socket.send(json.dumps({"type": "hello", "protocol_version": PROTOCOL_VERSION}))
            await socket.recv()
            await socket.send(b"\x00" * 300_000)
            with pytest.raises(ConnectionClosed) as caught:
                await socket.recv()
            assert caught.value.rcvd is not None and caught.value.rcvd.code == 1009  # message too big
        client = await Client.connect(url)
        assert isinstance(client.welcome, Welcome)
        await client.close()

    limits = Limits(max_message_bytes=200_000)
    with running_server(named_models, preload=False, limits=limits) as server:
        run(scenario(server.url))


def test_unknown_lora_strength_values_are_rejected_in_protocol_not_engine() -> None:
    params = JobParams(loras=[LoraParam("a.safetensors", 0.5, 0.5)])
    assert params.loras[0].model_strength == 0.5


def test_cancel_while_the_images_are_still_arriving(named_models: Path) -> None:
    frame = encode_frame(ImageFrame("j", "canvas", ImageEncoding.BGRA8, 2, 2, bytes(16)))

    async def scenario(url: str) -> None:
        cancelled, listing = await raw_exchange(
            url, job_json(), json.dumps({"type": "cancel", "job_id": "j"}), frame,
            json.dumps({"type": "list_models"}), replies=2,
        )  # fmt: skip
        assert cancelled == {"type": "cancelled", "job_id": "j", "reason": "cancelled"}
        assert listing["type"] == "models"  # the late frame was dropped quietly, and the job never ran

    with running_server(named_models, preload=False) as server:
        run(scenario(server.url))


@pytest.mark.slow
def test_ctrl_c_during_a_checkpoint_load_exits_within_seconds(tmp_path: Path) -> None:
    """The load can't be interrupted; the server stops serving, waits a few seconds for it, then exits."""
    import signal
    import time

    script = (
        "import time, backend.engine_worker as host\n"
        "host.EngineWorker._load = lambda self: time.sleep(120)  # a huge checkpoint on a slow disk\n"
        "from backend.cli import main\n"
        "raise SystemExit(main(['--port', '0', '--models-dir', r'%s']))\n" % (tmp_path / "models")
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "listening on" in line:
                break
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=30)[1]
        assert process.returncode == 0
        assert time.monotonic() - started < 15
        assert "still loading" in rest
    finally:
        if process.poll() is None:
            process.kill()


@contextmanager
def model_cache_busy(server: RunningServer) -> Iterator[None]:
    """Holds the model cache's lock from another thread, as the worker does while it loads a checkpoint."""
    models = server.server.engine._models
    assert models is not None, "the engine has not loaded its models"
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with models._lock:
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


@pytest.mark.slow
def test_handshakes_and_model_lists_are_answered_while_a_checkpoint_loads(
    server: RunningServer, tiny_models: TinyModels
) -> None:
    async def load_checkpoint() -> None:
        client = await Client.connect(server.url)
        params = JobParams(checkpoint=tiny_models.checkpoint, steps=1, strength=0.5)
        await client.run(random_canvas(16, 16), params)
        await client.close()

    run(load_checkpoint())
    assert server.call(lambda: server.server.engine.ready)
    # Asked while nothing holds the lock, the cache answers and remembers what is loaded.
    assert server.call(lambda: server.server.engine.loaded())["checkpoint"] == tiny_models.checkpoint

    async def scenario() -> None:
        client = await asyncio.wait_for(Client.connect(server.url), 3)
        assert (
            client.welcome is not None and client.welcome.loaded.get("checkpoint") == tiny_models.checkpoint
        )
        await client.socket.send(json.dumps({"type": "list_models"}))
        listing = await asyncio.wait_for(client.receive(), 3)
        assert isinstance(listing, ModelList)
        await client.close()

    with model_cache_busy(server):
        run(scenario(), timeout=8)


@pytest.mark.slow
def test_a_port_in_use_fails_before_the_engine_starts_loading(tmp_path: Path) -> None:
    """`python -m backend` on a busy port (usually: the backend already runs there) must fail at once, not
    first load torch and a checkpoint onto the GPU next to the running instance (and keep the process alive
    until that load ends, since the worker thread is joined at exit)."""

    class RecordingWorker(EngineWorker):
        loads = 0

        def start_loading(self, scheduler: Scheduler[Any]) -> None:
            RecordingWorker.loads += 1

    async def scenario() -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            config = ServerConfig(port=busy.getsockname()[1], models_dir=tmp_path / "models")
            server = Server(config, RecordingWorker(config))
            with pytest.raises(OSError):
                await server.start()
            assert RecordingWorker.loads == 0
            assert server.scheduler._task is None
            await server.close()

    asyncio.run(scenario())


@pytest.mark.slow
def test_an_unreadable_frame_ends_the_job_it_was_sent_for(tmp_path: Path) -> None:
    """A frame that fails its own checks (truncated, wrong magic) arrives while its job waits for it: the
    error must name that job, or the client waits forever for a job the server silently keeps pending."""
    root = tmp_path / "models"
    write_safetensors(root / "checkpoints" / "model.safetensors", sd15_checkpoint())  # a header, no weights
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
