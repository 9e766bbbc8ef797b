#!/usr/bin/env python3
"""Times the engine against diffusers' pipelines on the same models, in one process, and prints the ratios.

Cases (each: our Engine.run vs the diffusers pipeline, same weights, inputs, seed and LCM scheduler):
  img2img      8 steps at strength 0.5 (4 UNet evaluations), CFG 1: vs StableDiffusionImg2ImgPipeline
  img2img_cfg  the same with CFG 1.5 and a negative prompt (UNet batch 2)
  controlnet   img2img with a scribble ControlNet: vs StableDiffusionControlNetImg2ImgPipeline
  inpaint      a 256x256 selection on a 2048x2048 canvas: the engine works on the padded selection at 512;
               diffusers' StableDiffusionInpaintPipeline on the full canvas (its default use), and with
               padding_mask_crop at 512 (its own crop mode) as a second reference

Default: the tiny real-architecture test models, written as real files and loaded by the product's own
loading code, on the CPU (about a minute on 2 cores). `--full`: full-size SD1.5 architectures (configs
shipped in backend/configs) with random weights, on the GPU in fp16: the realistic comparison, no download.

Prints one JSON line per measurement: {"name", "median_ms", "p10_ms", "p90_ms", "runs"}, and per case a
ratio line {"name": "<case>/ratio", "engine_ms", "diffusers_ms", "ratio" (engine / diffusers, lower is
better), "max_diff_uint8" (how far apart the two images are, where they should agree)}. --out: also to a file.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/engine_vs_diffusers.py
    HF_HUB_OFFLINE=1 PYTHONPATH=. python bench/engine_vs_diffusers.py --full        # on a CUDA machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image, ImageDraw

from backend.engine import Engine, EngineJob
from protocol.messages import ControlParam, JobParams

if TYPE_CHECKING:
    from diffusers.configuration_utils import ConfigMixin

    from backend.loading.checkpoint import PipelineComponents

Configured = TypeVar("Configured", bound="ConfigMixin")

CASES = ("img2img", "img2img_cfg", "controlnet", "inpaint")
PROMPT = "a scribble of a small house with a tree, watercolor, soft light"
NEGATIVE = "blurry, dark"
SEED = 1234


# --- models -------------------------------------------------------------------------------------------------


@dataclass
class RandomStore:
    """The few store calls the engine makes, for models that exist only in memory."""

    checkpoints: list[str] = field(default_factory=lambda: ["random-sd15"])
    controlnet: list[str] = field(default_factory=lambda: ["random-scribble"])
    loras: list[str] = field(default_factory=list)

    def list_kind(self, kind: str) -> list[str]:
        return list(getattr(self, kind))

    def default_checkpoint(self) -> str:
        return self.checkpoints[0]

    def folder(self, kind: str) -> Path:
        return Path("models") / kind


class InMemoryModels:
    """Stands in for the ModelCache with random-weight models."""

    def __init__(self, components: PipelineComponents, controlnet: Any) -> None:
        self.store = RandomStore()
        self._components = components
        self._controlnet = controlnet

    def components(
        self, checkpoint: str, loras: Any = (), vae: Any = None, lcm_lora: Any = None
    ) -> PipelineComponents:
        return self._components

    def controlnet(self, name: str) -> Any:
        return self._controlnet


def from_config_dir(
    model_class: type[Configured], directory: Path, subfolder: str | None = None
) -> Configured:
    """A diffusers model with random weights, built from its config.json."""
    # load_config and from_config return plain values unless asked for unused kwargs (annotated as tuples)
    config = cast(dict[str, Any], model_class.load_config(directory, subfolder=subfolder))
    return cast(Configured, model_class.from_config(config))


def frozen_on(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model on the device, in eval mode, without gradients."""
    # typed as a plain Module: diffusers wraps `to` in a way that hides its signature from type checkers
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def random_sd15(device: torch.device, dtype: torch.dtype, config_dir: Path | None = None) -> InMemoryModels:
    """Full-size SD1.5 architectures with random weights (or any architecture in `config_dir`)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from backend.loading.checkpoint import PipelineComponents
    from backend.loading.configs import CONTROLNET_CONFIG_DIR, SD15_CONFIG_DIR
    from backend.loading.tokenizer import load_tokenizer

    root = config_dir or SD15_CONFIG_DIR
    controlnet_dir = (config_dir / "controlnet") if config_dir else CONTROLNET_CONFIG_DIR
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: 1 B parameters init slowly on a CPU
        unet = from_config_dir(UNet2DConditionModel, root, "unet")
        vae = from_config_dir(AutoencoderKL, root, "vae")
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
        controlnet = from_config_dir(ControlNetModel, controlnet_dir)
    with torch.no_grad():  # zero-convs start at zero: make them act, or the ControlNet costs nothing real
        for name, param in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")) or "conv_out" in name:
                param.normal_(0, 0.02)
    for model in (unet, vae, text_encoder, controlnet):
        frozen_on(model, device, dtype)
    scheduler_config = json.loads((SD15_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text())
    components = PipelineComponents(
        unet, vae, text_encoder, load_tokenizer(), scheduler_config, False, "random-sd15"
    )
    return InMemoryModels(components, controlnet)


def tiny_from_files(device: torch.device, dtype: torch.dtype, workdir: Path) -> Any:
    """The test suite's tiny models, written as real files and loaded through ModelStore + ModelCache."""
    from backend.loading.model_cache import ModelCache
    from backend.model_files import ModelStore
    from tests.fixtures.tiny_models import build_tiny_models

    tiny = build_tiny_models(workdir / "models")
    return ModelCache(ModelStore(tiny.root), device, dtype, tiny.config_dir), tiny.checkpoint


