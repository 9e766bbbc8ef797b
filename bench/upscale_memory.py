#!/usr/bin/env python3
"""Upscale memory: the peak host and device memory of an upscale job (backend/engine/upscale.py), per size.

For each canvas side S in --sides, one `upscale` job 2x (S x S -> 2S x 2S) with refine, through the engine in
this process, with Lanczos and with an upscale model (a Real-ESRGAN x2plus RRDBNet written as a real .pth
file and loaded through backend/loading/upscalers.py), then the result encoded as the server sends it (BGRA
payload and binary frame). Measured around each job, after a warm-up job has loaded every model:

- host: the process's peak RSS during the job (VmHWM, reset through /proc/self/clear_refs; Linux) minus its
  RSS before it, and tracemalloc's peak (numpy's allocations included), each also as a multiple of the
  result image's RGBA bytes (`..._over_image`): tiling keeps this a small constant;
- device (CUDA): torch.cuda.max_memory_allocated during the job minus what was allocated before it (the
  models): the job's own device memory, one tile's worth whatever the image size.

Default: the tiny test models (tests/fixtures) on the CPU, sides 128 and 256: a smoke test of the code path.
`--full`: full-size SD1.5 architectures with random weights (bench/engine_vs_diffusers.py) in fp16 on CUDA
and a full-size RRDBNet (64 features, 23 blocks), sides 2048 and 4096: the 8192 x 8192 result. No download.

Output: JSON lines {"name": "upscale_memory/<lanczos|model>/<S>", "canvas", "result", "tiles", "tile_size",
"seconds", "host_peak_mib", "host_peak_over_image", "tracemalloc_peak_mib", "tracemalloc_over_image",
"device_job_mib", "device_models_mib"}, then {"name": "_env", ...} and {"name": "_done"}.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/upscale_memory.py              # CPU, a few minutes
    HF_HUB_OFFLINE=1 PYTHONPATH=. python bench/upscale_memory.py --full --out up.jsonl   # on a CUDA machine
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from backend.codec import array_to_payload
from backend.engine import Engine, EngineJob, EngineSettings
from bench.engine_vs_diffusers import RandomStore, random_sd15
from protocol import ImageEncoding, ImageFrame, JobParams, UpscaleParam, encode_frame
from tests.fixtures.tiny_upscalers import TinyRRDBNet, seeded

MIB = 1024 * 1024
UPSCALER = "RealESRGAN_x2plus-random.pth"


@dataclass
class WithUpscalers(RandomStore):
    """The random models' store, with an upscale_models folder."""

    folder_path: Path = Path()
    upscale_models: list[str] = field(default_factory=lambda: [UPSCALER])

    def resolve(self, kind: str, name: str) -> Path:
        return self.folder_path / name


def write_upscaler(folder: Path, full: bool) -> None:
    """A Real-ESRGAN x2plus file: full size (64 features, 23 blocks) or tiny."""
    model = TinyRRDBNet(scale=2, features=64, blocks=23) if full else TinyRRDBNet(scale=2)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": seeded(model, 1).state_dict()}, folder / UPSCALER)


def rss(key: str = "VmRSS") -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM back to the current RSS
        return True
    except OSError:
        return False


def canvas(side: int) -> np.ndarray:
    rng = np.random.default_rng(side)
    yy, xx = np.mgrid[0:side, 0:side] / side
    image = np.empty((side, side, 4), dtype=np.uint8)
    image[..., :3] = (np.stack([np.sin(9 * xx), np.cos(7 * yy), xx * yy], -1) * 100 + 120).astype(np.uint8)
    image[..., :3] += rng.integers(0, 16, (side, side, 3), dtype=np.uint8)
    image[..., 3] = 255
    return image


def upscale_job(side: int, checkpoint: str, model: str | None) -> EngineJob:
    params = JobParams(
        prompt="a detailed landscape", checkpoint=checkpoint, steps=4, strength=0.5, seed=1,
        upscale=UpscaleParam(factor=2.0, model=model),
    )  # fmt: skip
    return EngineJob("upscale", params, canvas(side))


