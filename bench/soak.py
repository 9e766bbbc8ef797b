#!/usr/bin/env python3
"""Soak: the backend under many flooding clients and one that never reads, on loopback, bounded in time.

Starts `python -m backend` in a subprocess (tiny models written to a temporary folder, CPU, unless
--models-dir is given), then:
  idle    a well-behaved client's live jobs, one at a time: its latency with no one else there
  load    --clients clients each send a new live frame every --frame-interval seconds (latest-wins, reading
          every reply) plus one client that sends live jobs and, after its first result, never reads, for
          --duration seconds; the well-behaved client keeps measuring its latency meanwhile
  after   the clients leave; the server's memory a few seconds later

The server's RSS (from /proc, Linux) is sampled every second throughout. Nothing here asserts: it prints JSON
lines, one per RSS sample ({"name": "rss", "t_s", "phase", "rss_mib"}) and then {"name": "latency/idle" |
"latency/load", "p50_ms", "p95_ms", "runs"}, {"name": "flood", ...counts}, {"name": "never_reader",
"slowed_after_s", "dropped", "close", "server_log"}, {"name": "rss/summary", "start_mib", "max_mib",
"end_mib"}, "_env", "_done".

    PYTHONPATH=. .venv/bin/python bench/soak.py --quick          # 5 clients for 15 s: a smoke test, ~1 min
    PYTHONPATH=. .venv/bin/python bench/soak.py                  # 50 clients for 10 minutes
    PYTHONPATH=. .venv/bin/python bench/soak.py --clients 50 --seconds 600 --token-users   # the painter is
                                                  # another user by its access token, all on 127.0.0.1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.protocol import State  # noqa: E402

from protocol import PROTOCOL_VERSION, ImageEncoding, ImageFrame, encode_frame  # noqa: E402

MIB = 1024 * 1024
# --token-users: the server is given both; the flood and the never-reader present one, the painter the other.
FLOOD_TOKEN = "soak-flood"
PAINTER_TOKEN = "soak-painter"


def emit(line: dict[str, Any], out: Any | None = None) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out is not None:
        out.write(text + "\n")
        out.flush()


# --- the server ---------------------------------------------------------------------------------------------


class ServerProcess:
    """`python -m backend` on a free loopback port; its log is drained by a thread so it never blocks."""

    def __init__(self, args: argparse.Namespace, models: Path, config_dir: Path | None) -> None:
        caps = str(args.clients + 4)  # the flood itself must not hit the connection caps
        command = [
            sys.executable, "-m", "backend", "--port", "0", "--device", args.device, "--accelerate", "off",
            "--models-dir", str(models), "--max-connections", caps, "--max-connections-per-address", caps,
            "--max-unread-mb", str(args.max_unread_mb), "--unread-timeout", str(args.unread_timeout),
        ]  # fmt: skip
        if config_dir is not None:
            command += ["--model-config", str(config_dir)]
        if args.token_users:
            command += ["--token", FLOOD_TOKEN, "--token", PAINTER_TOKEN]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.log: list[str] = []
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            found = re.search(r"listening on ws://[^:]+:(\d+)", line)
            if found:
                self.url = f"ws://127.0.0.1:{found.group(1)}"
                break
        else:
            raise RuntimeError("the server did not start:\n" + "".join(self.log[-20:]))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def rss_mib(self) -> float | None:
        try:
            with open(f"/proc/{self.process.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


# --- clients ----------------------------------------------------------------------------------------------


def canvas(side: int, seed: int) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 256, (side, side, 4), dtype=np.uint8)
    image[..., 3] = 255
    return image


def job(job_id: str, side: int, checkpoint: str | None) -> str:
    return json.dumps(
        {
            "type": "job", "job_id": job_id, "live": True, "result_encoding": "rgba8",
            "params": {"checkpoint": checkpoint, "steps": 2, "strength": 0.5, "prompt": "a castle"},
            "images": [{"slot": "canvas", "encoding": "rgba8", "width": side, "height": side}],
        }
    )  # fmt: skip


def frame(job_id: str, image: np.ndarray) -> bytes:
    height, width = image.shape[:2]
    return encode_frame(ImageFrame(job_id, "canvas", ImageEncoding.RGBA8, width, height, image.tobytes()))


async def hello(url: str, token: str | None = None, **options: Any) -> ClientConnection:
    if token is not None:
        options["additional_headers"] = {"Authorization": f"Bearer {token}"}
    # No keepalive pings of the client's own: a client that doesn't read (the never-reader, or a flooder
    # starved of CPU) would time its own connection out, and the run would show that instead of the server.
    socket = await connect(url, max_size=None, compression=None, ping_interval=None, **options)
    await socket.send(json.dumps({"type": "hello", "protocol_version": PROTOCOL_VERSION, "client": "soak"}))
    welcome = json.loads(await socket.recv())
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"no welcome: {welcome}")
    return socket


async def timed_jobs(
    url: str,
    side: int,
    checkpoint: str | None,
    until: float,
    pause: float,
    prefix: str,
    address: str,
    token: str | None = None,
) -> list[float]:
    """The well-behaved painter: one live job at a time, each timed from sending to its result frame.
    `address`: the loopback address it connects from, `token`: the access token it presents (the server
    takes turns by token where it has tokens, else by address)."""
    latencies: list[float] = []
    socket = await hello(url, token, local_addr=(address, 0))
    try:
        n = 0
        while n == 0 or time.monotonic() < until:  # at least one: the warm-up job must load the model
            n += 1
            job_id = f"{prefix}-{n}"
            started = time.perf_counter()
            await socket.send(job(job_id, side, checkpoint))
            await socket.send(frame(job_id, canvas(side, n)))
            while True:
                data = await socket.recv()
                if isinstance(data, bytes):
                    latencies.append((time.perf_counter() - started) * 1000)
                    break
                message = json.loads(data)
                if message.get("type") in ("error", "cancelled") and message.get("job_id") == job_id:
                    break
            await asyncio.sleep(pause)
    finally:
        await socket.close()
    return latencies


@dataclass
class FloodCounts:
    frames_sent: int = 0
    results: int = 0
    cancelled: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    refused_connections: int = 0
    closed_by_server: int = 0
    closes: dict[str, int] = field(default_factory=dict)  # close code and reason -> how many


async def flooder(
    url: str,
    index: int,
    side: int,
    checkpoint: str | None,
    until: float,
    interval: float,
    counts: FloodCounts,
    token: str | None = None,
) -> None:
    """A painter's plugin at its most eager: a new live frame every `interval`, reading every reply."""
    try:
        socket = await hello(url, token)
    except Exception:  # noqa: BLE001 - a refused connection is a result here, not a failure
        counts.refused_connections += 1
        return

    async def read() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for data in socket:
                if isinstance(data, bytes):
                    counts.results += 1
                    continue
                message = json.loads(data)
                if message["type"] == "cancelled":
                    counts.cancelled += 1
                elif message["type"] == "error":
                    counts.errors[message["code"]] = counts.errors.get(message["code"], 0) + 1

    reader = asyncio.create_task(read())
    image = canvas(side, 1000 + index)
    try:
        n = 0
        while time.monotonic() < until:
            n += 1
            image[n % side, :, :3] ^= 0xFF  # another stroke: never the same canvas twice
            await socket.send(job(f"f{index}-{n}", side, checkpoint))
            await socket.send(frame(f"f{index}-{n}", image))
            counts.frames_sent += 1
            await asyncio.sleep(interval)
    except ConnectionClosed as closed:
        counts.closed_by_server += 1
        why = f"{closed.rcvd.code} {closed.rcvd.reason}" if closed.rcvd else "no close frame"
        counts.closes[why] = counts.closes.get(why, 0) + 1
    finally:
        await socket.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def never_reader(
    url: str, side: int, checkpoint: str | None, until: float, token: str | None = None
) -> dict[str, Any]:
    """Sends the same live job again and again (once the first has run, the copies are answered from the
    server's live cache without GPU work: the cheapest way to make the server produce replies) and never
    reads one after the first job's result."""
    socket = await hello(url, token, max_queue=1)
    started = time.monotonic()
    image = canvas(side, 7)
    sent = 1
    report: dict[str, Any] = {"name": "never_reader", "canvas": side, "dropped": False, "close": None}
    try:
        await socket.send(job("n-1", side, checkpoint))
        await socket.send(frame("n-1", image))
        # Its result read (however long the flood makes it take): the server's live cache now holds it, and
        # every copy sent from here on is answered at once. Nothing is read after this.
        async with asyncio.timeout(max(1.0, until - time.monotonic())):
            while not isinstance(await socket.recv(), bytes):
                pass
        report["first_result_s"] = round(time.monotonic() - started, 1)
        while time.monotonic() < until and socket.state is State.OPEN:
            sent += 1
            await asyncio.wait_for(socket.send(job(f"n-{sent}", side, checkpoint)), 2)
            await asyncio.wait_for(socket.send(frame(f"n-{sent}", image)), 2)
            await asyncio.sleep(0.01)
    except TimeoutError:
        # A send that doesn't finish: the server stopped reading this client (backpressure).
        report["slowed_after_s"] = round(time.monotonic() - started, 1)
    except ConnectionClosed:
        pass
    report["jobs_sent"] = sent
    await asyncio.sleep(max(0.0, until - time.monotonic()))  # still not reading, until the load ends
    # Reading at last: what is left unread, then the end of the connection if the server dropped it.
    try:
        async with asyncio.timeout(10):
            while True:
                await socket.recv()
    except ConnectionClosed as closed:
        report["dropped"] = True
        report["close"] = [closed.rcvd.code, closed.rcvd.reason] if closed.rcvd else None
    except TimeoutError:
        pass  # still connected
    with contextlib.suppress(Exception):
        await socket.close()
    return report


