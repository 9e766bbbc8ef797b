#!/usr/bin/env python3
"""Realtime benchmark for SDXL-class models (issue 12): the engine's live img2img frames against diffusers'
StableDiffusionXLImg2ImgPipeline + LCMScheduler, in one process, on the same weights; and each case's peak GPU
memory. realtime.py's bench for SD1.5, at SDXL's sizes.

Cases (LCM, 8 steps at strength 0.5 = 4 UNet evaluations, CFG 1; the engine runs preview jobs: TAESD and the
accelerated path, one engine per --accelerate variant):
  live_img2img_<side>  a <side>x<side> canvas (default 1024 and 768; tiny: 128 and 64)
  floors_<side>        the frame's parts alone, as static calls: 4 UNet evaluations, TAESD encode + decode
  low_vram_<side>      a Generate job (plain path, full VAE) on the engine with the models resident on the
                       device vs with --low-vram (models in host memory, each brought for its phase): time,
                       peak GPU memory of each (CUDA), and max_diff_uint8 (the images must be identical: 0)

Output: realtime.py's JSON lines ("<case>/ratio" with ratio = diffusers / engine, the speed-up;
"<case>/agreement" against the pipeline built with the same TAESD; "<case>/phases_ms"; "warmup/<variant>"),
plus, on CUDA, "<case>/memory" per engine variant and for diffusers (torch.cuda.max_memory_allocated
during one call) and "memory/held" per variant (what its graphs and buffers keep after warm-up).
--out FILE: also to a file.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/realtime_sdxl.py            # tiny SDXL, CPU
    HF_HUB_OFFLINE=1 PYTHONPATH=. python bench/realtime_sdxl.py --full --out r.jsonl # full size, CUDA fp16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from PIL import Image

from backend.engine import Engine, EngineJob, EngineSettings
from backend.engine.accelerated import AcceleratorSettings
from backend.model_families import SDXL
from bench.engine_vs_diffusers import (
    PROMPT,
    SEED,
    InMemoryModels,
    RandomStore,
    Timer,
    from_config_dir,
    frozen_on,
    painting,
    quiet_library_logs,
)
from bench.realtime import (
    CudnnTunedEngine,
    Live,
    RandomModelsWithTaesd,
    Sizes,
    cudnn_autotuned,
    reference_models,
    variant_settings,
)
from protocol.messages import JobParams

CASES = ("live_img2img", "floors", "low_vram")
CHECKPOINT = "random-sdxl"
# No compile by default: inductor needs minutes per shape for SDXL's UNet, more than gpu_run.sh has left after
# the SD1.5 run. `--accelerate compile` measures it in a run of its own.
CUDA_VARIANTS = "cuda_graphs+steps,cuda_graphs,cuda_graphs+cudnn"
MIB = 1 << 20


# --- models -------------------------------------------------------------------------------------------------


def random_sdxl(device: torch.device, dtype: torch.dtype, config_dir: Path | None) -> InMemoryModels:
    """Full-size SDXL base architectures with random weights (or the architecture in `config_dir`)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from backend.loading.checkpoint import PipelineComponents
    from backend.loading.configs import SDXL_CONFIG_DIR
    from backend.loading.tokenizer import load_tokenizer, load_tokenizer_2

    root = config_dir or SDXL_CONFIG_DIR
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: 3.5 B parameters init slowly on a CPU
        unet = from_config_dir(UNet2DConditionModel, root, "unet")
        vae = from_config_dir(AutoencoderKL, root, "vae")
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2"))
    for model in (unet, vae, text_encoder, text_encoder_2):
        frozen_on(model, device, dtype)
    scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    components = PipelineComponents(
        unet, vae, text_encoder, load_tokenizer(), scheduler_config, False, CHECKPOINT, SDXL,
        text_encoder_2, load_tokenizer_2(),
    )  # fmt: skip
    models = InMemoryModels(components, None)
    models.store = RandomStore(checkpoints=[CHECKPOINT], controlnet=[])
    return models


