#!/usr/bin/env python3
"""Realtime (live painting) benchmark: our engine's live path vs the diffusers pipelines, in one process, on
the same weights; plus start-up to first live frame and the WebSocket overhead.

Cases (LCM, 8 steps at strength 0.5 = 4 UNet evaluations, CFG 1; the engine runs preview jobs: TAESD and the
accelerated path, one engine per --accelerate variant):
  live_img2img     512x512 (tiny: 128)               vs StableDiffusionImg2ImgPipeline + LCMScheduler
  live_controlnet  the same with a scribble ControlNet vs StableDiffusionControlNetImg2ImgPipeline
  live_inpaint     a 256x256 selection on a 2048x2048 canvas (tiny: 32 on 256) vs
                   StableDiffusionInpaintPipeline on the whole canvas; also its difference to live_img2img
                   (target: <= 5 ms)
  websocket        the live img2img job through the real server on loopback (raw RGBA frames) minus the
                   engine's own time; and an unchanged canvas resent (served from the server's live cache)
  floors           the frame's parts alone, as static calls: 4 UNet evaluations; TAESD encode + decode
  startup          `python -m backend` in a subprocess: process start -> first live frame, cold and again
                   (second start: warm OS and compile caches)

Output: JSON lines {"name", "median_ms", "p10_ms", "p90_ms", "runs"} per measurement,
{"name": "<case>/ratio", "engine_ms", "diffusers_ms", "ratio" (diffusers / engine: the speed-up, higher is
better), "variant"} per engine variant, agreement lines ("max_diff_uint8" of the engine vs the diffusers
pipeline built with the same TAESD), warm-up lines (compile seconds), plus _env and _done. --out FILE writes
them to a file as well.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/realtime.py            # tiny models, CPU, < 2 min
    HF_HUB_OFFLINE=1 PYTHONPATH=. python bench/realtime.py --full --out r.jsonl  # full-size SD1.5, CUDA fp16
    bench/gpu_run.sh                                                               # the prepared GPU run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_NO_ADVISORY_WARNINGS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from backend.engine import Engine, EngineJob, EngineSettings  # noqa: E402
from backend.engine.accelerated import AcceleratorSettings  # noqa: E402
from backend.engine.controlnet import scribble_hint  # noqa: E402
from bench.engine_vs_diffusers import (  # noqa: E402
    PROMPT,
    SEED,
    InMemoryModels,
    Timer,
    from_config_dir,
    frozen_on,
    painting,
    quiet_library_logs,
    random_sd15,
    scribble,
    tiny_from_files,
)
from protocol.messages import ControlParam, JobParams  # noqa: E402

CASES = ("live_img2img", "live_controlnet", "live_inpaint", "floors", "websocket", "startup")


# --- models -------------------------------------------------------------------------------------------------


class RandomModelsWithTaesd(InMemoryModels):
    """Random full-size models plus a random TAESD (AutoencoderTiny's default config is TAESD for SD1.x, and
    TAESDXL's architecture too)."""

    def __init__(self, base: InMemoryModels, taesd: Any) -> None:
        super().__init__(base._components, base._controlnet)
        self.store = base.store
        self._taesd = taesd

    def taesd(self, family: Any = None) -> Any:
        # The engine asks for the checkpoint's family's preview decoder; these models are of one family.
        return self._taesd


def random_taesd(device: torch.device, dtype: torch.dtype, config_dir: Path | None) -> Any:
    from diffusers import AutoencoderTiny

    torch.manual_seed(1)
    taesd = from_config_dir(AutoencoderTiny, config_dir / "taesd") if config_dir else AutoencoderTiny()
    return frozen_on(taesd, device, dtype)


def reference_models(parts: Any, taesd: Any, controlnet: Any, separate: bool) -> tuple[Any, Any, Any]:
    """The models the diffusers pipelines run on. On CUDA they are copies (the same weights): the engine's
    accelerated path turns its models channels_last, and the baseline must stay the stock pipeline."""
    if not separate:
        return parts, taesd, controlnet
    names = [
        n for n in ("unet", "vae", "text_encoder", "text_encoder_2") if getattr(parts, n, None) is not None
    ]
    copies = {name: copy.deepcopy(getattr(parts, name)) for name in names}
    taesd_copy = copy.deepcopy(taesd) if taesd is not None else None
    return replace(parts, **copies), taesd_copy, copy.deepcopy(controlnet)


# --- the bench ----------------------------------------------------------------------------------------------


@dataclass
class Sizes:
    image: int
    canvas: int
    selection: int
    inpaint_resolution: int


@dataclass
class Live:
    engines: dict[str, Engine]  # variant -> engine
    parts: Any  # the models of the diffusers pipelines (the same weights as the engine's)
    taesd: Any
    controlnet: Any
    controlnet_name: str
    checkpoint: str
    timer: Timer
    sizes: Sizes
    device: torch.device
    results: dict[str, float]  # "<case>/<variant>" -> engine median, for the cross-case lines

    def params(self, **changes: Any) -> JobParams:
        base: dict[str, Any] = {"prompt": PROMPT, "checkpoint": self.checkpoint, "sampler": "lcm", "steps": 8,
                                "strength": 0.5, "cfg": 1.0, "seed": SEED}  # fmt: skip
        return JobParams(**{**base, **changes})

    def pipeline(self, cls_name: str, vae: Any = None, **extra: Any) -> Any:
        import diffusers

        parts = self.parts
        pipe = getattr(diffusers, cls_name)(
            vae=vae or parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
            scheduler=diffusers.LCMScheduler.from_config(parts.scheduler_config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False, **extra,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generator(self) -> torch.Generator:
        return torch.Generator("cpu").manual_seed(SEED)

    def engine_fn(self, engine: Engine, job: EngineJob) -> Callable[[], np.ndarray]:
        return lambda: engine.run(job, lambda i, n: None, lambda: False).image

    def warm_up(self, jobs: list[EngineJob], timeout: float) -> None:
        """Each variant: run every live job once (starts the background compiles), wait for them, run again
        (captures the graphs). Reports how long the painter would have waited for the fast path."""
        for variant, engine in self.engines.items():
            started = time.perf_counter()
            for job in jobs:
                self.engine_fn(engine, job)()
            first_frame_s = time.perf_counter() - started
            finished = engine.accelerator.wait(timeout)
            for job in jobs:
                self.engine_fn(engine, job)()
            self.timer.emit(
                {"name": f"warmup/{variant}", "first_frames_s": round(first_frame_s, 2),
                 "ready_s": round(time.perf_counter() - started, 2), "compiles_finished": finished,
                 **engine.accelerator.status()}
            )  # fmt: skip

    def measure_case(
        self, case: str, jobs: EngineJob, reference: Callable[[], Any], max_runs: dict[str, int] | None = None
    ) -> None:
        functions = {f"{case}/engine_{v}": self.engine_fn(e, jobs) for v, e in self.engines.items()}
        functions[f"{case}/diffusers"] = reference
        medians = self.timer.measure(functions, max_runs)
        diffusers_ms = medians[-1]
        for variant, engine_ms in zip(self.engines, medians, strict=False):
            self.results[f"{case}/{variant}"] = engine_ms
            self.timer.emit(
                {"name": f"{case}/ratio", "variant": variant, "engine_ms": round(engine_ms, 3),
                 "diffusers_ms": round(diffusers_ms, 3), "ratio": round(diffusers_ms / engine_ms, 2)}
            )  # fmt: skip

    def breakdown(self, case: str, job: EngineJob, runs: int = 5) -> None:
        """Median milliseconds per engine phase (encode, denoise, decode, ...) of each variant."""
        for variant, engine in self.engines.items():
            phases: dict[str, list[float]] = {}
            for _ in range(runs):
                timings = engine.run(job, lambda i, n: None, lambda: False).timings
                for phase, seconds in timings.items():
                    phases.setdefault(phase, []).append(seconds * 1000)
            medians = {phase: round(sorted(v)[len(v) // 2], 3) for phase, v in phases.items()}
            self.timer.emit({"name": f"{case}/phases_ms", "variant": variant, **medians})

    def agreement(self, case: str, job: EngineJob, reference_np: np.ndarray) -> None:
        expected = np.nan_to_num(reference_np[0] * 255).round().clip(0, 255).astype(np.int64)
        for variant, engine in self.engines.items():
            ours = self.engine_fn(engine, job)()[..., :3].astype(np.int64)
            if ours.shape != expected.shape:
                continue
            self.timer.emit(
                {"name": f"{case}/agreement", "variant": variant,
                 "vs": "diffusers pipeline with the same TAESD",
                 "max_diff_uint8": int(np.abs(ours - expected).max()),
                 "mean_diff_uint8": round(float(np.abs(ours - expected).mean()), 4)}
            )  # fmt: skip

    # --- cases ---

    def img2img_job(self) -> EngineJob:
        canvas = painting(self.sizes.image, self.sizes.image)
        return EngineJob("img2img", self.params(), canvas, live=True)

    def controlnet_job(self) -> EngineJob:
        lines = scribble(self.sizes.image)
        control = ControlParam("scribble", model=self.controlnet_name, strength=1.0, image="lines")
        canvas = painting(self.sizes.image, self.sizes.image)
        return EngineJob(
            "img2img", self.params(controls=[control]), canvas, None, {"lines": lines}, live=True
        )

    def inpaint_job(self) -> EngineJob:
        n, s = self.sizes.canvas, self.sizes.selection
        mask = np.zeros((n, n), dtype=np.uint8)
        top = (n - s) // 2
        mask[top : top + s, top : top + s] = 255
        return EngineJob("inpaint", self.params(), painting(n, n, seed=1), mask, live=True)

    def live_img2img(self) -> None:
        job = self.img2img_job()
        image = Image.fromarray(job.canvas[..., :3])
        pipe, pipe_taesd = self.pipeline("StableDiffusionImg2ImgPipeline"), None
        if self.taesd is not None:
            pipe_taesd = self.pipeline("StableDiffusionImg2ImgPipeline", vae=self.taesd)

        def reference(p: Any = pipe, output_type: str = "pil") -> Any:
            return p(
                prompt=PROMPT, image=image, strength=0.5, num_inference_steps=8, guidance_scale=1.0,
                generator=self.generator(), output_type=output_type,
            ).images  # fmt: skip

        self.measure_case("live_img2img", job, reference)
        self.breakdown("live_img2img", job)
        if pipe_taesd is not None:
            self.agreement("live_img2img", job, reference(pipe_taesd, "np"))

    def live_controlnet(self) -> None:
        job = self.controlnet_job()
        image = Image.fromarray(job.canvas[..., :3])
        hint = Image.fromarray(scribble_hint(job.control_images["lines"]))
        pipe = self.pipeline("StableDiffusionControlNetImg2ImgPipeline", controlnet=self.controlnet)

        def reference(p: Any = pipe, output_type: str = "pil") -> Any:
            return p(
                prompt=PROMPT, image=image, control_image=hint, strength=0.5, num_inference_steps=8,
                guidance_scale=1.0, controlnet_conditioning_scale=1.0, generator=self.generator(),
                output_type=output_type,
            ).images  # fmt: skip

        self.measure_case("live_controlnet", job, reference)
        self.breakdown("live_controlnet", job)
        if self.taesd is not None:
            pipe_taesd = self.pipeline(
                "StableDiffusionControlNetImg2ImgPipeline", vae=self.taesd, controlnet=self.controlnet
            )
            self.agreement("live_controlnet", job, reference(pipe_taesd, "np"))

    def live_inpaint(self) -> None:
        job = self.inpaint_job()
        n = self.sizes.canvas
        pipe = self.pipeline("StableDiffusionInpaintPipeline")
        assert job.mask is not None
        image, mask = Image.fromarray(job.canvas[..., :3]), Image.fromarray(job.mask)

        def reference() -> Any:
            return pipe(
                prompt=PROMPT, image=image, mask_image=mask, height=n, width=n, strength=0.5,
                num_inference_steps=8, guidance_scale=1.0, generator=self.generator(),
            ).images  # fmt: skip

        # The whole-canvas reference takes seconds per run: a few runs tell its median well enough.
        self.measure_case("live_inpaint", job, reference, {"live_inpaint/diffusers": 3})
        self.breakdown("live_inpaint", job)
        for variant in self.engines:
            inpaint_ms = self.results.get(f"live_inpaint/{variant}")
            img2img_ms = self.results.get(f"live_img2img/{variant}")
            if inpaint_ms is not None and img2img_ms is not None:
                self.timer.emit(
                    {"name": "live_inpaint/over_live_img2img", "variant": variant,
                     "extra_ms": round(inpaint_ms - img2img_ms, 3), "target_ms": 5.0,
                     "note": f"{self.sizes.selection}px selection on a {n}px canvas vs live img2img"}
                )  # fmt: skip

    def websocket(self, variant: str) -> None:
        asyncio.run(websocket_case(self, variant))

    def floors(self) -> None:
        """What the frame is made of, each part alone as its own static call (a CUDA graph on the GPU): 4 UNet
        evaluations and TAESD encode + decode at the live size, per accelerated variant. A compiled variant
        times the very parts its live frames use, on the inputs they were compiled for (no new compile). Tells
        whether a frame is bound by the UNet's kernels or by what happens between them."""
        from backend.engine.accelerated.accelerator import call_signature
        from backend.engine.accelerated.frame import FrameModels, frame_parts
        from backend.engine.accelerated.static_call import capture_cuda_graph, capture_direct

        unet, vae = self.parts_of_engine()
        side = self.sizes.image
        generator = torch.Generator("cpu").manual_seed(SEED)

        def tensor(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator).to(self.device, unet.dtype)

        sample = tensor(1, 4, side // 8, side // 8)
        inputs = {
            ("step", ()): [
                sample,
                torch.tensor(499, device=self.device),
                tensor(1, 77, unet.config.cross_attention_dim),
            ],
            "encode": [tensor(1, 3, side, side).clamp(-1, 1)],
            "decode": [sample],
        }
        # The live frame's own parts (same keys as the engine's): a UNet step without ControlNets, TAESD.
        eager_parts = {
            key: (fn, inputs[role])
            for role, (key, fn) in frame_parts(FrameModels(unet, vae, ()), [()]).items()
        }
        capture = capture_cuda_graph if self.device.type == "cuda" else capture_direct
        functions: dict[str, Callable[[], Any]] = {}
        for variant, engine in self.engines.items():
            accelerator = engine.accelerator
            settings = accelerator.settings
            if not (accelerator.active and settings.whole_frame):
                continue  # +steps variants keep their compiled calls per slot, not as parts
            if accelerator.mode == "compile" and settings.frame_compile != "parts":
                continue  # +whole: the frame compiled as one graph has no parts to time alone
            parts: dict[Any, tuple[Any, Any]] = dict(eager_parts)
            compiled = 0
            for key, fn, examples in accelerator.compiled_parts():
                if key in parts and call_signature(examples) == call_signature(parts[key][1]):
                    parts[key] = (fn, examples)
                    compiled += 1
            self.timer.emit(
                {"name": "floors/parts", "variant": variant, "compiled": compiled, "of": len(parts)}
            )
            tuned = cudnn_autotuned() if isinstance(engine, CudnnTunedEngine) else contextlib.nullcontext()
            with tuned:
                static = {key[0]: (capture(fn, args), args) for key, (fn, args) in parts.items()}
            (unet_call, unet_args), (enc, enc_args), (dec, dec_args) = (
                static["denoise"], static["taesd-encode"], static["taesd-decode"]
            )  # fmt: skip
            functions[f"floors/unet_x4_{variant}"] = lambda c=unet_call, a=unet_args: [
                c(*a) for _ in range(4)
            ]
            functions[f"floors/taesd_encode_decode_{variant}"] = (
                lambda e=enc, ea=enc_args, d=dec, da=dec_args: (
                    e(*ea),
                    d(*da),
                )
            )
        if functions:
            self.timer.measure(functions)

    def parts_of_engine(self) -> tuple[Any, Any]:
        """The UNet and TAESD objects the engines run (not the diffusers baseline's copies)."""
        engine = next(iter(self.engines.values()))
        models: Any = engine.models  # RandomModelsWithTaesd or a ModelCache: both have taesd()
        return models.components(self.checkpoint).unet, models.taesd()


# --- through the server -------------------------------------------------------------------------------------


class CountingEngine:
    """The engine, counting its runs (an unchanged canvas resent must not reach it)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.runs = 0

    def run(self, job: EngineJob, on_progress: Any, is_cancelled: Any) -> Any:
        self.runs += 1
        return self.engine.run(job, on_progress, is_cancelled)


async def websocket_case(bench: Live, variant: str) -> None:
    from backend.config import ServerConfig
    from backend.engine_worker import EngineWorker
    from backend.server import Server
    from tests.protocol_client import Client

    preview = CountingEngine(bench.engines[variant])

    class BenchWorker(EngineWorker):
        """The real engine worker, running the bench's engine instead of loading one."""

        def _load(self) -> None:
            # duck-typed: the worker only calls run()
            self._engine, self.device_name = cast(Engine, preview), str(bench.device)
            self._loaded.set()

        def resolve_models(self, request: Any) -> None:
            pass

        def loaded(self) -> dict[str, Any]:
            return {}

    with tempfile.TemporaryDirectory() as models_dir:
        config = ServerConfig(port=0, models_dir=Path(models_dir), host="127.0.0.1")
        server = Server(config, BenchWorker(config))
        port = await server.start()
        client = await Client.connect(f"ws://127.0.0.1:{port}")
        job = bench.img2img_job()
        canvas = job.canvas.copy()
        overheads: list[float] = []
        totals: list[float] = []
        for index in range(bench.timer.warmup + bench.timer.runs):
            canvas[0, 0, 0] = index % 256  # a changed canvas each frame, or the server's live cache answers
            started = time.perf_counter()
            reply = await client.run(canvas, job.params, live=True)
            elapsed = (time.perf_counter() - started) * 1000
            assert reply.result is not None and reply.image is not None, reply.final
            if index >= bench.timer.warmup:
                totals.append(elapsed)
                overheads.append(elapsed - reply.result.timings.get("total", 0.0) * 1000)
        runs_before = preview.runs
        resent: list[float] = []
        for _ in range(bench.timer.runs):
            started = time.perf_counter()
            reply = await client.run(canvas, job.params, live=True)
            resent.append((time.perf_counter() - started) * 1000)
        await client.close()
        await server.close()
    bench.timer.emit(stats("websocket/live_img2img_roundtrip", totals, variant=variant))
    bench.timer.emit(
        stats("websocket/overhead_over_engine", overheads, variant=variant, target_ms=3.0,
              note="client send -> result frame received, minus the engine's own total (raw RGBA frames)")
    )  # fmt: skip
    bench.timer.emit(
        stats("websocket/unchanged_canvas_resent", resent, variant=variant,
              engine_runs=preview.runs - runs_before, note="engine_runs 0 = no GPU work")
    )  # fmt: skip


def stats(name: str, values: list[float], **extra: Any) -> dict[str, Any]:
    ordered = sorted(values)

    def percentile(q: float) -> float:
        position = (len(ordered) - 1) * q
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {"name": name, "median_ms": round(percentile(0.5), 3), "p10_ms": round(percentile(0.1), 3),
            "p90_ms": round(percentile(0.9), 3), "runs": len(values), **extra}  # fmt: skip


# --- start-up -----------------------------------------------------------------------------------------------


LISTENING = re.compile(r"listening on ws://[^:]+:(\d+)")


async def first_live_frame(port: int, canvas: np.ndarray, params: JobParams, deadline: float) -> float:
    """Connect (retrying until the server listens) and wait for the first live result."""
    from tests.protocol_client import Client

    while True:
        try:
            client = await Client.connect(f"ws://127.0.0.1:{port}")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    reply = await client.run(canvas, params, live=True)
    await client.close()
    if reply.result is None:
        raise RuntimeError(f"no live frame: {reply.final}")
    return time.monotonic()


def start_to_first_frame(
    timer: Timer, models_dir: Path, config_dir: Path | None, device: str, size: int, label: str
) -> None:
    """`python -m backend` as a painter starts it; the clock runs from process start to the first frame."""
    # Keep any PYTHONPATH already set (gpu_run.sh puts carried wheels there).
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": python_path, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "backend",
        "--port",
        "0",
        "--models-dir",
        str(models_dir),
        "--device",
        device,
    ]
    if config_dir is not None:
        command += ["--model-config", str(config_dir)]
    canvas = painting(size, size)
    params = JobParams(prompt=PROMPT, sampler="lcm", steps=8, strength=0.5, cfg=1.0, seed=SEED)
    for attempt in ("cold", "second_start"):
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        try:
            port = None
            assert process.stderr is not None
            for line in process.stderr:
                match = LISTENING.search(line)
                if match:
                    port = int(match.group(1))
                    break
            if port is None:
                raise RuntimeError(f"the backend exited with {process.wait()} before listening")
            # Keep reading its log, or a full pipe would block the server.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            listening_s = time.monotonic() - started
            done = asyncio.run(first_live_frame(port, canvas, params, started + 600))
            timer.emit(
                {"name": f"startup/{attempt}", "first_live_frame_s": round(done - started, 2),
                 "listening_s": round(listening_s, 2), "models": label, "target_s": 20.0}
            )  # fmt: skip
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def write_random_checkpoint(models: Any, taesd: Any, root: Path) -> None:
    """The random full-size models as a diffusers folder + TAESD files, so the real server can load them."""
    from tests.fixtures import ldm_writer

    parts = models.components("random-sd15")
    folder = root / "checkpoints" / "random-sd15"
    for name in ("unet", "vae", "text_encoder"):
        getattr(parts, name).save_pretrained(folder / name)
    parts.tokenizer.save_pretrained(folder / "tokenizer")
    from backend.loading.configs import SD15_CONFIG_DIR

    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(parts.scheduler_config))
    (folder / "model_index.json").write_text((SD15_CONFIG_DIR / "model_index.json").read_text())
    if taesd is not None:
        encoder, decoder = ldm_writer.taesd_to_files({k: v.cpu() for k, v in taesd.state_dict().items()})
        (root / "vae_approx").mkdir(parents=True, exist_ok=True)
        torch.save(encoder, root / "vae_approx" / "taesd_encoder.pth")
        torch.save(decoder, root / "vae_approx" / "taesd_decoder.pth")


# --- main ---------------------------------------------------------------------------------------------------


VARIANT_FLAVOURS = ("steps", "whole", "tuned", "cudnn")


def variant_settings(variant: str, options: AcceleratorSettings) -> tuple[AcceleratorSettings, bool]:
    """MODE[+FLAVOUR...] -> (settings in that mode, cudnn autotuner on). MODE is off, cuda_graphs or compile;
    flavours: "steps" = one accelerated call per model call instead of the whole live frame as one captured
    function; "whole" = compile the whole frame as one graph instead of its model calls one by one; "tuned" =
    inductor's convolution-oriented options (compiler.TUNED_INDUCTOR_OPTIONS); "cudnn" = cudnn's autotuner
    picks each convolution's algorithm (process-wide in the product: here only around this engine's runs)."""
    from backend.engine.accelerated.compiler import TUNED_INDUCTOR_OPTIONS

    mode, *flavours = variant.split("+")
    unknown = [f for f in flavours if f not in VARIANT_FLAVOURS]
    if unknown:
        raise SystemExit(f"unknown variant {variant!r}: flavours are {', '.join(VARIANT_FLAVOURS)}")
    settings = replace(
        options,
        mode=mode,
        whole_frame="steps" not in flavours,
        frame_compile="whole" if "whole" in flavours else "parts",
        compile_options=dict(TUNED_INDUCTOR_OPTIONS) if "tuned" in flavours else options.compile_options,
    )
    return settings, "cudnn" in flavours


class CudnnTunedEngine(Engine):
    """An engine whose runs (and so its graph captures) happen with cudnn's autotuner on."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        with cudnn_autotuned():
            return super().run(*args, **kwargs)


def cudnn_autotuned() -> Any:
    cudnn = torch.backends.cudnn
    return cudnn.flags(
        enabled=True, benchmark=True, deterministic=cudnn.deterministic, allow_tf32=cudnn.allow_tf32
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="full-size SD1.5 random weights (GPU)")
    parser.add_argument("--config-dir", type=Path, help="with --full: another architecture's config folder")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="default: fp16 on GPU, fp32 on CPU")
    parser.add_argument("--size", type=int, help="live image side (default 512 full, 128 tiny)")
    parser.add_argument("--canvas", type=int, help="inpaint canvas side (default 2048 full, 256 tiny)")
    parser.add_argument("--selection", type=int, help="inpaint selection side (default 256 full, 32 tiny)")
    parser.add_argument("--inpaint-resolution", type=int, help="engine working size (512 full, 128 tiny)")
    parser.add_argument(
        "--accelerate",
        help="comma list of engine variants: off, cuda_graphs, compile, each optionally +steps (per-step "
        "calls, not the whole frame), +whole (compile the whole frame as one graph), +tuned (inductor "
        "options for convolutions), +cudnn (cudnn's autotuner) (default: cuda_graphs+steps,cuda_graphs,"
        "cuda_graphs+cudnn,compile on CUDA, off on CPU)",
    )
    parser.add_argument(
        "--compile-backend", help="torch.compile backend (default inductor; eager on CPU smoke)"
    )
    parser.add_argument("--compile-mode", default=None, help="inductor mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--compile-timeout", type=float, default=420.0, help="seconds to wait for compiles")
    parser.add_argument("--runs", type=int, help="timed runs per measurement (default 20 full, 5 tiny)")
    parser.add_argument("--warmup", type=int, help="untimed runs first (default 3 full, 1 tiny)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    args = parser.parse_args()

    from backend.engine import select_device

    quiet_library_logs()
    choice = select_device(args.device, args.dtype)
    device, dtype = choice
    torch.set_grad_enabled(False)
    timer = Timer(
        device, args.runs or (20 if args.full else 5), args.warmup or (3 if args.full else 1), args.out
    )
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    started = time.perf_counter()
    default_variants = (
        "cuda_graphs+steps,cuda_graphs,cuda_graphs+cudnn,compile" if device.type == "cuda" else "off"
    )
    variants = [v.strip() for v in (args.accelerate or default_variants).split(",") if v.strip()]
    with tempfile.TemporaryDirectory() as workdir:
        tiny_root: Path | None = None
        tiny_config: Path | None = None
        if args.full:
            base = random_sd15(device, dtype, args.config_dir)
            models: Any = RandomModelsWithTaesd(base, random_taesd(device, dtype, args.config_dir))
            checkpoint, controlnet_name = "random-sd15", "random-scribble"
        else:
            models, checkpoint = tiny_from_files(device, dtype, Path(workdir))
            controlnet_name = "tiny-scribble.safetensors"
            tiny_root, tiny_config = Path(workdir) / "models", Path(workdir) / "tiny-config"
        full = args.full
        sizes = Sizes(
            args.size or (512 if full else 128), args.canvas or (2048 if full else 256),
            args.selection or (256 if full else 32), args.inpaint_resolution or (512 if full else 128),
        )  # fmt: skip
        options = AcceleratorSettings(compile_backend=args.compile_backend, compile_mode=args.compile_mode)
        engines: dict[str, Engine] = {}
        for variant in variants:
            variant_options, tuned_cudnn = variant_settings(variant, options)
            # working_size=False: the engine renders --size as the pipelines do (at the model's native size,
            # the default, the working size is that same size anyway).
            settings = EngineSettings(
                working_size=False,
                inpaint_resolution=sizes.inpaint_resolution,
                accelerated=variant_options,
            )
            engines[variant] = (CudnnTunedEngine if tuned_cudnn else Engine)(models, device, dtype, settings)
        parts, taesd, controlnet = reference_models(
            models.components(checkpoint), models.taesd(), models.controlnet(controlnet_name),
            separate=device.type == "cuda",
        )  # fmt: skip
        live = Live(
            engines, parts, taesd, controlnet, controlnet_name, checkpoint, timer, sizes, device, {}
        )  # fmt: skip
        timer.emit(
            {"name": "_env", "device": choice.label, "torch": torch.__version__, "variants": variants,
             "models": "random SD1.5 (full size)" if args.full else "tiny (test fixtures, loaded from files)",
             "taesd": live.taesd is not None, "runs": timer.runs, "warmup": timer.warmup,
             "threads": torch.get_num_threads(), "setup_s": round(time.perf_counter() - started, 1),
             "sizes": sizes.__dict__, "compile_backend": args.compile_backend or "inductor",
             "compile_mode": args.compile_mode}
        )  # fmt: skip
        warm_jobs = {"live_img2img": live.img2img_job, "live_controlnet": live.controlnet_job,
                     "live_inpaint": live.inpaint_job, "websocket": live.img2img_job}  # fmt: skip
        live.warm_up([warm_jobs[c]() for c in cases if c in warm_jobs], args.compile_timeout)
        for case in cases:
            if case == "websocket":
                live.websocket(variants[-1])
            elif case == "startup":
                if args.full:
                    root = Path(workdir) / "random-models"
                    write_random_checkpoint(models, live.taesd, root)
                    start_to_first_frame(
                        timer, root, args.config_dir, str(device), sizes.image, "random SD1.5"
                    )
                else:
                    assert tiny_root is not None
                    start_to_first_frame(timer, tiny_root, tiny_config, str(device), sizes.image, "tiny")
            else:
                getattr(live, case)()
    timer.emit({"name": "_done", "total_s": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
