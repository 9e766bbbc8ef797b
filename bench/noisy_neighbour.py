#!/usr/bin/env python3
"""Noisy neighbour: many live painters on one worker, and one user who queues 50 Generate jobs (issue 15).

Starts `python -m backend` in a subprocess (tiny models written to a temporary folder, CPU, unless
--models-dir is given) with a token file of --painters tokens: every painter is a user of its own, although
all connect from 127.0.0.1. Then, in one run and on the same warm server, three phases of --seconds each:

  baseline  --painters - 1 live painters, nobody else
  polite    the same painters, plus one more user (the last token) who clicks Generate again and again: one
            job at a time, the next once the last one's result came
  noisy     the same painters, plus that user queuing --generate-jobs Generate jobs at once over
            --noisy-connections connections, as fast as the server takes them: a `busy` refusal (its
            per-user or per-connection queue full) is answered by waiting its `retry_after` and resending

A live painter works as the plugin does: one frame in flight, the next stroke --pace seconds after the last
result, every frame a new canvas; its latency is from sending the frame to its result's pixels. With turns
by user, a frame waits for at most one job of each other user waiting, so `noisy` should cost the painters
what `polite` does (one Generate per round of turns), however many jobs the noisy user queued; both cost more
than `baseline` by the Generate's share of the worker.

Nothing here asserts. It prints JSON lines: one per painter ({"name": "painter", "user", "<phase>_p50_ms",
"<phase>_p95_ms" for each phase, "noisy_over_baseline_p50"/"_p95", "noisy_over_polite_p50"/"_p95", "frames"
per phase}), `all_painters` (every frame of every painter pooled, the same fields), `polite` and `noisy` (what
that user got: jobs accepted and done, `busy` refusals and their `retry_after` range, its jobs' latency),
`_env`, `_done`.

    PYTHONPATH=. .venv/bin/python bench/noisy_neighbour.py            # 20 users, 3 x 8 s: < 60 s on 2 CPUs
    PYTHONPATH=. .venv/bin/python bench/noisy_neighbour.py --seconds 60 --generate-steps 20   # heavier
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from websockets.asyncio.client import ClientConnection  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from bench.soak import canvas, emit, frame, hello  # noqa: E402
from protocol import decode_frame  # noqa: E402


def job(
    job_id: str, args: argparse.Namespace, checkpoint: str | None, *, live: bool, steps: int, prompt: str
) -> str:
    side = args.canvas
    return json.dumps(
        {
            "type": "job", "job_id": job_id, "live": live, "result_encoding": "rgba8",
            "params": {"checkpoint": checkpoint, "steps": steps, "strength": 0.6, "prompt": prompt,
                       "resolution": args.resolution},
            "images": [{"slot": "canvas", "encoding": "rgba8", "width": side, "height": side}],
        }
    )  # fmt: skip


def quantiles(values: Sequence[float]) -> tuple[float | None, float | None]:
    """p50 and p95 (nearest rank) in ms, or None without values."""
    if not values:
        return None, None
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return round(statistics.median(ordered), 1), round(p95, 1)


def ratio(noisy: float | None, baseline: float | None) -> float | None:
    return round(noisy / baseline, 2) if noisy is not None and baseline else None


def compared(phases: dict[str, Sequence[float]]) -> dict[str, Any]:
    """p50 and p95 of the frames of each phase, and the noisy phase's over the baseline's and the polite's."""
    line: dict[str, Any] = {}
    for name, values in phases.items():
        line[f"{name}_p50_ms"], line[f"{name}_p95_ms"] = quantiles(values)
    for other in ("baseline", "polite"):
        for q in ("p50", "p95"):
            line[f"noisy_over_{other}_{q}"] = ratio(line[f"noisy_{q}_ms"], line[f"{other}_{q}_ms"])
    line["frames"] = [len(values) for values in phases.values()]
    return line


# --- the clients ------------------------------------------------------------------------------------------


async def live_painter(
    url: str, token: str, index: int, args: argparse.Namespace, checkpoint: str | None, until: float
) -> list[float]:
    """One live painter: a frame, its result, a pause for the next stroke, again; the frames' latencies."""
    latencies: list[float] = []
    socket = await hello(url, token)
    image = canvas(args.canvas, index)
    try:
        n = 0
        while time.monotonic() < until:
            n += 1
            image[n % args.canvas, :, :3] ^= 0xFF  # a new stroke: never the same canvas twice
            job_id = f"p{index}-{n}"
            started = time.perf_counter()
            await socket.send(job(job_id, args, checkpoint, live=True, steps=args.live_steps,
                                  prompt="a castle"))  # fmt: skip
            await socket.send(frame(job_id, image))
            retry_after = await _until_result(socket, job_id)
            if retry_after is None:
                latencies.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(args.pace)
            else:
                await asyncio.sleep(retry_after)  # refused as busy: resent after the hint, as the plugin does
    finally:
        await socket.close()
    return latencies


