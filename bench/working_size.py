#!/usr/bin/env python3
"""Working size benchmark (issue 10): what a huge canvas costs next to a native-sized one, through the real
server and WebSocket, on the same model, measured in one run.

Every generation runs at the model's working size (about (native side x resolution)² pixels), so a 4096x4096
canvas should cost about what a 512x512 one does, plus moving and resampling its pixels; its result comes back
at the working size (the client scales it into the bounds). For each canvas size: the client's round trip
(send the job and its canvas frame -> the result frame received) and the engine's own total, interleaved
(4096, 512, 4096, ...) so that a machine getting busier affects both alike; then the ratio.

Output: JSON lines {"name": "working_size/<mode>/<W>x<H>", "median_ms", "p10_ms", "p90_ms", "runs",
"engine_ms", "generation_size", "result_pixels", "result_bounds"} per canvas size and mode (generate: a
final render; live: a preview frame, each with a changed pixel so the live cache never answers), then
{"name": "working_size/<mode>/ratio", "roundtrip_ratio", "engine_ratio"} (first size / second size), plus
_env and _done. Nothing asserts; tests never time anything.

    # tiny test models written as real files, CPU (their native side is 128 px); about a minute on 2 cores
    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/working_size.py
    # real weights (a models folder in the project's layout), on the best device
    HF_HUB_OFFLINE=1 PYTHONPATH=. python bench/working_size.py --models-dir models --live
    # random full-size SD1.5 weights written to a temporary folder (a GPU run without downloads)
    HF_HUB_OFFLINE=1 PYTHONPATH=. python bench/working_size.py --full --live --out working_size.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_NO_ADVISORY_WARNINGS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.realtime import stats  # noqa: E402 - one percentile rule for every bench
from protocol import Bounds, JobParams  # noqa: E402

PROMPT = "a watercolor landscape with a river and mountains"
SEED = 1234


def canvas_of(width: int, height: int) -> np.ndarray:
    """An opaque painting: a smooth gradient with noise, cheap to build even at 4096x4096."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    canvas = np.empty((height, width, 4), dtype=np.uint8)
    canvas[..., 0] = x.astype(np.uint8)
    canvas[..., 1] = y.astype(np.uint8)
    canvas[..., 2] = rng.integers(0, 256, (height, width), dtype=np.uint8)
    canvas[..., 3] = 255
    return canvas


class Output:
    def __init__(self, out: Path | None) -> None:
        self.out = out
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("")

    def emit(self, record: dict[str, Any]) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if self.out:
            with self.out.open("a") as f:
                f.write(line + "\n")


def client_scaled(canvas: np.ndarray, max_pixels: int) -> np.ndarray:
    """What the Krita plugin sends for a large document: the canvas scaled to about `max_pixels` (its
    SEND_PIXELS), with `bounds` still the whole document."""
    height, width = canvas.shape[:2]
    if width * height <= max_pixels:
        return canvas
    scale = (max_pixels / (width * height)) ** 0.5
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(canvas).resize(size, Image.Resampling.BILINEAR))


async def measure(
    url: str,
    sizes: list[tuple[int, int]],
    params: JobParams,
    live: bool,
    runs: int,
    warmup: int,
    out: Output,
    client_max_pixels: int = 0,
) -> None:
    from tests.protocol_client import Client

    mode = ("live" if live else "generate") + ("/client_scaled" if client_max_pixels else "")
    client = await Client.connect(url)
    canvases = {size: canvas_of(*size) for size in sizes}
    roundtrip: dict[tuple[int, int], list[float]] = {size: [] for size in sizes}
    engine: dict[tuple[int, int], list[float]] = {size: [] for size in sizes}
    last: dict[tuple[int, int], Any] = {}
    for index in range(warmup + runs):
        for size in sizes:  # interleaved: a machine that gets busier affects every size alike
            canvas = canvases[size]
            canvas[0, 0, 0] = index % 256  # a changed canvas each live frame, or the live cache answers
            started = time.perf_counter()
            sent = client_scaled(canvas, client_max_pixels) if client_max_pixels else canvas
            reply = await client.run(sent, params, live=live, bounds=Bounds(0, 0, *size))
            elapsed = (time.perf_counter() - started) * 1000
            if reply.result is None or reply.image is None:
                raise RuntimeError(f"{size[0]}x{size[1]}: no result: {reply.final}")
            last[size] = reply
            if index >= warmup:
                roundtrip[size].append(elapsed)
                engine[size].append(reply.result.timings.get("total", 0.0) * 1000)
    await client.close()
    medians = {}
    for size in sizes:
        reply = last[size]
        record = stats(
            f"working_size/{mode}/{size[0]}x{size[1]}", roundtrip[size],
            engine_ms=round(float(np.median(engine[size])), 3),
            generation_size=reply.result.params.get("generation_size"),
            result_pixels=[reply.result.width, reply.result.height], result_bounds=reply.result.bounds,
            decoder=reply.result.params.get("decoder"), accelerated=reply.result.params.get("accelerated"),
        )  # fmt: skip
        out.emit(record)
        medians[size] = (record["median_ms"], record["engine_ms"])
    first, second = sizes[0], sizes[1]
    out.emit(
        {"name": f"working_size/{mode}/ratio", "sizes": [f"{w}x{h}" for w, h in (first, second)],
         "roundtrip_ratio": round(medians[first][0] / medians[second][0], 3),
         "engine_ratio": round(medians[first][1] / max(medians[second][1], 1e-6), 3),
         "note": "first size / second size, measured in this run; about 1 = the working size holds"}
    )  # fmt: skip


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """ "4096x4096,512" -> [(4096, 4096), (512, 512)]."""
    sizes = []
    for item in text.split(","):
        sides = [int(v) for v in item.lower().split("x")]
        sizes.append((sides[0], sides[-1]))
    if len(sizes) != 2:
        raise SystemExit("--sizes takes two canvas sizes, e.g. 4096x4096,512x512")
    return sizes


