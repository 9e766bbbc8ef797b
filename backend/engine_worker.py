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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import ErrorCode, JobRequest, ProtocolError
from protocol.errors import clip_message

from .config import ServerConfig
from .engine.jobs import EngineJob, EngineResult
from .engine.model_choice import ModelChoice, choose_models
from .model_errors import ModelError
from .model_files import ModelStore

if TYPE_CHECKING:
    import torch

    from .engine import Engine
    from .loading.model_cache import ModelCache
    from .scheduler import Scheduler

log = logging.getLogger("backend.engine_worker")


@dataclass
class ModelListing:
    models: dict[str, list[str]]  # kind -> names
    unusable: dict[str, dict[str, str]]  # kind -> name -> why it can't be used
    # kind -> name -> family (backend/model_families.py), for the files whose header says
    families: dict[str, dict[str, str]] = field(default_factory=dict[str, dict[str, str]])
    default_checkpoint: str | None = None  # what a job naming no checkpoint gets


class EngineWorker:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.store = ModelStore(config.models_dir, config.extra_model_dirs)
        self.device_name = "starting"
        self.device: torch.device | None = None  # once chosen (device memory for /metrics)
        self._engine: Engine | None = None
        self._models: ModelCache | None = None
        self._load_error: BaseException | None = None
        self._loaded = threading.Event()

    @property
    def ready(self) -> bool:
        return self._loaded.is_set() and self._load_error is None

    @property
    def failed(self) -> bool:
        """The engine could not start (no such device, a broken install): this worker will run no job."""
        return self._load_error is not None

    def start_loading(self, scheduler: Scheduler[Any]) -> None:
        future = scheduler.run_in_worker(self._load)

        def report(done: Any) -> None:
            if done.exception() is not None:
                log.error("engine failed to start: %s", done.exception())

        future.add_done_callback(report)  # type: ignore[attr-defined]

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            import torch

            from .engine import AcceleratorSettings, Engine, EngineSettings, select_device
            from .loading.model_cache import ModelCache

            choice = select_device(self.config.device)
            device, dtype = choice
            self.device_name = choice.label
            self.device = device
            # Low-VRAM: the cache keeps the models in host memory; the engine brings them per phase.
            home = torch.device("cpu") if self.config.low_vram else device
            models = ModelCache(self.store, home, dtype, config_dir=self.config.model_config_dir)
            settings = EngineSettings(
                accelerated=AcceleratorSettings(mode=self.config.accelerate), low_vram=self.config.low_vram
            )
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
        if self.store.default_checkpoint() is None:
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
        """The model lists and, beside them, the listed files known to be unusable with why, each file's
        family where its header says, and the default checkpoint. Reads file headers the first time it sees
        a file version: call it off the event loop."""
        models = self.store.list_models()
        listing = ModelListing(models, {})
        for kind, names in models.items():
            for name in names:
                try:
                    verdict = self.store.verdict(kind, name)
                except Exception:  # a mark is advice: a bug in it must not fail the handshake
                    log.exception("could not check %s %s", kind, name)
                    continue
                if verdict.reason is not None:
                    listing.unusable.setdefault(kind, {})[name] = verdict.reason
                if verdict.family is not None:
                    listing.families.setdefault(kind, {})[name] = verdict.family
        try:
            listing.default_checkpoint = self.store.default_checkpoint()
        except Exception:  # as above: the lists still go out
            log.exception("could not choose the default checkpoint")
        return listing

    def loaded(self) -> dict[str, Any]:
        """What is loaded, and the device (a welcome sent while loading could only say "starting")."""
        if not self.ready or self._models is None:
            return {}
        return {**self._models.loaded(), "device": self.device_name}

    def resolve_models(self, request: JobRequest) -> ModelChoice:
        """The job's models with their defaults applied (the store's default checkpoint, the automatic
        LCM-LoRA), resolved once, when the job arrives: the choice rides on its EngineJob to the engine and
        keys the live cache, so the model folders are walked once per job. Fails fast, before any pixels are
        sent to the GPU, on model names that can't be used, and on files whose header already shows that
        the loader would refuse them (their marks in the model lists): such a job never reaches the engine,
        so the loaded checkpoint stays as it is."""
        params = request.params
        try:
            choice = choose_models(self.store, params)
            self.store.resolve_usable("checkpoints", choice.checkpoint)
            # Every LoRA named, strength 0 or not: a typo is reported even while its slider is at 0.
            loras = {lora.name for lora in (*params.loras, *choice.loras)}  # choice: + the prompts' tags
            if choice.lcm_lora is not None:
                loras.add(choice.lcm_lora.name)
            if params.lcm_lora is not None:
                loras.add(params.lcm_lora)
            for name in sorted(loras):
                self.store.resolve_usable("loras", name)
            if params.vae is not None:
                self.store.resolve_usable("vae", params.vae)
            for embedding in choice.embeddings:  # those the prompts name (choose_models found them)
                self.store.resolve_usable("embeddings", embedding.name)
            for name in choice.controlnets:  # those named and those picked by their kind's words
                if name is not None:
                    self.store.resolve_usable("controlnet", name)
            if params.upscale is not None and params.upscale.model is not None:
                self.store.resolve_usable("upscale_models", params.upscale.model)
            for reference in choice.references:  # chosen by choose_models, each file checked there
                if reference is not None:
                    self.store.resolve_usable("clip_vision", reference.encoder)
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
        try:
            return self._engine.run(job, on_progress, is_cancelled)
        finally:
            self._note_checkpoint_used(job)

    def _note_checkpoint_used(self, job: EngineJob) -> None:
        """A checkpoint a job named and that is now loaded becomes the default: the painter's working model,
        also for jobs (and plugins) that name none. Noted even if the job failed after the load."""
        named = job.params.checkpoint
        if (
            named is not None
            and self._models is not None
            and self._models.loaded().get("checkpoint") == named
        ):
            self.store.last_used_checkpoint = named


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
