"""Memory stays bounded by configuration whatever clients do: unread replies, pre-hello messages, connection
counts and queued images. Real server, real WebSocket; the engine is replaced where only its output size
matters (a big result at once, or a job that holds the worker until the test lets it go)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from backend.config import ServerConfig
from backend.engine import EngineJob, EngineResult
from backend.engine_worker import EngineWorker
from protocol import PROTOCOL_VERSION, Limits
from tests.backend.fake_headers import sd15_checkpoint, write_safetensors
from tests.backend.hardening_client import RawClient, canvas_frame, job_message
from tests.backend.server_harness import RunningServer, run, running_server

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


@pytest.fixture
def named_models(tmp_path: Path) -> Path:
    """A checkpoint name that resolves; these engines never open it."""
    root = tmp_path / "models"
    write_safetensors(root / "checkpoints" / "model.safetensors", sd15_checkpoint())  # a header, no weights
    return root


class BigResultWorker(EngineWorker):
    """Answers every job at once with a large result: what the unread-reply limits are about."""

    side = 2048
    runs = 0  # jobs run, by all instances (one worker thread: no lock needed)

    def run(
        self, job: EngineJob, on_progress: Callable[[int, int], None], is_cancelled: Callable[[], bool]
    ) -> EngineResult:
        BigResultWorker.runs += 1
        image = np.zeros((self.side, self.side, 4), dtype=np.uint8)
        return EngineResult(image, (0, 0, self.side, self.side), {}, {})


class GateWorker(EngineWorker):
    """Holds the worker on each job until the test opens the gate, then returns the canvas."""

    gate = threading.Event()

    def run(
        self, job: EngineJob, on_progress: Callable[[int, int], None], is_cancelled: Callable[[], bool]
    ) -> EngineResult:
        self.gate.wait(60)
        height, width = job.canvas.shape[:2]
        return EngineResult(job.canvas, (0, 0, width, height), {}, {})


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def connections(server: RunningServer) -> list[Any]:
    return server.call(lambda: list(server.server.connections))


def unread(server: RunningServer) -> int:
    return server.call(lambda: max((c.outbox.size for c in server.server.connections), default=0))


# --- replies a client doesn't read ------------------------------------------------------------------------


UNREAD_LIMITS = Limits(max_width=2048, max_height=2048, max_unread_bytes=4 * MIB, max_upscale_side=2048)


def test_a_client_that_sends_jobs_and_never_reads_is_disconnected_and_its_replies_freed(
    named_models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each job is answered with 16 MiB; unbounded, 40 of them would hold 640 MiB in the server."""
    jobs = 40
    config: dict[str, Any] = {"limits": UNREAD_LIMITS, "unread_timeout_s": 2.0, "preload": False}
    hard_limit = replace(ServerConfig(), **config).max_unread_hard_bytes  # 4 MiB + 2 results of 16 MiB
    before = rss_bytes()

    async def scenario(server: RunningServer) -> tuple[int, int | None]:
        # max_queue=1: the client library itself reads at most one message ahead.
        socket = await connect(server.url, max_size=None, max_queue=1, compression=None)
        await socket.send(json.dumps({"type": "hello", "protocol_version": PROTOCOL_VERSION}))
        await socket.recv()
        params = {"checkpoint": "model.safetensors"}

        async def flood() -> None:
            for i in range(jobs):
                await socket.send(json.dumps(job_message(f"j{i}", 8, 8, params=params)))
                await socket.send(canvas_frame(f"j{i}", 8, 8))

        sender = asyncio.create_task(flood())
        peak_unread, peak_rss = 0, before
        deadline = time.monotonic() + 60
        while connections(server) and time.monotonic() < deadline:
            peak_unread = max(peak_unread, unread(server))
            now = rss_bytes()
            peak_rss = max(peak_rss, now) if now is not None and peak_rss is not None else None
            await asyncio.sleep(0.05)
        assert not connections(server), "the client that never reads is still connected after 60 s"
        sender.cancel()
        with contextlib.suppress(ConnectionClosed, asyncio.CancelledError):
            await sender
        # The client, reading at last, finds the connection closed (with the reason, if the close frame got
        # out before the socket was cut).
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await socket.recv()
        if closed.value.rcvd is not None:
            assert closed.value.rcvd.code == 1008 and "not reading" in closed.value.rcvd.reason
        return peak_unread, peak_rss

    with running_server(named_models, engine_factory=BigResultWorker, **config) as server:
        peak_unread, peak_rss = run(scenario(server), timeout=120)
    assert peak_unread <= hard_limit + 16 * MIB  # at most one reply past the hard cap, and only briefly
    assert any("not reading replies" in record.getMessage() for record in caplog.records)
    if before is not None and peak_rss is not None:
        assert peak_rss - before < 250 * MIB, f"{(peak_rss - before) / MIB:.0f} MiB"


