"""What the engine needs from model loading (duck-typed, so tests and other loaders can stand in) and the
resolution of the job's model choices: default checkpoint, automatic LCM-LoRA."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from protocol.messages import JobParams


class Components(Protocol):
    """The loaded models of one checkpoint, LoRAs fused (`backend.loading.checkpoint.PipelineComponents`)."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict[str, Any]
    is_inpaint: bool
    name: str


class ModelSource(Protocol):
    """`backend.loading.manager.ModelManager`, as far as the engine uses it."""

    store: Any

    def components(
        self, checkpoint: str, loras: Sequence[Any] = (), vae: str | None = None, lcm_lora: Any = None
    ) -> Components: ...

    def controlnet(self, name: str) -> Any: ...


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA to fuse; converted to the manager's LoraChoice at the call."""

    name: str
    model_strength: float
    clip_strength: float


@dataclass(frozen=True)
class ModelChoice:
    """The job's models after defaults are applied: what is loaded and reported back in the result."""

    checkpoint: str
    vae: str | None
    loras: tuple[LoraSpec, ...]
    lcm_lora: LoraSpec | None

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
    checkpoint). A strength of 0 means "not fused", which saves the manager a fuse."""
    checkpoint = params.checkpoint
    if checkpoint is None:
        checkpoint = store.default_checkpoint()
        if checkpoint is None:
            raise store.no_checkpoint_error()
    lcm_name = params.lcm_lora
    if lcm_name is None and params.sampler == "lcm":
        lcm_name = find_lcm_lora(store)
    lcm = None
    if lcm_name is not None and params.lcm_lora_strength != 0:
        lcm = LoraSpec(lcm_name, params.lcm_lora_strength, params.lcm_lora_strength)
    loras = tuple(
        LoraSpec(lora.name, lora.model_strength, lora.clip_strength)
        for lora in params.loras
        if lora.model_strength != 0 or lora.clip_strength != 0
    )
    return ModelChoice(checkpoint, params.vae, loras, lcm)


def _lora_choice_class() -> Any:
    try:
        from backend.loading.manager import LoraChoice
    except ImportError:  # a stand-in model source (tests) takes any object with the same three fields
        return LoraSpec
    return LoraChoice


def load_components(models: ModelSource, choice: ModelChoice) -> Components:
    lora_choice = _lora_choice_class()

    def convert(spec: LoraSpec) -> Any:
        return lora_choice(spec.name, spec.model_strength, spec.clip_strength)

    return models.components(
        choice.checkpoint,
        loras=tuple(convert(lora) for lora in choice.loras),
        vae=choice.vae,
        lcm_lora=convert(choice.lcm_lora) if choice.lcm_lora else None,
    )
