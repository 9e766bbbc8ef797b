#!/usr/bin/env python3
"""Job memory: the server's host memory per canvas pixel at a job's peak (the figure behind backend/job_size).

Starts `python -m backend` in a subprocess (tiny models in a temporary folder, CPU, unless --models-dir and
--checkpoint name real ones) and sends, for each kind of job, one at each canvas size: a non-opaque canvas
(the compositing path), a scribble control image and, for inpaint, a mask over the whole canvas. Before each
job the server's peak RSS is reset (/proc/<pid>/clear_refs, Linux; needs the same user); after it, peak minus
the RSS before is the job's cost. The slope between the smallest and largest canvas is the cost per pixel,
free of fixed costs (the model, the working-size buffers). Nothing asserts.

Output: JSON lines {"name": "job_memory/<mode>/<encoding>", "peak_mib": {side: MiB}, "bytes_per_pixel"},
then _done.

    PYTHONPATH=. .venv/bin/python bench/job_memory.py      # tiny models, 1024/2048/3072: about 2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from bench.soak import ServerProcess  # noqa: E402
from protocol import PROTOCOL_VERSION, ImageEncoding, ImageFrame, encode_frame  # noqa: E402

MIB = 1024 * 1024


def status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} for process {pid}")


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def job_frames(side: int, mode: str, encoding: str, checkpoint: str | None) -> tuple[str, list[bytes]]:
    rng = np.random.default_rng(side)
    canvas = rng.integers(0, 256, (side, side, 4), dtype=np.uint8)
    canvas[..., 3] = 200  # not opaque: composited over white, the dearer path
    scribble = np.zeros((side, side, 4), dtype=np.uint8)
    scribble[::7] = 255
    images = [
        ImageFrame("j", "canvas", ImageEncoding.RGBA8, side, side, canvas.tobytes()),
        ImageFrame("j", "scribble", ImageEncoding.RGBA8, side, side, scribble.tobytes()),
    ]
    if mode == "inpaint":
        mask = np.full((side, side), 255, dtype=np.uint8)
        images.append(ImageFrame("j", "mask", ImageEncoding.GRAY8, side, side, mask.tobytes()))
    message = {
        "type": "job", "job_id": "j", "mode": mode, "result_encoding": encoding,
        "images": [
            {"slot": i.slot, "encoding": i.encoding.label, "width": side, "height": side} for i in images
        ],
        "params": {"checkpoint": checkpoint, "steps": 1, "strength": 0.5,
                   "controls": [{"kind": "scribble", "image": "scribble"}]},
    }  # fmt: skip
    return json.dumps(message), [encode_frame(i) for i in images]


async def run_job(url: str, side: int, mode: str, encoding: str, checkpoint: str | None) -> None:
    message, frames = job_frames(side, mode, encoding, checkpoint)
    async with connect(url, max_size=None, compression=None) as socket:
        await socket.send(json.dumps({"type": "hello", "protocol_version": PROTOCOL_VERSION}))
        await socket.recv()
        await socket.send(message)
        for frame in frames:
            await socket.send(frame)
        del frames
        while True:
            reply = await socket.recv()
            if isinstance(reply, bytes):
                return  # the result's frame
            data = json.loads(reply)
            if data["type"] == "error":
                raise RuntimeError(data["message"])


async def measure(server: ServerProcess, args: argparse.Namespace, checkpoint: str | None) -> None:
    pid = server.process.pid
    await run_job(server.url, 256, "img2img", "rgba8", checkpoint)  # loads the models
    for mode in ("img2img", "inpaint"):
        for encoding in ("rgba8", "png"):
            peaks: dict[int, int] = {}
            for side in args.sides:
                await asyncio.sleep(0.5)
                before = status(pid, "VmRSS")
                reset_peak(pid)
                await run_job(server.url, side, mode, encoding, checkpoint)
                peaks[side] = status(pid, "VmHWM") - before
            small, large = min(args.sides), max(args.sides)
            per_pixel = (peaks[large] - peaks[small]) / (large * large - small * small)
            line: dict[str, Any] = {
                "name": f"job_memory/{mode}/{encoding}",
                "peak_mib": {side: round(peak / MIB) for side, peak in peaks.items()},
                "bytes_per_pixel": round(per_pixel, 1),
            }
            print(json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[1024, 2048, 3072])
    parser.add_argument("--models-dir", type=Path, default=None, help="real models (default: tiny ones)")
    parser.add_argument("--checkpoint", default=None, help="with --models-dir: the checkpoint to use")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    # What ServerProcess reads: the caps and limits raised so that only memory is measured.
    args.clients, args.max_unread_mb, args.unread_timeout = 4, 4096, 60.0
    with tempfile.TemporaryDirectory() as folder:
        config_dir = None
        models, checkpoint = args.models_dir, args.checkpoint
        if models is None:
            from tests.fixtures.tiny_models import build_tiny_models

            tiny = build_tiny_models(Path(folder) / "models")
            models, checkpoint, config_dir = tiny.root, tiny.checkpoint, tiny.config_dir
        server = ServerProcess(args, models, config_dir)
        try:
            asyncio.run(measure(server, args, checkpoint))
        finally:
            server.stop()
    print(json.dumps({"name": "_done"}), flush=True)


if __name__ == "__main__":
    main()
