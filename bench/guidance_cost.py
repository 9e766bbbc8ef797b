#!/usr/bin/env python3
"""What guidance costs a live frame (issue 13): the engine's live img2img frame with ControlNets, a reference
image or regions, against the plain live frame, and diffusers' pipelines doing the same where they can, on
the same weights, in one process.

Cases (all live jobs as realtime.py runs them: LCM, 8 steps at strength 0.5 = 4 UNet evaluations, CFG 1, the
same canvas and seed; the engine decodes with TAESD, the pipelines with their stock VAE as in realtime.py):
  plain        the live frame alone             vs StableDiffusionImg2ImgPipeline + LCMScheduler
  control_1    a scribble ControlNet            vs StableDiffusionControlNetImg2ImgPipeline
  control_3    scribble + pose + canny          vs the same with the three ControlNets (MultiControlNetModel)
  reference_1  one reference image (IP-Adapter) vs StableDiffusionImg2ImgPipeline with `load_ip_adapter` on
               the same IP-Adapter file and the same CLIP vision weights
  regions_2    two regions (left and right halves) with their own prompts: diffusers has no regional
               prompting pipeline, so no baseline

Models: the test suite's tiny SD1.5 files (tests/fixtures: tiny_models.py, tiny_ip_adapter.py, plus a tiny
canny ControlNet 1.1 file written the way tests/backend/test_control_kinds.py writes it), loaded by the
product's own loading code (ModelStore + ModelCache). There is no full-size mode: the full-size random
models of engine_vs_diffusers.py are in-memory stand-ins without IP-Adapters or CLIP vision encoders, so a
full-size run would need new random adapter and encoder files; on tiny models only the shape of the numbers
(what each guidance adds over the plain frame) means anything.

Output: JSON lines {"name", "median_ms", "p10_ms", "p90_ms", "runs"} per measurement ("<case>/engine",
"<case>/diffusers"; all interleaved run by run); per case {"name": "<case>/over_plain", "engine_ms",
"plain_ms", "ratio" (engine / plain engine)}, {"name": "<case>/path", "accelerated", "accelerated_off", ...}
(the result's effective params: which path served the frame); per baseline {"name": "<case>/ratio",
"engine_ms", "diffusers_ms", "ratio" (diffusers / engine: the speed-up, higher is better)} and
{"name": "<case>/diffusers_over_plain", "diffusers_ms", "plain_ms", "ratio"}; "regions_2/diffusers" says
skipped; plus _env and _done. --out FILE writes them to a file as well.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/guidance_cost.py          # tiny models, CPU, ~1 min
    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/guidance_cost.py --accelerate compile \
        --compile-backend eager                                                     # CPU: accelerated path
    HF_HUB_OFFLINE=1 PYTHONPATH=. python bench/guidance_cost.py --out g.jsonl       # on CUDA: cuda_graphs
"""

# diffusers' annotations reject their own documented calls (pipeline calls, register_modules)
# pyright: reportArgumentType=false, reportCallIssue=false

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image, ImageDraw

from backend.engine import Engine, EngineJob, EngineSettings
from backend.engine.accelerated import AcceleratorSettings
from backend.engine.controlnet import HINT_MAKERS
from bench.engine_vs_diffusers import (
    PROMPT,
    Bench,
    Timer,
    painting,
    quiet_library_logs,
    scribble,
    tiny_from_files,
)
from bench.realtime import CudnnTunedEngine, reference_models, variant_settings
from protocol.messages import ControlParam
from protocol.references import ReferenceParam
from protocol.regions import RegionParam, region_prompt

CASES = ("plain", "control_1", "control_3", "reference_1", "regions_2")
SCRIBBLE = "tiny-scribble.safetensors"  # tests/fixtures/tiny_models.py
OPENPOSE = "tiny-openpose.safetensors"
CANNY = "control_v11p_sd15_canny.safetensors"  # written here, as tests/backend/test_control_kinds.py does
REGION_PROMPTS = ("a red barn", "a dark pine forest")


# --- models -------------------------------------------------------------------------------------------------