# --- the run ----------------------------------------------------------------------------------------------


def percentiles(name: str, values: list[float]) -> dict[str, Any]:
    if not values:
        return {"name": name, "runs": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "name": name,
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(p95, 1),
        "runs": len(values),
    }


async def soak(args: argparse.Namespace, server: ServerProcess, checkpoint: str | None, out: Any) -> None:
    phase = "idle"
    samples: list[float] = []
    started = time.monotonic()

    async def sample_rss() -> None:
        while True:
            rss = server.rss_mib()
            if rss is not None:
                samples.append(rss)
            emit(
                {"name": "rss", "t_s": round(time.monotonic() - started), "phase": phase, "rss_mib": rss}, out
            )
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample_rss())
    # A first job loads the model, so the idle latencies don't include the load.
    painter = args.painter_address
    painter_token, flood_token = (PAINTER_TOKEN, FLOOD_TOKEN) if args.token_users else (None, None)
    warm_until = time.monotonic() + 0.1
    await timed_jobs(server.url, args.canvas, checkpoint, warm_until, 0, "warm", painter, painter_token)
    idle_until = time.monotonic() + args.idle
    idle = await timed_jobs(
        server.url, args.canvas, checkpoint, idle_until, 0.2, "idle", painter, painter_token
    )
    start_rss = server.rss_mib()

    phase = "load"
    until = time.monotonic() + args.duration
    counts = FloodCounts()
    flood = [
        asyncio.create_task(
            flooder(server.url, i, args.canvas, checkpoint, until, args.frame_interval, counts, flood_token)
        )
        for i in range(args.clients)
    ]
    ignoring = asyncio.create_task(
        never_reader(server.url, args.never_reader_canvas, checkpoint, until, flood_token)
    )
    loaded = await timed_jobs(server.url, args.canvas, checkpoint, until, 0.2, "load", painter, painter_token)
    await asyncio.gather(*flood)
    never = await ignoring
    never["server_log"] = next((line.strip() for line in server.log if "dropped:" in line), None)

    phase = "after"
    await asyncio.sleep(args.settle)
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    emit(percentiles("latency/idle", idle), out)
    emit(percentiles("latency/load", loaded), out)
    emit({"name": "flood", "clients": args.clients, **counts.__dict__}, out)
    emit(never, out)
    emit(
        {
            "name": "rss/summary",
            "start_mib": round(start_rss, 1) if start_rss else None,
            "max_mib": round(max(samples), 1) if samples else None,
            "end_mib": round(samples[-1], 1) if samples else None,
            "server_alive": server.process.poll() is None,
            "server_warnings": sum("WARNING" in line for line in server.log),
            # Other work on the machine shows in the latencies: the load it had over the last 15 minutes.
            "loadavg_15min": round(os.getloadavg()[2], 1) if hasattr(os, "getloadavg") else None,
        },
        out,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 clients for 15 s, 2 MiB unread for 3 s: a smoke test"
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument(
        "--duration", "--seconds", type=float, default=600.0, help="seconds of load (at most 3600)"
    )
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle latency measurement")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds after the load before the last RSS"
    )
    parser.add_argument(
        "--frame-interval", type=float, default=0.05, help="seconds between a flooder's frames"
    )
    parser.add_argument(
        "--canvas", type=int, default=128, help="side of the live canvases (tiny models: 128)"
    )
    parser.add_argument("--never-reader-canvas", type=int, default=128)
    parser.add_argument("--max-unread-mb", type=int, default=64, help="passed to the server")
    parser.add_argument("--unread-timeout", type=float, default=30.0, help="passed to the server")
    parser.add_argument(
        "--painter-address",
        default="127.0.0.1",
        help="loopback address the well-behaved client connects from; the flood comes from 127.0.0.1, so "
        "127.0.0.2 makes the painter another user (default: 127.0.0.1, the same user as the flood)",
    )
    parser.add_argument(
        "--token-users",
        action="store_true",
        help="start the server with two access tokens: the flood and the never-reader present one, the "
        "painter the other, so the painter is another user (the server takes turns by token) on 127.0.0.1",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models-dir", type=Path, default=None, help="real models (default: tiny ones)")
    parser.add_argument("--checkpoint", default=None, help="with --models-dir: the checkpoint to use")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON lines here too")
    parser.add_argument(
        "--server-log", type=Path, default=None, help="write the server's log here at the end"
    )
    args = parser.parse_args()
    if args.quick:
        args.clients, args.duration, args.idle, args.settle = 5, 15.0, 5.0, 3.0
        args.max_unread_mb, args.unread_timeout = 2, 3.0  # the never-reader is dropped within the run
    args.clients = max(1, min(args.clients, 200))
    args.duration = max(1.0, min(args.duration, 3600.0))

    out = open(args.out, "w") if args.out else None
    with tempfile.TemporaryDirectory() as scratch:
        if args.models_dir is None:
            from tests.fixtures.tiny_models import build_tiny_models

            tiny = build_tiny_models(Path(scratch) / "models")
            models, config_dir, checkpoint = tiny.root, tiny.config_dir, tiny.checkpoint
        else:
            models, config_dir, checkpoint = args.models_dir, None, args.checkpoint
        server = ServerProcess(args, models, config_dir)
        try:
            emit({"name": "_env", "clients": args.clients, "duration_s": args.duration, "device": args.device,
                  "tiny_models": args.models_dir is None, "cpus": os.cpu_count(),
                  "token_users": args.token_users, "painter_address": args.painter_address}, out)  # fmt: skip
            asyncio.run(soak(args, server, checkpoint, out))
        finally:
            server.stop()
            if args.server_log is not None:
                args.server_log.write_text("".join(server.log))
    emit({"name": "_done"}, out)
    if out is not None:
        out.close()


if __name__ == "__main__":
    main()