def random_taesdxl(device: torch.device, dtype: torch.dtype, config_dir: Path | None) -> Any:
    """TAESDXL's stand-in: TAESD's architecture (AutoencoderTiny's defaults) with random weights, or the
    taesd/ config next to (or in) `config_dir` (the tiny test configs)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(1)
    folders = [config_dir / "taesd", config_dir.parent / "taesd"] if config_dir else []
    found = next((f for f in folders if (f / "config.json").is_file()), None)
    taesd = from_config_dir(AutoencoderTiny, found) if found else AutoencoderTiny()
    return frozen_on(taesd, device, dtype)


def tiny_sdxl_from_files(device: torch.device, dtype: torch.dtype, workdir: Path) -> tuple[Any, str]:
    """The tests' tiny SDXL models and a tiny TAESDXL, written as real files and loaded by ModelStore +
    ModelCache, as the server loads them."""
    from backend.loading.model_cache import ModelCache
    from backend.model_files import DEFAULT_LAYOUT, ModelStore
    from tests.fixtures import ldm_writer
    from tests.fixtures.tiny_models import build_taesd
    from tests.fixtures.tiny_sdxl import build_tiny_sdxl

    tiny = build_tiny_sdxl(workdir / "models")
    taesd = build_taesd(seed=41)
    taesd.save_config(tiny.shared_config_dir / "taesd")
    folder = tiny.root / DEFAULT_LAYOUT["taesd"]
    folder.mkdir(parents=True, exist_ok=True)
    encoder, decoder = ldm_writer.taesd_to_files(taesd.state_dict())
    torch.save(encoder, folder / f"{SDXL.preview_decoder}_encoder.pth")
    torch.save(decoder, folder / f"{SDXL.preview_decoder}_decoder.pth")
    return ModelCache(ModelStore(tiny.root), device, dtype, tiny.shared_config_dir), tiny.checkpoint


def host_copy(models: Any, checkpoint: str) -> InMemoryModels:
    """The checkpoint's models copied to host memory, where --low-vram keeps them (its model cache: CPU)."""
    components = models.components(checkpoint)
    copies = {
        part: copy.deepcopy(getattr(components, part)).to("cpu")
        for part in ("unet", "vae", "text_encoder", "text_encoder_2")
        if getattr(components, part, None) is not None
    }
    return InMemoryModels(replace(components, **copies), None)


def weights_mib(*models: Any) -> float:
    tensors = [t for m in models if m is not None for t in (*m.parameters(), *m.buffers())]
    return round(sum(t.numel() * t.element_size() for t in tensors) / MIB, 1)


# --- GPU memory ---------------------------------------------------------------------------------------------


@dataclass
class GpuMemory:
    """torch.cuda's allocator counters; nothing on other devices."""

    device: torch.device

    @property
    def active(self) -> bool:
        return self.device.type == "cuda"

    def now(self) -> tuple[int, int]:
        """(allocated, reserved) bytes; CUDA graphs' private pools count as reserved, not allocated, between
        replays."""
        torch.cuda.synchronize(self.device)
        return torch.cuda.memory_allocated(self.device), torch.cuda.memory_reserved(self.device)

    def of_call(self, function: Callable[[], Any]) -> dict[str, float]:
        allocated, _ = self.now()
        torch.cuda.reset_peak_memory_stats(self.device)
        function()
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        return {"peak_mib": round(peak / MIB, 1), "resident_mib": round(allocated / MIB, 1),
                "extra_mib": round((peak - allocated) / MIB, 1),
                "peak_reserved_mib": round(torch.cuda.max_memory_reserved(self.device) / MIB, 1)}  # fmt: skip


# --- the bench ----------------------------------------------------------------------------------------------