async def serve_and_measure(
    args: argparse.Namespace,
    models: Path,
    config_dir: Path | None,
    checkpoint: str | None,
    label: str,
    out: Output,
) -> None:
    from backend.config import ServerConfig
    from backend.server import Server

    config = ServerConfig(
        port=0, models_dir=models, model_config_dir=config_dir, device=args.device, accelerate=args.accelerate
    )
    server = Server(config)
    port = await server.start()
    try:
        params = JobParams(
            prompt=PROMPT, checkpoint=checkpoint, sampler="lcm", steps=args.steps, strength=args.strength,
            cfg=1.0, seed=SEED, resolution=args.resolution,
        )  # fmt: skip
        sizes = parse_sizes(args.sizes)
        url = f"ws://127.0.0.1:{port}"
        for live in [False, True] if args.live else [False]:
            await measure(url, sizes, params, live, args.runs, args.warmup, out)
            if args.client_max_pixels:
                await measure(url, sizes, params, live, args.runs, args.warmup, out, args.client_max_pixels)
        out.emit({"name": "_env", "device": server.engine.device_name, "models": label,
                  "loaded": server.engine.loaded(), "runs": args.runs, "warmup": args.warmup,
                  "steps": args.steps, "strength": args.strength, "resolution": args.resolution,
                  "accelerate": args.accelerate})  # fmt: skip
    finally:
        await server.close()


def write_random_sd15(root: Path, device: str | None) -> None:
    """Random full-size SD1.5 (and TAESD) as files the real server loads: a GPU run needs no download."""
    from backend.engine import select_device
    from bench.engine_vs_diffusers import random_sd15
    from bench.realtime import random_taesd, write_random_checkpoint

    chosen, dtype = select_device(device)
    write_random_checkpoint(random_sd15(chosen, dtype, None), random_taesd(chosen, dtype, None), root)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--models-dir", type=Path, help="a models folder with real weights (default: tiny)")
    source.add_argument("--full", action="store_true", help="random full-size SD1.5 written to a temp folder")
    parser.add_argument("--config-dir", type=Path, help="model configs (default: the shipped SD1.5 ones)")
    parser.add_argument("--checkpoint", help="checkpoint name (default: the folder's first)")
    parser.add_argument("--device", help="cuda, cuda:N, mps, cpu (default: the best available)")
    parser.add_argument(
        "--accelerate", default="off", help="the live path: off (default), auto, compile, ..."
    )
    parser.add_argument("--sizes", default="4096x4096,512x512", help="two canvas sizes, compared")
    parser.add_argument("--live", action="store_true", help="live preview frames too, not only Generate")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--resolution", type=float, default=1.0, help="the job's working size multiplier")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (the first loads models)")
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    parser.add_argument(
        "--client-max-pixels", type=int, default=0,
        help="also measure canvases scaled down by the client to about this many pixels before sending, as "
        "the Krita plugin does (its SEND_PIXELS: 589824)",
    )  # fmt: skip
    args = parser.parse_args()

    from bench.engine_vs_diffusers import quiet_library_logs

    quiet_library_logs()
    out = Output(args.out)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        config_dir, checkpoint = args.config_dir, args.checkpoint
        if args.models_dir is not None:
            models, label = args.models_dir, f"real weights from {args.models_dir}"
        elif args.full:
            models, label = Path(workdir) / "models", "random SD1.5 (full size)"
            write_random_sd15(models, args.device)
        else:
            from tests.fixtures.tiny_models import build_tiny_models

            tiny = build_tiny_models(Path(workdir) / "models")
            models, label = tiny.root, "tiny (test fixtures, loaded from files)"
            config_dir, checkpoint = config_dir or tiny.config_dir, checkpoint or tiny.checkpoint
        asyncio.run(serve_and_measure(args, models, config_dir, checkpoint, label, out))
    out.emit({"name": "_done", "total_s": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
