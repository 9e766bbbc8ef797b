"""The job's model choice (`ModelChoice`, `LoraSpec`) and how it is resolved from the job's parameters
(`choose_models`: default checkpoint, the automatic LCM-LoRA of the checkpoint's family), plus what the engine
needs from a model source (`ModelSource`, `Components`: protocols, so tests and other loaders can stand in for
the loader's ModelCache).

The server resolves a job's choice once, when the job arrives (`EngineWorker.resolve_models`), and it rides on
the job (`EngineJob.models`); the engine resolves only jobs that come without one."""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from backend.model_families import SD15, SDXL, ModelFamily
from protocol.messages import JobParams
from protocol.registry import pick_controlnet

from .prompt_models import prompt_models
from .prompt_syntax import EmbeddingRef
from .reference_models import ReferenceModels, choose_reference_models, family_of


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
    # The embedding files the prompts name (prompt_models.py); their <lora:...> tags' LoRAs are in `loras`.
    embeddings: tuple[EmbeddingRef, ...] = ()
    # Each reference image's IP-Adapter and CLIP vision encoder (reference_models.py); None: it can't act.
    references: tuple[ReferenceModels | None, ...] = ()

    def text_encoder_state(self) -> Hashable:
        """What changes the text encoder's weights besides the checkpoint: the LoRAs' clip strengths."""
        fused = [*self.loras, *([self.lcm_lora] if self.lcm_lora else [])]
        return tuple((lora.name, lora.clip_strength) for lora in fused if lora.clip_strength != 0)


# Words in a LoRA's file name that say its family, for files whose header doesn't (their cross-attention
# width is no family's): the published LCM-LoRAs are `lcm-lora-sdxl` and `lcm-lora-sdv1-5`.
FAMILY_NAME_WORDS = {
    SDXL.name: re.compile(r"sdxl|(?<![a-z])xl(?![a-z])"),
    SD15.name: re.compile(r"sd[-_ ]?v?1[-_. ]?5(?![0-9])"),
}


def lora_family(store: Any, name: str) -> tuple[bool, str | None]:
    """Whether the LoRA may be used (its header shows nothing wrong), and its family: as its header says,
    else as its name says (FAMILY_NAME_WORDS), else None."""
    verdict = getattr(store, "verdict", None)
    judged = verdict("loras", name) if verdict is not None else None
    if judged is not None and judged.reason is not None:
        return False, None
    if judged is not None and judged.family is not None:
        return True, judged.family
    lowered = name.lower()
    by_name = [family for family, words in FAMILY_NAME_WORDS.items() if words.search(lowered)]
    return True, by_name[0] if len(by_name) == 1 else None


def find_lcm_lora(store: Any, family: str = SD15.name) -> str | None:
    """The LCM-LoRA for LCM sampling on a checkpoint of `family` when the job names none: the first usable
    LoRA with 'lcm' in its name that is made for that family. Failing that, for SD1.5 only, the first whose
    family nothing tells (before SDXL, every LoRA was taken for SD1.5's); never one of another family, which
    the loader would refuse."""
    untold: str | None = None
    for name in store.list_kind("loras"):
        if "lcm" not in name.lower():
            continue
        usable, found = lora_family(store, name)
        if not usable:
            continue
        if found == family:
            return name
        if found is None and untold is None:
            untold = name
    return untold if family == SD15.name else None


def choose_models(store: Any, params: JobParams) -> ModelChoice:
    """Apply defaults: the store's first checkpoint when none is named; with the LCM sampler and no LCM-LoRA
    named, the LCM-LoRA of the checkpoint's family (find_lcm_lora; none found: run without, which suits an
    LCM-merged checkpoint). A strength of 0 means "not fused", which saves the model cache a fuse. The
    prompts' `<lora:...>` tags add their LoRAs (unless the job's list or LCM-LoRA has the file already) and
    their embedding names are found (prompt_models.py): a name without a file is a ModelError here."""
    checkpoint = params.checkpoint
    if checkpoint is None:
        checkpoint = store.default_checkpoint()
        if checkpoint is None:
            raise store.no_checkpoint_error()
    lcm_name = params.lcm_lora
    if lcm_name is None and params.sampler == "lcm" and params.lcm_lora_strength != 0:
        lcm_name = find_lcm_lora(store, family_of(store, checkpoint).name)
    lcm = None
    if lcm_name is not None and params.lcm_lora_strength != 0:
        lcm = LoraSpec(lcm_name, params.lcm_lora_strength, params.lcm_lora_strength)
    loras = tuple(
        LoraSpec(lora.name, lora.model_strength, lora.clip_strength)
        for lora in params.loras
        if lora.model_strength != 0 or lora.clip_strength != 0
    )
    inline = prompt_models(store, (params.prompt, params.negative_prompt))  # <lora:...> tags, embeddings
    named = {lora.name for lora in params.loras} | {lcm_name}
    loras += tuple(LoraSpec(*lora) for lora in inline.added_loras(named))
    references = choose_reference_models(store, params.references, checkpoint)
    controlnets = _controlnets(store, params, checkpoint)
    return ModelChoice(checkpoint, params.vae, loras, lcm, controlnets, inline.embeddings, references)


def _controlnets(store: Any, params: JobParams, checkpoint: str) -> tuple[str | None, ...]:
    """Each control's ControlNet: the one it names, else the one its kind's words pick among the files made
    for the checkpoint's family (or whose family nothing tells): with SD 1.5 and SDXL ControlNets side by
    side, an SDXL checkpoint's scribble is never the SD 1.5 scribble file the loader would refuse."""
    if all(control.model is not None for control in params.controls):
        return tuple(control.model for control in params.controls)
    family = family_of(store, checkpoint)
    installed = fitting_controlnets(store, store.list_kind("controlnet"), family)  # one walk for them all
    return tuple(
        control.model if control.model is not None else pick_controlnet(installed, control.kind)
        for control in params.controls
    )


def fitting_controlnets(store: Any, names: Sequence[str], family: ModelFamily) -> list[str]:
    """`names` without the ControlNets whose header says they are made for another family than `family` (as
    the model lists mark them, backend/model_check.py); one whose header names no family may fit. A store
    that judges no headers (tests' stand-ins) keeps them all."""
    verdict = getattr(store, "verdict", None)
    if verdict is None:
        return list(names)
    return [name for name in names if verdict("controlnet", name).family in (None, family.name)]


def load_components(models: ModelSource, choice: ModelChoice) -> Components:
    return models.components(choice.checkpoint, loras=choice.loras, vae=choice.vae, lcm_lora=choice.lcm_lora)