async def _until_result(socket: ClientConnection, job_id: str) -> float | None:
    """Reads until the job's result pixels (None) or its end without them (its retry_after, or the pace)."""
    while True:
        data = await socket.recv()
        if isinstance(data, bytes):
            return None
        message = json.loads(data)
        if message.get("job_id") == job_id and message.get("type") in ("error", "cancelled"):
            return float(message.get("retry_after") or 0.5)


@dataclass
class NoisyReport:
    name: str
    connections: int
    jobs: int
    accepted: int = 0
    done: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # error code -> how many
    retry_after_s: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # first send -> result, ms

    def line(self) -> dict[str, Any]:
        p50, p95 = quantiles(self.latencies)
        hints = sorted(self.retry_after_s)
        return {
            "name": self.name, "connections": self.connections, "jobs": self.jobs, "accepted": self.accepted,
            "done": self.done, "refused": self.refused, "retry_after_min_s": hints[0] if hints else None,
            "retry_after_max_s": hints[-1] if hints else None, "job_p50_ms": p50, "job_p95_ms": p95,
        }  # fmt: skip


async def noisy_user(
    url: str,
    token: str,
    args: argparse.Namespace,
    checkpoint: str | None,
    until: float,
    report: NoisyReport,
    polite: bool = False,
) -> None:
    """Queues its Generate jobs over `report.connections` connections at once (with `polite`: one at a time,
    each sent once the last one's result came, as a painter clicking Generate again and again); a `busy`
    refusal waits its retry_after."""
    todo = list(range(args.generate_jobs))
    sockets = [await hello(url, token) for _ in range(report.connections)]
    image = canvas(args.canvas, 999)

    async def connection(socket: ClientConnection) -> None:
        replies: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        first_sent: dict[str, float] = {}
        finished = asyncio.Event()  # polite: the last job's result came

        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for data in socket:
                    if isinstance(data, bytes):
                        job_id = decode_frame(data, 1 << 16, 1 << 16).job_id
                        if job_id in first_sent:
                            report.done += 1
                            report.latencies.append((time.perf_counter() - first_sent.pop(job_id)) * 1000)
                            finished.set()
                        continue
                    message = json.loads(data)
                    queue = replies.get(message.get("job_id", ""))
                    if queue is not None and message["type"] in ("accepted", "error", "cancelled"):
                        queue.put_nowait(message)

        reader = asyncio.create_task(read())
        try:
            while todo and time.monotonic() < until:
                job_id = f"g{todo.pop(0)}"
                replies[job_id] = asyncio.Queue()
                first_sent[job_id] = time.perf_counter()
                while time.monotonic() < until:
                    await socket.send(job(job_id, args, checkpoint, live=False,
                                          steps=args.generate_steps, prompt="a castle at dusk"))  # fmt: skip
                    await socket.send(frame(job_id, image))
                    reply = await replies[job_id].get()
                    if reply is None or reply["type"] == "accepted":
                        report.accepted += reply is not None
                        if polite:
                            finished.clear()
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(finished.wait(), max(0.01, until - time.monotonic()))
                        break
                    report.refused[reply["code"]] = report.refused.get(reply["code"], 0) + 1
                    if reply["type"] != "error" or reply["code"] != "busy":
                        first_sent.pop(job_id, None)
                        break
                    report.retry_after_s.append(float(reply.get("retry_after") or 0))
                    await asyncio.sleep(float(reply.get("retry_after") or 1.0))
            await asyncio.sleep(max(0.0, until - time.monotonic()))  # its results keep coming meanwhile
        finally:
            await socket.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    await asyncio.gather(*(connection(socket) for socket in sockets))


# --- the server and the run --------------------------------------------------------------------------------


class Worker:
    """`python -m backend` on a free loopback port with one token per user; its log drained by a thread."""

    def __init__(self, args: argparse.Namespace, models: Path, config_dir: Path | None, tokens: Path) -> None:
        caps = str(args.painters + args.noisy_connections + 4)  # every connection here is on 127.0.0.1
        command = [
            sys.executable, "-m", "backend", "--port", "0", "--device", args.device, "--accelerate", "off",
            "--models-dir", str(models), "--max-connections", caps, "--max-connections-per-address", caps,
            "--token-file", str(tokens), *args.server_arg,
        ]  # fmt: skip
        if config_dir is not None:
            command += ["--model-config", str(config_dir)]
        env = dict(os.environ)
        if args.device == "cpu" and args.cpu_threads > 0:
            # torch's threads, one per core, spin against the clients and anything else on a small shared
            # machine: frames then cost 10x and the numbers say nothing. One worker thread is steadier.
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.cpu_threads)
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
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

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