@dataclass
class SdxlLive(Live):
    """realtime.py's live bench, for an SDXL checkpoint at several sizes."""

    memory: GpuMemory
    vae_upcast: bool  # the reference's VAE as configured (SDXL base: fp32 in fp16 pipelines) or kept in fp16
    resident_models: Any = None  # the engines' model source (low_vram copies its models to host memory)
    dtype: torch.dtype = torch.float32

    def params(self, **changes: Any) -> JobParams:
        # lcm_lora_strength 0: no LCM-LoRA is looked up and fused, so the pipelines run the very same UNet
        # (a fused LoRA costs nothing per frame).
        return super().params(**{"lcm_lora_strength": 0.0, **changes})

    def sdxl_pipeline(self, vae: Any = None) -> Any:
        from diffusers import LCMScheduler, StableDiffusionXLImg2ImgPipeline

        parts = self.parts
        vae = vae if vae is not None else parts.vae
        if not self.vae_upcast and hasattr(vae.config, "force_upcast"):
            # As with the fp16-fix VAE the installer's SDXL set ships: the stock config would cast the whole
            # VAE to fp32 and back on every call (its own copy on CUDA: the engine's VAE is another object).
            vae.register_to_config(force_upcast=False)
        pipe = StableDiffusionXLImg2ImgPipeline(
            vae=vae, text_encoder=parts.text_encoder, text_encoder_2=parts.text_encoder_2,
            tokenizer=parts.tokenizer, tokenizer_2=parts.tokenizer_2, unet=parts.unet,
            scheduler=cast(Any, LCMScheduler.from_config(parts.scheduler_config)),
            requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, add_watermarker=False,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def job(self, side: int) -> EngineJob:
        return EngineJob("img2img", self.params(), painting(side, side), live=True)

    def warm_up(self, jobs: list[EngineJob], timeout: float) -> None:
        """realtime.py's warm-up, one variant at a time, with what each variant's graphs and static buffers
        keep allocated afterwards (the CUDA graphs' pools count as reserved)."""
        engines = self.engines
        try:
            for variant, engine in engines.items():
                before = self.memory.now() if self.memory.active else None
                self.engines = {variant: engine}
                super().warm_up(jobs, timeout)
                if before is not None:
                    after = self.memory.now()
                    self.timer.emit(
                        {"name": "memory/held", "variant": variant,
                         "allocated_mib": round((after[0] - before[0]) / MIB, 1),
                         "reserved_mib": round((after[1] - before[1]) / MIB, 1)}
                    )  # fmt: skip
        finally:
            self.engines = engines

    def live_img2img(self, side: int) -> None:
        case = f"live_img2img_{side}"
        job = self.job(side)
        image = Image.fromarray(job.canvas[..., :3])
        pipe = self.sdxl_pipeline()

        def reference(p: Any = pipe, output_type: str = "pil") -> Any:
            return p(
                prompt=PROMPT, image=image, strength=0.5, num_inference_steps=8, guidance_scale=1.0,
                generator=self.generator(), output_type=output_type,
            ).images  # fmt: skip

        self.measure_case(case, job, reference)
        self.breakdown(case, job)
        if self.memory.active:
            functions = {f"engine_{v}": self.engine_fn(e, job) for v, e in self.engines.items()}
            for label, function in {**functions, "diffusers": reference}.items():
                self.timer.emit({"name": f"{case}/memory", "of": label, **self.memory.of_call(function)})
        if self.taesd is not None:
            self.agreement(case, job, reference(self.sdxl_pipeline(vae=self.taesd), "np"))

    def low_vram(self, side: int) -> None:
        """A Generate job (live False: full VAE, plain path) resident vs with --low-vram, on the same weights:
        time and peak GPU memory of each, and that they give the same image."""
        case = f"low_vram_{side}"
        job = replace(self.job(side), live=False)
        resident = Engine(self.resident_models, self.device, self.dtype, EngineSettings(working_size=False))
        low = Engine(
            host_copy(self.resident_models, self.checkpoint),
            self.device,
            self.dtype,
            EngineSettings(working_size=False, low_vram=True),
        )
        functions = {
            f"{case}/resident": self.engine_fn(resident, job),
            f"{case}/low_vram": self.engine_fn(low, job),
        }
        images = {name: function() for name, function in functions.items()}
        self.timer.measure(functions)
        first, second = images.values()
        self.timer.emit(
            {
                "name": f"{case}/agreement",
                "max_diff_uint8": int(abs(first.astype(int) - second.astype(int)).max()),
            }
        )
        if self.memory.active:
            for name, function in functions.items():
                self.timer.emit({"name": f"{name}/memory", **self.memory.of_call(function)})

    def floors(self, side: int) -> None:
        """4 UNet evaluations and TAESD encode + decode at this size, each as one static call (a CUDA graph
        on the GPU): the eager parts, and each compile variant's compiled parts. A frame can't go below
        these with these kernels: diffusers' time over the UNet floor bounds what decoder and loop can win."""
        from backend.engine.accelerated.frame import FrameModels, frame_parts
        from backend.engine.accelerated.static_call import capture_cuda_graph, capture_direct

        engine = next(iter(self.engines.values()))
        models: Any = engine.models
        unet, taesd = models.components(self.checkpoint).unet, models.taesd(SDXL)
        generator = torch.Generator("cpu").manual_seed(SEED)

        def tensor(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator).to(self.device, unet.dtype)

        config = unet.config
        pooled_width = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        latents = tensor(1, 4, side // 8, side // 8)
        time_ids = torch.tensor([[side, side, 0, 0, side, side]], device=self.device, dtype=unet.dtype)
        step = [latents, torch.tensor(499, device=self.device), tensor(1, 77, config.cross_attention_dim),
                tensor(1, pooled_width), time_ids]  # fmt: skip
        inputs = {"step": step, "encode": [tensor(1, 3, side, side).clamp(-1, 1)], "decode": [latents]}
        roles: dict[Any, str] = {"encode": "encode", "decode": "decode", ("step", ()): "step"}
        eager = {
            roles[role]: (key, fn, inputs[roles[role]])
            for role, (key, fn) in frame_parts(FrameModels(unet, taesd, ()), [()], added=True).items()
        }
        sets: dict[str, tuple[dict[str, Any], bool]] = {"eager": (eager, False)}
        for variant, engine in self.engines.items():
            if engine.accelerator.mode != "compile":
                continue
            compiled = {
                role: (key, fn, examples)
                for role, (key, _, mine) in eager.items()
                for part_key, fn, examples in engine.accelerator.compiled_parts()
                if part_key == key and examples[0].shape == mine[0].shape
            }
            if compiled:
                sets[variant] = ({**eager, **compiled}, isinstance(engine, CudnnTunedEngine))
        capture = capture_cuda_graph if self.device.type == "cuda" else capture_direct
        functions: dict[str, Callable[[], Any]] = {}
        for variant, (parts, tuned) in sets.items():
            with cudnn_autotuned() if tuned else contextlib.nullcontext():
                static = {role: (capture(fn, args), args) for role, (_, fn, args) in parts.items()}
            (unet_call, unet_args), (enc, enc_args), (dec, dec_args) = (
                static["step"], static["encode"], static["decode"]
            )  # fmt: skip
            functions[f"floors_{side}/unet_x4_{variant}"] = lambda c=unet_call, a=unet_args: [
                c(*a) for _ in range(4)
            ]
            functions[f"floors_{side}/taesd_encode_decode_{variant}"] = (
                lambda e=enc, ea=enc_args, d=dec, da=dec_args: (e(*ea), d(*da))
            )
        self.timer.measure(functions)


# --- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="full-size SDXL random weights (GPU)")
    parser.add_argument("--config-dir", type=Path, help="with --full: another SDXL architecture's configs")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="default: fp16 on GPU, fp32 on CPU")
    parser.add_argument("--sizes", help="comma list of square sides (default 1024,768 full; 128,64 tiny)")
    parser.add_argument(
        "--accelerate",
        help=f"comma list of engine variants as in realtime.py (default {CUDA_VARIANTS} on CUDA, off on CPU)",
    )
    parser.add_argument("--compile-backend", help="torch.compile backend (default inductor)")
    parser.add_argument("--compile-mode", default=None, help="inductor mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--compile-timeout", type=float, default=420.0, help="seconds to wait for compiles")
    parser.add_argument("--runs", type=int, help="timed runs per measurement (default 10 full, 3 tiny)")
    parser.add_argument("--warmup", type=int, help="untimed runs first (default 2 full, 1 tiny)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument(
        "--vae-upcast", action="store_true",
        help="the reference's VAE as SDXL base configures it (force_upcast: fp32 VAE calls in fp16 "
        "pipelines); default: fp16, as with the fp16-fix VAE",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    args = parser.parse_args()

    from backend.engine import select_device

    quiet_library_logs()
    choice = select_device(args.device, args.dtype)
    device, dtype = choice
    torch.set_grad_enabled(False)
    full = args.full
    timer = Timer(device, args.runs or (10 if full else 3), args.warmup or (2 if full else 1), args.out)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := [c for c in cases if c not in CASES]:
        raise SystemExit(f"unknown cases {unknown}: the cases are {', '.join(CASES)}")
    sides = [int(s) for s in (args.sizes or ("1024,768" if full else "128,64")).split(",") if s.strip()]
    variants = [
        v.strip() for v in (args.accelerate or (CUDA_VARIANTS if device.type == "cuda" else "off")).split(",")
    ]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        if full:
            models: Any = RandomModelsWithTaesd(
                random_sdxl(device, dtype, args.config_dir), random_taesdxl(device, dtype, args.config_dir)
            )
            checkpoint = CHECKPOINT
        else:
            models, checkpoint = tiny_sdxl_from_files(device, dtype, Path(workdir))
        options = AcceleratorSettings(compile_backend=args.compile_backend, compile_mode=args.compile_mode)
        engines: dict[str, Engine] = {}
        for variant in variants:
            variant_options, tuned_cudnn = variant_settings(variant, options)
            # working_size=False: the engine renders the canvas at its own size, as the pipeline does.
            settings = EngineSettings(working_size=False, accelerated=variant_options)
            engines[variant] = (CudnnTunedEngine if tuned_cudnn else Engine)(models, device, dtype, settings)
        components, taesd = models.components(checkpoint), models.taesd(SDXL)
        parts, reference_taesd, _ = reference_models(components, taesd, None, separate=device.type == "cuda")
        sizes = Sizes(sides[0], 0, 0, 0)  # realtime.py's SD1.5 cases read it; these take a side each
        live = SdxlLive(
            engines, parts, reference_taesd, None, "", checkpoint, timer, sizes, device, {},
            GpuMemory(device), args.vae_upcast, models, dtype,
        )  # fmt: skip
        engine_models = (components.unet, components.vae, components.text_encoder, components.text_encoder_2)
        timer.emit(
            {"name": "_env", "device": choice.label, "torch": torch.__version__, "variants": variants,
             "models": "random SDXL (full size)" if full else "tiny SDXL (test fixtures, loaded from files)",
             "taesd": taesd is not None, "runs": timer.runs, "warmup": timer.warmup, "sides": sides,
             "threads": torch.get_num_threads(), "setup_s": round(time.perf_counter() - started, 1),
             "weights_mib": weights_mib(*engine_models, taesd), "reference_vae_upcast": args.vae_upcast,
             "reference_copies": device.type == "cuda", "compile_backend": args.compile_backend or "inductor",
             "compile_mode": args.compile_mode}
        )  # fmt: skip
        if "live_img2img" in cases or "floors" in cases:  # (low_vram runs no live frame)
            live.warm_up([live.job(side) for side in sides], args.compile_timeout)
        for side in sides:
            for case in cases:
                getattr(live, case)(side)
    timer.emit({"name": "_done", "total_s": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