def test_a_client_that_reads_late_is_slowed_down_not_dropped(named_models: Path) -> None:
    """Over the unread limit the server stops taking in the client's messages, and resumes once it reads."""

    async def scenario(server: RunningServer) -> None:
        socket = await connect(server.url, max_size=None, max_queue=1, compression=None)
        await socket.send(json.dumps({"type": "hello", "protocol_version": PROTOCOL_VERSION}))
        await socket.recv()
        params = {"checkpoint": "model.safetensors"}
        runs_before = BigResultWorker.runs
        for job_id in ("a", "b"):  # 32 MiB of replies: over the 4 MiB limit, under the hard cap
            await socket.send(json.dumps(job_message(job_id, 8, 8, params=params)))
            await socket.send(canvas_frame(job_id, 8, 8))
        async with asyncio.timeout(30):
            while unread(server) <= 4 * MIB:
                await asyncio.sleep(0.05)
        await socket.send(json.dumps(job_message("late", 8, 8, params=params)))
        await socket.send(canvas_frame("late", 8, 8))
        await asyncio.sleep(1.0)
        (connection,) = connections(server)
        # Reading pauses between messages: the job's JSON may have been read, its frame is left unread.
        assert BigResultWorker.runs == runs_before + 2, "a job of a client with 16+ MiB unread was run"
        taken_in = server.call(lambda: connection.pending is not None and bool(connection.pending.frames))
        assert not taken_in, "the server kept taking in messages from a client with 16+ MiB unread"

        results: list[str] = []
        async with asyncio.timeout(30):
            while len(results) < 3:
                data = await socket.recv()
                if isinstance(data, str) and json.loads(data)["type"] == "result":
                    results.append(json.loads(data)["job_id"])
        assert results == ["a", "b", "late"]
        await socket.close()

    config: dict[str, Any] = {"limits": UNREAD_LIMITS, "unread_timeout_s": 20.0, "preload": False}
    with running_server(named_models, engine_factory=BigResultWorker, **config) as server:
        run(scenario(server), timeout=120)


# --- before the hello -------------------------------------------------------------------------------------


def test_before_the_hello_only_small_text_messages_are_read(named_models: Path) -> None:
    async def scenario(url: str) -> None:
        big_hello = json.dumps(
            {"type": "hello", "protocol_version": PROTOCOL_VERSION, "client": "x" * 100_000}
        )
        for first in (big_hello, b"\0" * 100_000):
            async with connect(url, max_size=None) as socket:
                await socket.send(first)
                with pytest.raises(ConnectionClosed) as closed:
                    await socket.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big

        async with connect(url, max_size=None) as socket:  # a hello, but as a binary message
            await socket.send(json.dumps({"type": "hello", "protocol_version": PROTOCOL_VERSION}).encode())
            error = json.loads(await socket.recv())
            assert (error["type"], error["code"]) == ("error", "bad_message")
            with pytest.raises(ConnectionClosed):
                await socket.recv()

        # After the welcome the full limit applies: a 1 MiB canvas is taken in.
        client = await RawClient.connect(url)
        assert client.received[0]["limits"]["max_hello_message_bytes"] == 64 * 1024  # type: ignore[index]
        await client.send_job("big", 512, 512, params={"checkpoint": "model.safetensors"})
        await client.until_ended({"big"})
        assert client.ends_of("big")[0]["type"] == "result"
        await client.close()

    GateWorker.gate.set()
    with running_server(named_models, engine_factory=GateWorker, preload=False) as server:
        run(scenario(server.url))


# --- connection caps ------------------------------------------------------------------------------------


def test_connections_are_capped_in_all_and_per_address(named_models: Path) -> None:
    async def scenario(url: str) -> None:
        async def open_from(address: str) -> RawClient:
            socket = await connect(url, local_addr=(address, 0))
            client = RawClient(socket)
            await client.send_json({"type": "hello", "protocol_version": PROTOCOL_VERSION})
            assert (await client.receive())["type"] == "welcome"  # type: ignore[index]
            return client

        first = await open_from("127.0.0.1")
        await open_from("127.0.0.1")
        with pytest.raises(InvalidStatus) as refused:
            await open_from("127.0.0.1")  # a third from one address
        assert refused.value.response.status_code == 503
        assert b"per address" in refused.value.response.body
        await open_from("127.0.0.2")
        with pytest.raises(InvalidStatus) as refused:
            await open_from("127.0.0.3")  # a fourth in all
        assert refused.value.response.status_code == 503
        await first.close()
        async with asyncio.timeout(10):  # a closed connection frees its place
            while True:
                try:
                    await open_from("127.0.0.1")
                    break
                except InvalidStatus:
                    await asyncio.sleep(0.1)

    with running_server(named_models, preload=False, max_connections=3, max_connections_per_address=2) as s:
        run(scenario(s.url))