async def phase(
    url: str,
    tokens: list[str],
    args: argparse.Namespace,
    checkpoint: str | None,
    generating: NoisyReport | None,
    seconds: float,
) -> list[list[float]]:
    """The live painters (every token but the last) for `seconds`; with `generating`, the last token's user
    sends Generate jobs meanwhile (one connection: politely, one at a time; more: all queued at once)."""
    until = time.monotonic() + seconds
    painters = [
        asyncio.create_task(live_painter(url, token, index, args, checkpoint, until))
        for index, token in enumerate(tokens[:-1])
    ]
    if generating is not None:
        polite = generating.connections == 1
        await noisy_user(url, tokens[-1], args, checkpoint, until, generating, polite)
    return list(await asyncio.gather(*painters))


async def bench(
    args: argparse.Namespace, url: str, tokens: list[str], checkpoint: str | None, out: Any
) -> None:
    # Warm-up, every painter and a Generate at a time: the first jobs load the models (the full VAE for
    # Generate, the preview decoder for frames) and fill caches; not measured.
    await phase(url, tokens, args, checkpoint, NoisyReport("warm", 1, 1), args.warmup)
    baseline = await phase(url, tokens, args, checkpoint, None, args.seconds)
    polite = NoisyReport("polite", 1, args.generate_jobs)
    with_polite = await phase(url, tokens, args, checkpoint, polite, args.seconds)
    noisy = NoisyReport("noisy", args.noisy_connections, args.generate_jobs)
    with_noisy = await phase(url, tokens, args, checkpoint, noisy, args.seconds)
    for index, frames in enumerate(zip(baseline, with_polite, with_noisy, strict=True)):
        line = compared(dict(zip(("baseline", "polite", "noisy"), frames, strict=True)))
        emit({"name": "painter", "user": f"painter-{index:02d}", **line}, out)
    pooled = [
        [v for values in phase_frames for v in values] for phase_frames in (baseline, with_polite, with_noisy)
    ]
    emit(
        {"name": "all_painters", **compared(dict(zip(("baseline", "polite", "noisy"), pooled, strict=True)))},
        out,
    )
    emit(polite.line(), out)
    emit(noisy.line(), out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--painters", type=int, default=20, help="users in all, the noisy one included")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase (at most 3600)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured frames first")
    parser.add_argument("--pace", type=float, default=0.3, help="seconds from a result to the next stroke")
    parser.add_argument("--canvas", type=int, default=64, help="side of every canvas (tiny models: 64)")
    parser.add_argument(
        "--resolution", type=float, default=0.5, help="the jobs' working-size multiplier (1: the model's)"
    )
    parser.add_argument("--live-steps", type=int, default=2)
    parser.add_argument("--generate-jobs", type=int, default=50)
    parser.add_argument("--generate-steps", type=int, default=8, help="a Generate's steps (a frame's: 2)")
    parser.add_argument("--noisy-connections", type=int, default=4)
    parser.add_argument(
        "--server-arg", action="append", default=[], help="passed to the server (repeat), e.g. "
        "--server-arg=--max-queued-jobs-per-user=4"
    )  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=1,
        help="on the CPU: the server's torch threads (0: torch's default)",
    )
    parser.add_argument("--models-dir", type=Path, default=None, help="real models (default: tiny ones)")
    parser.add_argument("--checkpoint", default=None, help="with --models-dir: the checkpoint to use")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON lines here too")
    args = parser.parse_args()
    args.painters = max(2, min(args.painters, 200))
    args.seconds = max(1.0, min(args.seconds, 3600.0))

    out = open(args.out, "w") if args.out else None
    with tempfile.TemporaryDirectory() as scratch:
        if args.models_dir is None:
            from tests.fixtures.tiny_models import build_tiny_models

            tiny = build_tiny_models(Path(scratch) / "models")
            models, config_dir, checkpoint = tiny.root, tiny.config_dir, tiny.checkpoint
        else:
            models, config_dir, checkpoint = args.models_dir, None, args.checkpoint
        tokens = [f"noisy-bench-user-{index:02d}" for index in range(args.painters)]
        token_file = Path(scratch) / "tokens.txt"
        token_file.write_text("\n".join(tokens) + "\n", encoding="utf-8")
        server = Worker(args, models, config_dir, token_file)
        try:
            emit({"name": "_env", "painters": args.painters, "seconds": args.seconds, "device": args.device,
                  "tiny_models": args.models_dir is None, "cpus": os.cpu_count(), "pace_s": args.pace,
                  "generate_jobs": args.generate_jobs, "generate_steps": args.generate_steps,
                  "live_steps": args.live_steps, "canvas": args.canvas, "cpu_threads": args.cpu_threads,
                  "server_args": args.server_arg}, out)  # fmt: skip
            asyncio.run(bench(args, server.url, tokens, checkpoint, out))
        finally:
            server.stop()
    emit({"name": "_done", "loadavg_1min": round(os.getloadavg()[0], 1)}, out)
    if out is not None:
        out.close()


if __name__ == "__main__":
    main()
