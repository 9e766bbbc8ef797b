"""The job's model choice (`ModelChoice`, `LoraSpec`) and how it is resolved from the job's parameters
(`choose_models`: default checkpoint, automatic LCM-LoRA), plus what the engine needs from a model source
(`ModelSource`, `Components`: protocols, so tests and other loaders can stand in for the loader's ModelCache).

The server resolves a job's choice once, when the job arrives (`EngineWorker.resolve_models`), and it rides on
the job (`EngineJob.models`); the engine resolves only jobs that come without one."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from protocol.messages import JobParams
from protocol.registry import pick_controlnet


class Components(Protocol):
    """The loaded models of one checkpoint, LoRAs fused (`backend.loading.checkpoint.PipelineComponents`);
    read-only, as that frozen dataclass is."""

    @property
    def unet(self) -> Any: ...
    @property
    def vae(self) -> Any: ...
    @property
    def text_encoder(self) -> Any: ...
    @property
    def tokenizer(self) -> Any: ...
    @property
    def scheduler_config(self) -> dict[str, Any]: ...
    @property
    def is_inpaint(self) -> bool: ...
    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA to fuse and its strengths: on the UNet (model) and on the text encoder (clip)."""

    name: str
    model_strength: float = 1.0
    clip_strength: float = 1.0


class ModelSource(Protocol):
    """`backend.loading.model_cache.ModelCache`, as far as the engine uses it. The engine imports neither it
    nor the model files (`backend.model_files`): both are duck-typed, and the model errors come from
    `backend.model_errors`."""

    store: Any

    def components(
        self,
        checkpoint: str,
        loras: Sequence[LoraSpec] = (),
        vae: str | None = None,
        lcm_lora: LoraSpec | None = None,
    ) -> Components: ...

    def controlnet(self, name: str) -> Any: ...


@dataclass(frozen=True)
class ModelChoice:
    """The job's models after defaults are applied: what is loaded and reported back in the result."""

    checkpoint: str
    vae: str | None
    loras: tuple[LoraSpec, ...]
    lcm_lora: LoraSpec | None
    # Each control's ControlNet: the one it names, or the one its kind's model words pick (None: none fits).
    controlnets: tuple[str | None, ...] = ()

    def text_encoder_state(self) -> Hashable:
        """What changes the text encoder's weights besides the checkpoint: the LoRAs' clip strengths."""
        fused = [*self.loras, *([self.lcm_lora] if self.lcm_lora else [])]
        return tuple((lora.name, lora.clip_strength) for lora in fused if lora.clip_strength != 0)


def find_lcm_lora(store: Any) -> str | None:
    """The first LoRA whose name mentions LCM, for LCM sampling when the job names none."""
    for name in store.list_kind("loras"):
        if "lcm" in name.lower():
            return name
    return None


def choose_models(store: Any, params: JobParams) -> ModelChoice:
    """Apply defaults: the store's first checkpoint when none is named; with the LCM sampler and no LCM-LoRA
    named, the first LoRA with 'lcm' in its name (none found: run without, which suits an LCM-merged
    checkpoint). A strength of 0 means "not fused", which saves the model cache a fuse."""
    checkpoint = params.checkpoint
    if checkpoint is None:
        checkpoint = store.default_checkpoint()
        if checkpoint is None:
            raise store.no_checkpoint_error()
    lcm_name = params.lcm_lora
    if lcm_name is None and params.sampler == "lcm" and params.lcm_lora_strength != 0:
        lcm_name = find_lcm_lora(store)
    lcm = None
    if lcm_name is not None and params.lcm_lora_strength != 0:
        lcm = LoraSpec(lcm_name, params.lcm_lora_strength, params.lcm_lora_strength)
    loras = tuple(
        LoraSpec(lora.name, lora.model_strength, lora.clip_strength)
        for lora in params.loras
        if lora.model_strength != 0 or lora.clip_strength != 0
    )
    return ModelChoice(checkpoint, params.vae, loras, lcm, _controlnets(store, params))


def _controlnets(store: Any, params: JobParams) -> tuple[str | None, ...]:
    if all(control.model is not None for control in params.controls):
        return tuple(control.model for control in params.controls)
    installed = store.list_kind("controlnet")  # one folder walk for all the unnamed controls
    return tuple(
        control.model if control.model is not None else pick_controlnet(installed, control.kind)
        for control in params.controls
    )


def load_components(models: ModelSource, choice: ModelChoice) -> Components:
    return models.components(choice.checkpoint, loras=choice.loras, vae=choice.vae, lcm_lora=choice.lcm_lora)
