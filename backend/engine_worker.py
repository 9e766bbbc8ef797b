"""The engine worker: owns the Engine and its model cache on the scheduler's worker thread, loads them in the
background and runs jobs for the scheduler; on the event loop it lists model files and resolves each job's
models when the job arrives. It sits outside backend/engine/ because the engine imports neither the model
files nor the loaders: this is where they meet.

torch and diffusers are imported here lazily, on the worker thread, so the server binds and answers
handshakes within a second of starting while the heavy imports and the model load happen behind it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import ErrorCode, JobRequest, ProtocolError
from protocol.errors import clip_message

from .config import ServerConfig
from .engine.jobs import EngineJob, EngineResult
from .engine.model_choice import ModelChoice, choose_models
from .model_check import UnusableCache
from .model_errors import ModelError
from .model_files import ModelStore

if TYPE_CHECKING:
    from .engine import Engine
    from .loading.model_cache import ModelCache
    from .scheduler import Scheduler

log = logging.getLogger("backend.engine_worker")


@dataclass
class ModelListing:
    models: dict[str, list[str]]  # kind -> names
    unusable: dict[str, dict[str, str]]  # kind -> name -> why it can't be used


class EngineWorker:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.store = ModelStore(config.models_dir, config.extra_model_dirs)
        self.device_name = "starting"
        self._engine: Engine | None = None
        self._models: ModelCache | None = None
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
            from .engine import AcceleratorSettings, Engine, EngineSettings, select_device
            from .loading.model_cache import ModelCache

            choice = select_device(self.config.device)
            device, dtype = choice
            self.device_name = choice.label
            models = ModelCache(self.store, device, dtype, config_dir=self.config.model_config_dir)
            settings = EngineSettings(accelerated=AcceleratorSettings(mode=self.config.accelerate))
            engine = Engine(models, device, dtype, settings)
            self._models, self._engine = models, engine
            checkpoint = self.store.default_checkpoint()
            if self.config.preload and checkpoint is not None:
                try:
                    models.components(checkpoint)
                    if engine.accelerator.active:
                        # One frame now, so the first stroke doesn't pay for it; the compile goes on behind.
                        log.info("live path: %s", engine.warm_up())
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
        """What is loaded, and the device (a welcome sent while loading could only say "starting")."""
        if not self.ready or self._models is None:
            return {}
        return {**self._models.loaded(), "device": self.device_name}

    def resolve_models(self, request: JobRequest) -> ModelChoice:
        """The job's models with their defaults applied (the store's first checkpoint, the automatic
        LCM-LoRA), resolved once, when the job arrives: the choice rides on its EngineJob to the engine and
        keys the live cache, so the model folders are walked once per job. Fails fast, before any pixels are
        sent to the GPU, on model names that can't be used."""
        params = request.params
        try:
            choice = choose_models(self.store, params)
            self.store.resolve("checkpoints", choice.checkpoint)
            # Every LoRA named, strength 0 or not: a typo is reported even while its slider is at 0.
            named_loras = [lora.name for lora in params.loras]
            if params.lcm_lora is not None:
                named_loras.append(params.lcm_lora)
            for name in named_loras:
                self.store.resolve("loras", name)
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
        return choice

    def run(
        self, job: EngineJob, on_progress: Callable[[int, int], None], is_cancelled: Callable[[], bool]
    ) -> EngineResult:
        """Runs on the worker thread, after _load (same single-thread executor); a cancelled job raises the
        engine's JobCancelled, which the scheduler reports as cancelled."""
        if self._engine is None:
            raise ProtocolError(ErrorCode.INTERNAL, f"The engine failed to start: {self._load_error}")
        return self._engine.run(job, on_progress, is_cancelled)


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