def write_canny_controlnet(models_root: Path) -> None:
    """The third ControlNet kind: the tiny fixtures write scribble and openpose files only."""
    from tests.fixtures import ldm_writer
    from tests.fixtures.tiny_models import build_controlnet, build_unet

    model = build_controlnet(build_unet(seed=1), seed=21)
    tensors = ldm_writer.controlnet_to_ldm(model.state_dict(), model.config)
    ldm_writer.save_tensors(
        models_root / "controlnet" / CANNY, ldm_writer.with_prefix(ldm_writer.CONTROLNET_PREFIX, tensors)
    )


def pose_drawing(size: int) -> np.ndarray:
    """A ready-made pose image (coloured limbs on black), as a pose control's image slot takes it."""
    image = Image.new("RGB", (size, size), "black")
    draw = ImageDraw.Draw(image)
    width = max(1, size // 32)
    joints = [(0.5, 0.2), (0.5, 0.45), (0.3, 0.6), (0.7, 0.6), (0.4, 0.9), (0.6, 0.9)]
    limbs = ((0, 1), (1, 2), (1, 3), (1, 4), (1, 5))
    for (a, b), colour in zip(limbs, ("red", "orange", "lime", "cyan", "blue"), strict=True):
        (x0, y0), (x1, y1) = joints[a], joints[b]
        draw.line((x0 * size, y0 * size, x1 * size, y1 * size), fill=colour, width=width)
    rgba = np.full((size, size, 4), 255, dtype=np.uint8)
    rgba[..., :3] = np.asarray(image)
    return rgba


# --- the bench ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    job: EngineJob
    reference: Callable[[], Any] | None  # the diffusers pipeline call; None: diffusers has no such pipeline
    skipped: str = ""  # why there is no reference


@dataclass
class GuidanceBench:
    bench: Bench  # engine_vs_diffusers' bench: the engine, the pipelines' models, params(), pipeline()
    cache: Any  # the ModelCache the engine loads from (ControlNets, CLIP vision for the baselines)
    separate: bool  # the pipelines get copies of the models (CUDA: the accelerated path changes its own)

    @property
    def size(self) -> int:
        return self.bench.size

    def canvas(self) -> np.ndarray:
        return painting(self.size, self.size)

    def controlnet(self, name: str) -> Any:
        model = self.cache.controlnet(name)
        return copy.deepcopy(model) if self.separate else model

    def call(self, pipe: Any, **inputs: Any) -> Callable[[], Any]:
        image = Image.fromarray(self.canvas()[..., :3])
        return lambda: pipe(
            prompt=PROMPT, image=image, strength=0.5, num_inference_steps=8, guidance_scale=1.0,
            generator=self.bench.generator(), **inputs,
        ).images  # fmt: skip

    def live(self, images: dict[str, np.ndarray] | None = None, **params: Any) -> EngineJob:
        return EngineJob("img2img", self.bench.params(**params), self.canvas(), None, images or {}, live=True)

    # --- cases ---

    def plain(self) -> Case:
        return Case(self.live(), self.call(self.bench.pipeline("StableDiffusionImg2ImgPipeline")))

    def controls(self, kinds: list[tuple[str, str]]) -> Case:
        """ControlNets of the given (kind, file), each guided by its own image slot at strength 1."""
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        drawings = {"scribble": scribble, "pose": pose_drawing, "canny": scribble}
        images = {kind: drawings[kind](self.size) for kind, _ in kinds}
        controls = [ControlParam(kind, model=name, strength=1.0, image=kind) for kind, name in kinds]
        # The hints the engine makes of those images (white lines on black, the pose as drawn).
        hints = [Image.fromarray(HINT_MAKERS[kind](images[kind])) for kind, _ in kinds]
        models = [self.controlnet(name) for _, name in kinds]
        controlnet = models[0] if len(models) == 1 else MultiControlNetModel(models)
        pipe = self.bench.pipeline("StableDiffusionControlNetImg2ImgPipeline", controlnet=controlnet)
        scale: Any = 1.0 if len(models) == 1 else [1.0] * len(models)
        reference = self.call(
            pipe, control_image=hints[0] if len(hints) == 1 else hints, controlnet_conditioning_scale=scale
        )
        return Case(self.live(images, controls=controls), reference)

    def reference_1(self) -> Case:
        from transformers import CLIPImageProcessor

        from tests.fixtures.tiny_ip_adapter import SINGLE_FILE_ENCODER, TinyReferences, build_encoder

        adapter = TinyReferences.adapter("sd15")
        picture = painting(96, 96, seed=3)  # opaque: the pipeline gets the same RGB the engine reads
        job = self.live({"ref": picture}, references=[ReferenceParam("ref", model=adapter, strength=0.6)])
        # Always copies: load_ip_adapter swaps the UNet's attention processors, which the engine's UNet keeps.
        parts, _, _ = reference_models(self.bench.parts, None, None, separate=True)
        pipe = replace(self.bench, parts=parts).pipeline("StableDiffusionImg2ImgPipeline")
        side = SINGLE_FILE_ENCODER["image_size"]
        # The same CLIP vision weights as the single file the engine loads (tests/backend/
        # test_ip_adapter_agreement.py builds its pipeline the same way).
        encoder = build_encoder(SINGLE_FILE_ENCODER, seed=61).to(self.bench.device, parts.unet.dtype)
        processor = CLIPImageProcessor(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        )
        pipe.register_modules(image_encoder=encoder, feature_extractor=processor)
        ipadapter_folder = Path(self.cache.store.folder("ipadapter"))
        pipe.load_ip_adapter(
            str(ipadapter_folder), subfolder="", weight_name=adapter, image_encoder_folder=None
        )
        pipe.set_ip_adapter_scale(0.6)
        return Case(job, self.call(pipe, ip_adapter_image=Image.fromarray(picture[..., :3])))

    def regions_2(self) -> Case:
        half = self.size // 2
        left = np.zeros((self.size, self.size), dtype=np.uint8)
        left[:, :half] = 255
        masks = {"left": left, "right": 255 - left}
        regions = [RegionParam(slot, text) for slot, text in zip(masks, REGION_PROMPTS, strict=True)]
        return Case(self.live(masks, regions=regions), None, "no regional prompting pipeline in diffusers")

    def case(self, name: str) -> Case:
        if name == "control_1":
            return self.controls([("scribble", SCRIBBLE)])
        if name == "control_3":
            return self.controls([("scribble", SCRIBBLE), ("pose", OPENPOSE), ("canny", CANNY)])
        return getattr(self, name)()


def run_engine(engine: Engine, job: EngineJob) -> Any:
    return engine.run(job, lambda step, total: None, lambda: False)


def measure(gb: GuidanceBench, cases: dict[str, Case], compile_timeout: float) -> None:
    engine, timer = gb.bench.engine, gb.bench.timer
    # Each job once (starts any background compile), wait for the compiles, once more (captures the graphs).
    # The wait comes after each job, so each case's compile is timed alone (a reference frame arriving during
    # a compile would wait for it: Accelerator.models_held).
    started = time.perf_counter()
    finished = True
    for case in cases.values():
        run_engine(engine, case.job)
        finished = engine.accelerator.wait(compile_timeout) and finished
    paths = {name: run_engine(engine, case.job).params for name, case in cases.items()}
    timer.emit(
        {"name": "warmup", "ready_s": round(time.perf_counter() - started, 2), "compiles_finished": finished,
         **engine.accelerator.status()}
    )  # fmt: skip
    functions: dict[str, Callable[[], Any]] = {}
    for name, case in cases.items():
        functions[f"{name}/engine"] = lambda job=case.job: run_engine(engine, job)
        if case.reference is not None:
            functions[f"{name}/diffusers"] = case.reference
    # One group: runs interleave across every case, so a machine that gets busier halfway affects all alike.
    medians = dict(zip(functions, timer.measure(functions), strict=True))
    plain_engine, plain_diffusers = medians.get("plain/engine"), medians.get("plain/diffusers")
    for name, case in cases.items():
        effective = paths[name]
        timer.emit(
            {"name": f"{name}/path", "accelerated": effective.get("accelerated"),
             "accelerated_off": effective.get("accelerated_off") or None,
             "whole_frame": effective.get("whole_frame"), "decoder": effective.get("decoder"),
             "controlnets": effective.get("controlnets"), "ip_adapters": effective.get("ip_adapters")}
        )  # fmt: skip
        engine_ms = medians[f"{name}/engine"]
        if plain_engine is not None and name != "plain":
            timer.emit(
                {"name": f"{name}/over_plain", "engine_ms": round(engine_ms, 3),
                 "plain_ms": round(plain_engine, 3), "ratio": round(engine_ms / plain_engine, 3)}
            )  # fmt: skip
        if case.reference is None:
            timer.emit(
                {"name": f"{name}/diffusers", "skipped": "no regional prompting pipeline in diffusers"}
            )
            continue
        diffusers_ms = medians[f"{name}/diffusers"]
        timer.emit(
            {"name": f"{name}/ratio", "engine_ms": round(engine_ms, 3),
             "diffusers_ms": round(diffusers_ms, 3), "ratio": round(diffusers_ms / engine_ms, 3)}
        )  # fmt: skip
        if plain_diffusers is not None and name != "plain":
            timer.emit(
                {"name": f"{name}/diffusers_over_plain", "diffusers_ms": round(diffusers_ms, 3),
                 "plain_ms": round(plain_diffusers, 3), "ratio": round(diffusers_ms / plain_diffusers, 3)}
            )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="default: fp16 on GPU, fp32 on CPU")
    parser.add_argument(
        "--size", type=int, default=128, help="live image side (default 128: the tiny UNet's)"
    )
    parser.add_argument(
        "--accelerate",
        help="the engine's accelerated path, as realtime.py's --accelerate names one variant (off, "
        "cuda_graphs, compile, +steps, ...; default cuda_graphs on CUDA, off on CPU)",
    )
    parser.add_argument(
        "--compile-backend", help="torch.compile backend (default inductor; eager: the plumbing on the CPU)"
    )
    parser.add_argument("--compile-timeout", type=float, default=420.0, help="seconds to wait for compiles")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    args = parser.parse_args()

    from backend.engine import select_device
    from tests.fixtures.tiny_ip_adapter import write_tiny_references

    quiet_library_logs()
    choice = select_device(args.device, args.dtype)
    device, dtype = choice
    torch.set_grad_enabled(False)
    timer = Timer(device, args.runs, args.warmup, args.out)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}: choose from {', '.join(CASES)}")
    variant = args.accelerate or ("cuda_graphs" if device.type == "cuda" else "off")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        cache, checkpoint = tiny_from_files(device, dtype, Path(workdir))
        root = Path(cache.store.root)
        write_canny_controlnet(root)
        write_tiny_references(root)
        options = AcceleratorSettings(compile_backend=args.compile_backend)
        accelerated, tuned_cudnn = variant_settings(variant, options)
        settings = EngineSettings(working_size=False, accelerated=accelerated)
        engine = (CudnnTunedEngine if tuned_cudnn else Engine)(cache, device, dtype, settings)
        separate = device.type == "cuda"
        parts, _, _ = reference_models(cache.components(checkpoint), None, None, separate=separate)
        bench = Bench(engine, parts, None, SCRIBBLE, checkpoint, timer, args.size, 0, 0, device)
        gb = GuidanceBench(bench, cache, separate)
        cases = {name: gb.case(name) for name in names}
        timer.emit(
            {"name": "_env", "device": choice.label, "torch": torch.__version__, "variant": variant,
             "models": "tiny (test fixtures, loaded from files)", "size": args.size, "runs": timer.runs,
             "warmup": timer.warmup, "threads": torch.get_num_threads(),
             "setup_s": round(time.perf_counter() - started, 1),
             "regions": [region_prompt(text, PROMPT) for text in REGION_PROMPTS]}
        )  # fmt: skip
        measure(gb, cases, args.compile_timeout)
    timer.emit({"name": "_done", "total_s": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
