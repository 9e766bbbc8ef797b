"""Serves model calls through static-shape accelerated versions once they are ready, eager until then.

Each distinct call signature (which function, which models, input shapes and dtypes) gets a slot:

    new ─(cuda_graphs: at once; compile: background compile done)─► compiled ─(captured on first use)─► ready

While a slot is not ready the plain eager function serves, so a painter never waits for a compile: in
"compile" mode a CUDA graph of the eager function serves first (capturing takes a second, compiling minutes)
and is replaced once the compiled version is captured. A slot whose compile or capture fails stays eager.

Capture happens on the serving thread, never in the background: a CUDA graph must not record another
thread's work, and serving and capturing on one thread need no locking.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .buckets import DEFAULT_BUCKET, bucket_side
from .compiler import compile_function, use_cache_dir
from .static_call import StaticCall, TensorFn, capture_cuda_graph, capture_direct

log = logging.getLogger(__name__)

ACCELERATE_MODES = ("auto", "off", "compile", "cuda_graphs")
CAPTURE_METHODS = ("auto", "cuda_graph", "direct")
# What a compiled part is specialised for: each input's shape and dtype.
CallSignature = tuple[tuple[tuple[int, ...], torch.dtype], ...]


@dataclass
class AcceleratorSettings:
    mode: str = "auto"  # --accelerate (ServerConfig.accelerate): auto = compile on CUDA, else off
    bucket: int = DEFAULT_BUCKET  # generation sizes round up to this many pixels (<= 8: no bucketing)
    compile_backend: str | None = None  # None = inductor; "eager"/"aot_eager" exercise the plumbing on CPU
    # Inductor's default mode: we capture CUDA graphs ourselves, so "reduce-overhead" (its own graphs) must
    # not be used; "max-autotune-no-cudagraphs" may be a little faster but compiles for many minutes.
    compile_mode: str | None = None
    compile_options: dict[str, Any] | None = None  # inductor config (e.g. compiler.TUNED_INDUCTOR_OPTIONS)
    channels_last: bool = True  # on CUDA: the layout tensor-core convolutions prefer (models converted once)
    # cudnn's autotuner picks the fastest convolution per shape (static shapes: tuned once per bucket). It is
    # process-wide, so final renders use the tuned kernels too: the same maths, other algorithms.
    cudnn_benchmark: bool = False
    max_slots: int = 12  # distinct shapes/paths kept captured; the least recently used beyond that are freed
    cache_dir: str | None = None  # persistent compile caches; None = ~/.cache/krita-live-diffusion
    background: bool = True  # compile in a background thread while the eager path serves
    capture: str = "auto"  # "cuda_graph" on CUDA; "direct" = static buffers without a graph (CPU tests)
    # Live LCM frames with TAESD run as one function (frame.py), captured whole; off: one call per step.
    whole_frame: bool = True
    # How a whole frame compiles: "parts" (each model call once, shared by every frame variant) or "whole"
    # (one graph of the unrolled frame: fusion across steps, but a compile of minutes per variant).
    frame_compile: str = "parts"


# (eager function, example inputs) -> its compiled version, warmed up on the examples.
Compiler = Callable[[TensorFn, list[torch.Tensor]], TensorFn]


@dataclass
class _Slot:
    eager: TensorFn
    compiler: Compiler | None = None  # None: torch.compile of the whole function
    state: str = "new"  # new | compiling | compiled | ready | failed
    compiled: TensorFn | None = None
    static: StaticCall | None = None
    static_is_compiled: bool = False
    eager_capture_failed: bool = False
    compile_s: float | None = None
    error: str | None = None
    future: Future[None] | None = field(default=None, repr=False)


def resolve_mode(mode: str, device: torch.device) -> str:
    """The mode actually used: "off", "compile" or "cuda_graphs"."""
    if mode not in ACCELERATE_MODES:
        raise ValueError(f"Unknown accelerate mode {mode!r}; use one of {', '.join(ACCELERATE_MODES)}.")
    if mode == "auto":
        return "compile" if device.type == "cuda" else "off"
    if mode == "cuda_graphs" and device.type != "cuda":
        return "off"  # nothing to capture on CPU/MPS: same results, eager speed
    return mode


class Accelerator:
    def __init__(self, settings: AcceleratorSettings, device: torch.device) -> None:
        self.settings = settings
        self.device = torch.device(device)
        self.mode = resolve_mode(settings.mode, self.device)
        capture = settings.capture
        if capture not in CAPTURE_METHODS:
            raise ValueError(f"Unknown capture method {capture!r}; use one of {', '.join(CAPTURE_METHODS)}.")
        if capture == "auto":
            capture = "cuda_graph" if self.device.type == "cuda" else "direct"
        self.capture_method = capture
        self.stats: dict[str, int] = {"eager": 0, "accelerated": 0, "captures": 0, "compiles": 0}
        self.compile_seconds: list[float] = []
        self._slots: dict[Hashable, _Slot] = {}
        # compiled parts shared by slots (see compile_part), with the inputs they were compiled for
        self._parts: dict[tuple[Hashable, CallSignature], tuple[TensorFn, list[torch.Tensor]]] = {}
        self._prepared: set[int] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # Held by a compile while it runs the models and by a job that changes them for its own duration
        # (reference images install adapters into the UNet): neither sees the other's half-way state.
        self._models = threading.RLock()
        if self.mode == "compile":
            self.cache_dir = use_cache_dir(settings.cache_dir)
        if self.active and settings.cudnn_benchmark and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def bucket(self, side: int) -> int:
        return bucket_side(side, self.settings.bucket) if self.active else side

    def prepare_module(self, module: Any) -> None:
        """Bring a model to the accelerated path's memory layout, once, before any of its calls is compiled.

        `Module.to(memory_format=...)` swaps each parameter's data but keeps the Parameter objects, so the
        LoRA fuser's in-place copies still land in the weights the graphs read. The final-render path shares
        the models and runs channels_last too when acceleration is on (same maths, other kernels).
        """
        if not (self.active and self.settings.channels_last and self.device.type == "cuda"):
            return
        if id(module) in self._prepared:
            return
        module.to(memory_format=torch.channels_last)
        self._prepared.add(id(module))

    def call(
        self,
        key: Hashable,
        build: Callable[[], TensorFn],
        args: Sequence[torch.Tensor],
        compiler: Compiler | None = None,
    ) -> torch.Tensor:
        """`build()(*args)`, through the accelerated version of that function once it is ready.

        `key` must identify the function (and the models it closes over); shapes and dtypes are added here.
        `compiler` makes the compiled version (default: torch.compile of the whole function); a function made
        of parts (a whole live frame) compiles its parts with `compile_part` instead.
        """
        if not self.active:
            return build()(*args)
        full_key = (key, call_signature(args))
        slot = self._slots.pop(full_key, None)
        if slot is None:
            slot = _Slot(build(), compiler)
            self._start(slot, args)
        self._slots[full_key] = slot  # most recently used last
        while len(self._slots) > max(1, self.settings.max_slots):
            # Dropping a slot frees its graph's memory pool; a running compile of it finishes unused.
            self._slots.pop(next(iter(self._slots)))
        if slot.state == "compiled" and (slot.static is None or not slot.static_is_compiled):
            self._capture(slot, args, compiled=True)
        elif slot.static is None and slot.state == "compiling" and not slot.eager_capture_failed:
            self._capture(slot, args, compiled=False)  # a graph of the eager function serves meanwhile
        if slot.static is not None:
            self.stats["accelerated"] += 1
            return slot.static(*args)
        self.stats["eager"] += 1
        return slot.eager(*args)

    def status(self) -> dict[str, Any]:
        states = [slot.state for slot in self._slots.values()]
        return {
            "mode": self.mode,
            "capture": self.capture_method,
            "slots": len(states),
            "parts": len(self._parts),
            "ready": states.count("ready"),
            "compiling": states.count("compiling"),
            "failed": states.count("failed"),
            "compile_s": [round(s, 1) for s in self.compile_seconds],
            "errors": sorted({slot.error[:300] for slot in self._slots.values() if slot.error}),
            **self.stats,
        }

    @contextmanager
    def models_held(self) -> Iterator[None]:
        """The models for a job that changes them and puts them back before it ends: it waits for a compile
        that is running them (tracing reads the modules), and the next compile waits for it."""
        with self._models:
            yield

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every background compile (tests, benchmarks, warm-up scripts); True if all finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for slot in list(self._slots.values()):
            if slot.future is None:
                continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                slot.future.result(remaining)
            except FutureTimeout:  # a distinct class before Python 3.11
                return False
        return True

    def reset(self) -> None:
        """Drop every slot (the models changed: a new checkpoint). Running compiles finish and are dropped."""
        self._slots = {}
        self._parts = {}
        self._prepared = set()

    # --- internals -----------------------------------------------------------------------------------------

    def _start(self, slot: _Slot, args: Sequence[torch.Tensor]) -> None:
        if self.mode == "cuda_graphs":
            slot.compiled, slot.state = slot.eager, "compiled"
            return
        slot.state = "compiling"
        examples = [a.detach().clone() for a in args]
        if self.settings.background:
            slot.future = self._pool().submit(self._compile, slot, examples)
        else:
            self._compile(slot, examples)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                # One thread: compiles queue up instead of fighting for the CPU with the serving thread.
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="accelerate-compile")
            return self._executor

    def compile_part(self, key: Hashable, fn: TensorFn, examples: Sequence[torch.Tensor]) -> TensorFn:
        """The compiled version of one model call inside a larger function (compile threads only).

        Parts are shared: every live-frame variant that calls the same UNet at the same shapes (another step
        count, img2img or inpaint) reuses one compile instead of tracing the UNet again.
        """
        parts = self._parts  # a reset() meanwhile must not get this (old models') part
        full_key = (key, call_signature(examples))
        part = parts.get(full_key)
        if part is None:
            part = parts[full_key] = (self._compile_whole(fn, list(examples)), list(examples))
        return part[0]

    def compiled_parts(self) -> list[tuple[Hashable, TensorFn, list[torch.Tensor]]]:
        """(key, compiled function, the inputs it was compiled for) of each part (benchmarks, diagnostics)."""
        return [(key, fn, examples) for (key, _), (fn, examples) in self._parts.items()]

    def _compile_whole(self, fn: TensorFn, examples: list[torch.Tensor]) -> TensorFn:
        settings = self.settings
        compiled = compile_function(
            fn, settings.compile_backend, settings.compile_mode, settings.compile_options
        )
        self.warm_function(compiled, examples)
        return compiled

    def warm_function(self, fn: TensorFn, examples: list[torch.Tensor]) -> None:
        with torch.inference_mode():
            for _ in range(2):  # the first call compiles (and autotunes); the second proves it is stable
                fn(*examples)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

    def _compile(self, slot: _Slot, examples: list[torch.Tensor]) -> None:
        started = time.perf_counter()
        try:
            with self._models:
                compiled = (slot.compiler or self._compile_whole)(slot.eager, examples)
        except Exception as error:  # noqa: BLE001 - a broken compile must never break painting: stay eager
            slot.state, slot.error = "failed", f"{type(error).__name__}: {error}"
            log.warning("accelerated path unavailable, staying eager: %s", slot.error)
            return
        slot.compile_s = time.perf_counter() - started
        self.compile_seconds.append(slot.compile_s)
        self.stats["compiles"] += 1
        log.info("compiled a model call in %.1f s", slot.compile_s)
        slot.compiled, slot.state = compiled, "compiled"

    def _capture(self, slot: _Slot, args: Sequence[torch.Tensor], compiled: bool) -> None:
        fn = slot.compiled if compiled else slot.eager
        assert fn is not None
        try:
            if self.capture_method == "cuda_graph":
                static = capture_cuda_graph(fn, args)
            else:
                static = capture_direct(fn, args)
        except Exception as error:  # noqa: BLE001 - any capture failure leaves the eager path serving
            # Whatever served before (the eager graph, or plain eager) keeps serving; never retried.
            log.warning("capturing a model call failed: %s: %s", type(error).__name__, error)
            if compiled:
                slot.state, slot.error = "failed", f"{type(error).__name__}: {error}"
            else:
                slot.eager_capture_failed = True
            return
        self.stats["captures"] += 1
        slot.static, slot.static_is_compiled = static, compiled
        if compiled:
            slot.state = "ready"


def call_signature(args: Sequence[torch.Tensor]) -> CallSignature:
    return tuple((tuple(a.shape), a.dtype) for a in args)