# --- queued images ----------------------------------------------------------------------------------------


def test_queued_images_are_budgeted_per_connection_and_in_all(named_models: Path) -> None:
    """512x512 RGBA is 1 MiB decoded: 1 MiB per connection, 3 MiB in all."""
    params = {"checkpoint": "model.safetensors"}

    async def first_reply(client: RawClient, job_id: str, side: int, **fields: Any) -> dict[str, Any]:
        await client.send_job(job_id, side, side, params=params, **fields)
        while True:
            item = await client.receive()
            if isinstance(item, dict) and item.get("job_id") == job_id:
                return item

    async def scenario(url: str) -> None:
        a, b, c, d = [await RawClient.connect(url) for _ in range(4)]
        assert a.received[0]["limits"]["max_queued_image_bytes"] == MIB  # type: ignore[index]
        assert (await first_reply(a, "a1", 512))["type"] == "accepted"  # runs, held by the gate
        busy = await first_reply(a, "a2", 512)
        assert (busy["code"], busy["job_id"]) == ("busy", "a2"), busy
        too_large = await first_reply(a, "a3", 600)  # 1.4 MiB: never fits one connection's budget
        assert (too_large["code"], too_large["job_id"]) == ("too_large", "a3"), too_large
        assert (await first_reply(b, "b1", 512))["type"] == "accepted"
        # A live job replaces the connection's queued live job: it isn't refused for that one's memory.
        assert (await first_reply(d, "d1", 512, live=True))["type"] == "accepted"
        assert (await first_reply(d, "d2", 512, live=True))["type"] == "accepted"
        assert d.ends_of("d1")[0]["type"] == "cancelled"  # (sent before d2's "accepted")
        assert "d2" not in [m.get("job_id") for m in d.messages("error")]
        everyone = await first_reply(c, "c1", 512)  # 3 MiB held by a1, b1 and d2
        assert (everyone["code"], everyone["job_id"]) == ("busy", "c1"), everyone
        for client in (a, b, c, d):
            assert all(m["code"] != "internal" for m in client.messages("error"))

        GateWorker.gate.set()
        await a.until_ended({"a1"})
        await b.until_ended({"b1"})
        await d.until_ended({"d2"})
        await c.send_job("c2", 512, 512, params=params)  # room again
        await c.until_ended({"c2"})
        assert [m["type"] for m in (*a.ends_of("a1"), *c.ends_of("c2"))] == ["result", "result"]
        for client in (a, b, c, d):
            await client.close()

    GateWorker.gate.clear()
    limits = Limits(max_queued_image_bytes=MIB, max_total_queued_image_bytes=3 * MIB)
    try:
        with running_server(named_models, engine_factory=GateWorker, preload=False, limits=limits) as server:
            run(scenario(server.url))
    finally:
        GateWorker.gate.set()


def test_the_limits_are_set_from_the_command_line() -> None:
    from backend.cli import build_parser, config_from_args

    parser = build_parser()
    help_text = parser.format_help()
    for flag in ("--max-connections", "--max-connections-per-address", "--max-queued-mb", "--max-unread-mb"):
        assert flag in help_text
    args = parser.parse_args(
        "--max-connections 5 --max-connections-per-address 2 --max-queued-mb 100 --max-total-queued-mb 300 "
        "--max-unread-mb 16 --unread-timeout 7".split()
    )
    config = config_from_args(args)
    assert (config.max_connections, config.max_connections_per_address, config.unread_timeout_s) == (
        5,
        2,
        7.0,
    )
    limits = config.limits
    assert limits.max_queued_image_bytes == 100 * MIB and limits.max_total_queued_image_bytes == 300 * MIB
    assert limits.max_unread_bytes == 16 * MIB
    # room for two of the largest results: an upscale's, 8192 x 8192 (protocol/upscale.py)
    assert config.max_unread_hard_bytes == 16 * MIB + 2 * 8192 * 8192 * 4