def measure(engine: Engine, job: EngineJob, device: torch.device) -> dict[str, Any]:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    device_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    rss_before = rss()
    has_peak = reset_peak_rss()
    tracemalloc.start()
    started = time.perf_counter()
    result = engine.run(job, lambda step, total: None, lambda: False)
    height, width = result.image.shape[:2]
    payload = array_to_payload(result.image, "bgra8")  # as the server sends it
    frame = encode_frame(ImageFrame("bench", "result", ImageEncoding.BGRA8, width, height, payload))
    seconds = time.perf_counter() - started
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = rss("VmHWM") if has_peak else None
    image_bytes = width * height * 4
    line: dict[str, Any] = {
        "canvas": list(job.canvas.shape[1::-1]),
        "result": [width, height],
        "frame_mib": round(len(frame) / MIB, 1),
        "tiles": result.params.get("tiles"),
        "tile_size": result.params.get("tile_size"),
        "upscaler": result.params.get("upscaler"),
        "seconds": round(seconds, 2),
        "tracemalloc_peak_mib": round(traced_peak / MIB, 1),
        "tracemalloc_over_image": round(traced_peak / image_bytes, 2),
    }
    if peak is not None and rss_before is not None:
        line.update(
            host_peak_mib=round((peak - rss_before) / MIB, 1),
            host_peak_over_image=round((peak - rss_before) / image_bytes, 2),
        )
    if device.type == "cuda":
        line.update(
            device_job_mib=round((torch.cuda.max_memory_allocated(device) - device_before) / MIB, 1),
            device_models_mib=round(device_before / MIB, 1),
        )
    del result, payload, frame
    return line


def build(args: argparse.Namespace, workdir: Path) -> tuple[Engine, str]:
    device = torch.device(args.device)
    dtype = torch.float16 if args.full else torch.float32
    settings = EngineSettings(preview_taesd=False)
    if args.full:
        models: Any = random_sd15(device, dtype)
        write_upscaler(workdir / "upscale_models", full=True)
        models.store = WithUpscalers(folder_path=workdir / "upscale_models")
        return Engine(models, device, dtype, settings), "random-sd15"
    from backend.loading.model_cache import ModelCache
    from backend.model_files import ModelStore
    from tests.fixtures.tiny_models import build_tiny_models

    tiny = build_tiny_models(workdir / "models")
    write_upscaler(tiny.root / "upscale_models", full=False)
    cache = ModelCache(ModelStore(tiny.root), device, dtype, tiny.config_dir)
    return Engine(cache, device, dtype, settings), tiny.checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="full-size random SD1.5 + RRDBNet (CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sides", default=None, help="canvas sides, comma-separated (2x results)")
    parser.add_argument("--upscalers", default="lanczos,model", help="lanczos, model or both")
    parser.add_argument("--out", type=Path, help="also write the lines to this file")
    args = parser.parse_args()
    sides = [int(s) for s in (args.sides or ("2048,4096" if args.full else "128,256")).split(",")]
    out = args.out.open("w") if args.out else None

    def emit(line: dict[str, Any]) -> None:
        text = json.dumps(line)
        print(text, flush=True)
        if out is not None:
            out.write(text + "\n")

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as workdir:
        engine, checkpoint = build(args, Path(workdir))
        with torch.inference_mode():
            for name in args.upscalers.split(","):
                model = UPSCALER if name == "model" else None
                engine.run(upscale_job(64, checkpoint, model), lambda s, t: None, lambda: False)  # loads all
                for side in sides:
                    line = measure(engine, upscale_job(side, checkpoint, model), device)
                    emit({"name": f"upscale_memory/{name}/{side}", **line})
    emit(
        {
            "name": "_env",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "models": "random SD1.5 + RRDBNet x2 (full size)" if args.full else "tiny (test fixtures)",
            "torch": torch.__version__,
        }
    )
    emit({"name": "_done"})
    if out is not None:
        out.close()


if __name__ == "__main__":
    main()