# --- inputs -------------------------------------------------------------------------------------------------


def painting(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width - 1, height - 1, 1)
    rgb = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * xx * yy)], -1) * 200 + rng.random((height, width, 3)) * 55
    canvas = np.full((height, width, 4), 255, dtype=np.uint8)
    canvas[..., :3] = rgb.clip(0, 255).astype(np.uint8)
    return canvas


def scribble(size: int) -> np.ndarray:
    image = Image.new("RGB", (size, size), "black")
    draw = ImageDraw.Draw(image)
    width = max(1, size // 128)
    draw.rectangle((size * 0.25, size * 0.45, size * 0.7, size * 0.85), outline="white", width=width)
    draw.polygon(
        [(size * 0.2, size * 0.45), (size * 0.475, size * 0.2), (size * 0.75, size * 0.45)], outline="white"
    )
    draw.ellipse((size * 0.75, size * 0.3, size * 0.95, size * 0.6), outline="white", width=width)
    rgba = np.full((size, size, 4), 255, dtype=np.uint8)
    rgba[..., :3] = np.asarray(image)
    return rgba


# --- timing -------------------------------------------------------------------------------------------------


def quiet_library_logs() -> None:
    """diffusers' and transformers' warnings about random weights and configs would drown the JSON lines."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()


class Timer:
    def __init__(self, device: torch.device, runs: int, warmup: int, out: Path | None) -> None:
        self.device, self.runs, self.warmup, self.out = device, runs, warmup, out
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("")

    def emit(self, record: dict[str, Any]) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if self.out:
            with self.out.open("a") as f:
                f.write(line + "\n")

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(
        self, functions: dict[str, Callable[[], Any]], max_runs: dict[str, int] | None = None
    ) -> list[float]:
        """Median ms of each function. Runs interleave (a, b, a, b, ...) so that a machine that gets busier or
        hotter halfway through affects all sides alike."""
        limits = {name: min(self.runs, (max_runs or {}).get(name, self.runs)) for name in functions}
        for function in functions.values():
            for _ in range(self.warmup):
                function()
        times: dict[str, list[float]] = {name: [] for name in functions}
        for run in range(self.runs):
            for name, function in functions.items():
                if run >= limits[name]:
                    continue
                self._sync()
                start = time.perf_counter()
                function()
                self._sync()
                times[name].append((time.perf_counter() - start) * 1000)
        medians = []
        for name, values in times.items():
            values.sort()
            medians.append(statistics.median(values))
            self.emit(
                {"name": name, "median_ms": round(medians[-1], 3),
                 "p10_ms": round(_percentile(values, 0.1), 3),
                 "p90_ms": round(_percentile(values, 0.9), 3), "runs": len(values)}
            )  # fmt: skip
        return medians


def _percentile(ordered: list[float], q: float) -> float:
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- cases --------------------------------------------------------------------------------------------------


@dataclass
class Bench:
    engine: Engine
    parts: Any  # the components the engine runs on (shared with the pipelines)
    controlnet: Any
    controlnet_name: str
    checkpoint: str
    timer: Timer
    size: int
    canvas_size: int
    selection: int
    device: torch.device

    def pipeline(self, cls_name: str, **extra: Any) -> Any:
        import diffusers

        parts = self.parts
        pipe = getattr(diffusers, cls_name)(
            vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
            scheduler=diffusers.LCMScheduler.from_config(parts.scheduler_config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False, **extra,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generator(self) -> torch.Generator:
        return torch.Generator("cpu").manual_seed(SEED)

    def params(self, **changes: Any) -> JobParams:
        base: dict[str, Any] = {"prompt": PROMPT, "checkpoint": self.checkpoint, "sampler": "lcm", "steps": 8,
                                "strength": 0.5, "cfg": 1.0, "seed": SEED}  # fmt: skip
        return JobParams(**{**base, **changes})

    def run_engine(self, job: EngineJob) -> np.ndarray:
        return self.engine.run(job, lambda step, total: None, lambda: False).image

    def compare(
        self, case: str, engine_ms: float, diffusers_ms: float, ours: Any, theirs: Any, **extra: Any
    ) -> None:
        record: dict[str, Any] = {"name": f"{case}/ratio", "engine_ms": round(engine_ms, 3),
                                  "diffusers_ms": round(diffusers_ms, 3),
                                  "ratio": round(engine_ms / diffusers_ms, 3)}  # fmt: skip
        if ours is not None and theirs is not None:
            expected = np.nan_to_num(theirs[0] * 255).round().clip(0, 255).astype(np.int64)
            record["max_diff_uint8"] = int(np.abs(ours[..., :3].astype(np.int64) - expected).max())
        record.update(extra)
        self.timer.emit(record)

    def img2img(self, cfg: float) -> None:
        case = "img2img" if cfg <= 1 else "img2img_cfg"
        canvas = painting(self.size, self.size)
        negative = NEGATIVE if cfg > 1 else ""
        job = EngineJob("img2img", self.params(cfg=cfg, negative_prompt=negative), canvas)
        pipe = self.pipeline("StableDiffusionImg2ImgPipeline")
        image = Image.fromarray(canvas[..., :3])

        def reference(output_type: str = "pil") -> Any:
            return pipe(
                prompt=PROMPT, negative_prompt=negative or None, image=image, strength=0.5,
                num_inference_steps=8, guidance_scale=cfg, generator=self.generator(),
                output_type=output_type,
            ).images  # fmt: skip

        engine_ms, diffusers_ms = self.timer.measure(
            {f"{case}/engine": lambda: self.run_engine(job), f"{case}/diffusers": reference}
        )
        self.compare(case, engine_ms, diffusers_ms, self.run_engine(job), reference("np"))

    def controlnet_case(self) -> None:
        from backend.engine.controlnet import scribble_hint

        canvas = painting(self.size, self.size)
        lines = scribble(self.size)
        control = ControlParam("scribble", model=self.controlnet_name, strength=1.0, image="lines")
        job = EngineJob("img2img", self.params(controls=[control]), canvas, None, {"lines": lines})
        pipe = self.pipeline("StableDiffusionControlNetImg2ImgPipeline", controlnet=self.controlnet)
        image, hint = Image.fromarray(canvas[..., :3]), Image.fromarray(scribble_hint(lines))

        def reference(output_type: str = "pil") -> Any:
            return pipe(
                prompt=PROMPT, image=image, control_image=hint, strength=0.5, num_inference_steps=8,
                guidance_scale=1.0, controlnet_conditioning_scale=1.0, generator=self.generator(),
                output_type=output_type,
            ).images  # fmt: skip

        engine_ms, diffusers_ms = self.timer.measure(
            {"controlnet/engine": lambda: self.run_engine(job), "controlnet/diffusers": reference}
        )
        self.compare("controlnet", engine_ms, diffusers_ms, self.run_engine(job), reference("np"))

    def inpaint(self) -> None:
        n, s = self.canvas_size, self.selection
        canvas = painting(n, n, seed=1)
        mask = np.zeros((n, n), dtype=np.uint8)
        top = (n - s) // 2
        mask[top : top + s, top : top + s] = 255
        job = EngineJob("inpaint", self.params(), canvas, mask)
        pipe = self.pipeline("StableDiffusionInpaintPipeline")
        image, mask_image = Image.fromarray(canvas[..., :3]), Image.fromarray(mask)

        def full_canvas() -> Any:
            return pipe(
                prompt=PROMPT, image=image, mask_image=mask_image, height=n, width=n, strength=0.5,
                num_inference_steps=8, guidance_scale=1.0, generator=self.generator(),
            ).images  # fmt: skip

        def cropped() -> Any:
            # diffusers' own crop mode: the masked area plus 32 px, resized to 512, pasted back.
            work = self.engine.settings.inpaint_resolution
            return pipe(
                prompt=PROMPT, image=image, mask_image=mask_image, height=work, width=work, strength=0.5,
                num_inference_steps=8, guidance_scale=1.0, generator=self.generator(), padding_mask_crop=32,
            ).images  # fmt: skip

        # A 2048x2048 generation takes seconds even on a big GPU: a few runs tell its median well enough.
        engine_ms, full_ms, crop_ms = self.timer.measure(
            {
                "inpaint/engine": lambda: self.run_engine(job),
                "inpaint/diffusers_full_canvas": full_canvas,
                "inpaint/diffusers_padding_mask_crop": cropped,
            },
            max_runs={"inpaint/diffusers_full_canvas": 5},
        )
        note = f"{s}x{s} selection on a {n}x{n} canvas"
        self.compare("inpaint", engine_ms, full_ms, None, None, canvas=n, selection=s, note=note)
        self.compare("inpaint_vs_crop_mode", engine_ms, crop_ms, None, None, canvas=n, selection=s, note=note)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="full-size SD1.5 random weights (GPU)")
    parser.add_argument("--config-dir", type=Path, help="with --full: another architecture's config folder")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="default: fp16 on GPU, fp32 on CPU")
    parser.add_argument(
        "--size", type=int, help="img2img / ControlNet image size (default 512 full, 128 tiny)"
    )
    parser.add_argument("--canvas", type=int, help="inpaint canvas size (default 2048 full, 256 tiny)")
    parser.add_argument("--selection", type=int, help="inpaint selection size (default 256 full, 32 tiny)")
    parser.add_argument(
        "--inpaint-resolution", type=int, help="the engine's working size (default 512 full, 128 tiny)"
    )
    parser.add_argument("--runs", type=int, help="timed runs per measurement (default 20 full, 5 tiny)")
    parser.add_argument("--warmup", type=int, help="untimed runs first (default 3 full, 1 tiny)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    args = parser.parse_args()

    from backend.engine import EngineSettings, select_device

    quiet_library_logs()
    device, dtype = select_device(args.device, args.dtype)
    torch.set_grad_enabled(False)
    warmup = args.warmup if args.warmup is not None else (3 if args.full else 1)
    timer = Timer(device, args.runs or (20 if args.full else 5), warmup, args.out)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        if args.full:
            models = random_sd15(device, dtype, args.config_dir)
            checkpoint, controlnet_name = "random-sd15", "random-scribble"
        else:
            models, checkpoint = tiny_from_files(device, dtype, Path(workdir))
            controlnet_name = "tiny-scribble.safetensors"
        parts, controlnet = models.components(checkpoint), models.controlnet(controlnet_name)
        # Tiny runs keep full-size proportions at the tiny UNet's native size (128), or the CPU would need
        # minutes: the selection is 1/8 of the canvas side and the working area the model's native size.
        resolution = args.inpaint_resolution or (512 if args.full else 128)
        # working_size=False: img2img at --size as the pipelines render it (at the model's native size, the
        # default, the working size is that same size anyway)
        settings = EngineSettings(working_size=False, inpaint_resolution=resolution)
        engine = Engine(models, device, dtype, settings)
        bench = Bench(
            engine, parts, controlnet, controlnet_name, checkpoint, timer,
            args.size or (512 if args.full else 128), args.canvas or (2048 if args.full else 256),
            args.selection or (256 if args.full else 32), device,
        )  # fmt: skip
        timer.emit(
            {"name": "_env", "device": select_device(args.device, args.dtype).label,
             "torch": torch.__version__,
             "models": _models_label(args),
             "runs": timer.runs, "warmup": timer.warmup, "threads": torch.get_num_threads(),
             "setup_s": round(time.perf_counter() - started, 1)}
        )  # fmt: skip
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
        for case in cases:
            {"img2img": lambda: bench.img2img(1.0), "img2img_cfg": lambda: bench.img2img(1.5),
             "controlnet": bench.controlnet_case, "inpaint": bench.inpaint}[case]()  # fmt: skip
    timer.emit({"name": "_done", "total_s": round(time.perf_counter() - started, 1)})


def _models_label(args: argparse.Namespace) -> str:
    if not args.full:
        return "tiny (test fixtures, loaded from files)"
    return (
        f"random weights, configs from {args.config_dir}" if args.config_dir else "random SD1.5 (full size)"
    )


if __name__ == "__main__":
    main()
