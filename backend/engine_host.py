"""Owns the engine on the worker thread: loads it in the background and runs jobs for the scheduler.

torch and diffusers are imported here lazily, on the worker thread, so the server binds and answers
handshakes within a second of starting while the heavy imports and the model load happen behind it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from protocol import ErrorCode, JobParams, JobRequest, ProtocolError
from protocol.errors import clip_message

from .config import ServerConfig
from .model_check import UnusableCache
from .model_store import ModelError, ModelStore
from .scheduler import JobCancelledError

if TYPE_CHECKING:
    from .scheduler import Scheduler

log = logging.getLogger("backend.engine_host")


@dataclass
class JobInput:
    mode: str
    params: JobParams
    canvas: np.ndarray
    mask: np.ndarray | None = None
    control_images: dict[str, np.ndarray] = field(default_factory=dict)
    cache_key: str | None = None
    preview: bool = False  # a live frame: fast decoder and accelerated path; Generate/Apply get full quality


@dataclass
class ModelListing:
    models: dict[str, list[str]]  # kind -> names
    unusable: dict[str, dict[str, str]]  # kind -> name -> why it can't be used


@dataclass
class JobOutput:
    image: np.ndarray
    bounds: tuple[int, int, int, int]
    params: dict[str, Any]
    timings: dict[str, float]
    extra: list[np.ndarray] = field(default_factory=list)  # a batch's other images, in seed order


class EngineHost:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.store = ModelStore(config.models_dir, config.extra_model_dirs)
        self.device_name = "starting"
        self._engine: Any = None
        self._manager: Any = None
        self._load_error: BaseException | None = None
        self._loaded = threading.Event()
        self._checked = UnusableCache()

    @property
    def ready(self) -> bool:
        return self._loaded.is_set() and self._load_error is None

    def start_loading(self, scheduler: Scheduler[Any]) -> None:
        future = scheduler.run_in_worker(self._load)

        def report(done: Any) -> None:
            if done.exception() is not None:
                log.error("engine failed to start: %s", done.exception())

        future.add_done_callback(report)  # type: ignore[attr-defined]

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            from .engine import Engine, EngineSettings, select_device
            from .loading.manager import ModelManager

            choice = select_device(self.config.device)
            device, dtype = choice
            self.device_name = choice.label
            self._manager = ModelManager(self.store, device, dtype, config_dir=self.config.model_config_dir)
            settings = EngineSettings(accelerate=self.config.accelerate)
            self._engine = Engine(self._manager, device, dtype, settings)
            checkpoint = self.store.default_checkpoint()
            if self.config.preload and checkpoint is not None:
                try:
                    self._manager.components(checkpoint)
                    if self._engine.accelerator.active:
                        # One frame now, so the first stroke doesn't pay for it; the compile goes on behind.
                        log.info("live path: %s", self._engine.warm_up())
                except ModelError as error:
                    # A damaged default model is a model problem, not an engine failure: jobs still run
                    # (other checkpoints load; this one gets its model error with the job that asks for it).
                    log.warning("could not preload %s: %s", checkpoint, error.message)
            log.info("engine ready on %s in %.1f s", self.device_name, time.perf_counter() - started)
        except BaseException as error:
            self._load_error = error
            self.device_name = "unavailable"
            raise
        finally:
            self._loaded.set()

    def status_message(self) -> str:
        if self._load_error is not None:
            return f"The engine failed to start: {self._load_error}"
        if not self.store.list_kind("checkpoints"):
            return self.store.no_checkpoint_error().message
        if not self._loaded.is_set():
            return "Loading the engine; jobs sent now start when it is ready."
        return "Ready."

    def list_models(self) -> dict[str, list[str]]:
        return self.store.list_models()

    def default_model_file(self) -> Path | None:
        """The checkpoint jobs use unless they name one (a file or a diffusers folder); None if none."""
        name = self.store.default_checkpoint()
        try:
            return self.store.resolve("checkpoints", name) if name is not None else None
        except ModelError:
            return None

    def model_listing(self) -> ModelListing:
        """The model lists and, beside them, the listed files known to be unusable with why. Reads file
        headers the first time it sees a file version: call it off the event loop."""
        models = self.store.list_models()
        unusable: dict[str, dict[str, str]] = {}
        for kind, names in models.items():
            for name in names:
                try:
                    reason = self._checked.reason(kind, self.store.resolve(kind, name))
                except ModelError as error:
                    reason = error.message
                except Exception:  # a mark is advice: a bug in it must not fail the handshake
                    log.exception("could not check %s %s", kind, name)
                    reason = None
                if reason is not None:
                    unusable.setdefault(kind, {})[name] = reason
        return ModelListing(models, unusable)

    def loaded(self) -> dict[str, Any]:
        return self._manager.loaded() if self.ready else {}

    def resolved_models(self, params: JobParams) -> str:
        """What a job's defaults stand for now (the first checkpoint, the automatic LCM-LoRA), as text."""
        from .engine.models import choose_models

        try:
            return repr(choose_models(self.store, params))
        except ModelError as error:
            return f"unresolved: {error.message}"

    def check_models(self, request: JobRequest) -> None:
        """Fail fast, before any pixels are sent to the GPU, on model names that can't be used."""
        params = request.params
        try:
            if params.checkpoint is None:
                if self.store.default_checkpoint() is None:
                    raise self.store.no_checkpoint_error()
            else:
                self.store.resolve("checkpoints", params.checkpoint)
            for lora in params.loras:
                self.store.resolve("loras", lora.name)
            if params.lcm_lora is not None:
                self.store.resolve("loras", params.lcm_lora)
            if params.vae is not None:
                self.store.resolve("vae", params.vae)
            for control in params.controls:
                if control.model is not None:
                    self.store.resolve("controlnet", control.model)
        except ModelError as error:
            code, message = describe_failure(error)
            # With the full paths that the client's copy of the message won't show (see backend/redact.py).
            log.info("job %s refused: %s", request.job_id, message)
            raise ProtocolError(code, message, request.job_id) from None

    def run(
        self, job: JobInput, on_progress: Callable[[int, int], None], is_cancelled: Callable[[], bool]
    ) -> JobOutput:
        """Runs on the worker thread, after _load (same single-thread executor)."""
        if self._engine is None:
            raise ProtocolError(ErrorCode.INTERNAL, f"The engine failed to start: {self._load_error}")
        from .engine import EngineJob, JobCancelled

        engine_job = EngineJob(job.mode, job.params, job.canvas, job.mask, job.control_images, job.preview)
        try:
            result = self._engine.run(engine_job, on_progress, is_cancelled)
        except JobCancelled:
            raise JobCancelledError() from None
        return JobOutput(result.image, tuple(result.bounds), result.params, result.timings, result.extra)


def describe_failure(error: BaseException) -> tuple[ErrorCode, str]:
    """The error code and painter-readable sentence for anything a job can fail with (kept short: exception
    texts can quote whole inputs)."""
    code, message = _describe_failure(error)
    return code, clip_message(message)


def _describe_failure(error: BaseException) -> tuple[ErrorCode, str]:
    if isinstance(error, ProtocolError):
        return error.code, error.message
    if isinstance(error, ModelError):
        try:
            return ErrorCode(error.code), error.message
        except ValueError:
            return ErrorCode.MODEL_ERROR, error.message
    from .engine import EngineInputError

    if isinstance(error, EngineInputError):
        return ErrorCode.BAD_MESSAGE, str(error)
    if type(error).__name__ == "OutOfMemoryError":
        return ErrorCode.OUT_OF_MEMORY, "The GPU ran out of memory; try a smaller image or selection."
    return ErrorCode.INTERNAL, f"The engine failed: {type(error).__name__}: {error}"
