"""Which IP-Adapter and CLIP vision encoder each reference image of a job uses (stdlib only: intake runs it).

A reference names its IP-Adapter file or leaves it to the server: the first listed file made for the
checkpoint's family (one whose width names no family may fit: test models). Its encoder is never named: the
first listed CLIP vision encoder whose output is as wide as what the adapter reads (the projected embedding
for base adapters, the hidden states for plus / full-face ones). Both are chosen when the job arrives
(EngineWorker.resolve_models), so a missing file fails before any pixels are sent; files are described from
their headers, each once per version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.file_headers import HeaderError, read_header
from backend.loading.clip_vision import EncoderInfo, encoder_info
from backend.loading.ip_adapter import IPAdapterInfo, describe_ip_adapter
from backend.loading.stamps import FileStamp, file_stamp
from backend.model_errors import ModelError, ModelNotFoundError
from backend.model_families import FAMILIES, SD15, SDXL, ModelFamily, describe_mismatch
from protocol.references import ReferenceParam

# The file a painter of each family downloads first, named in the advice when none is found.
SUGGESTED_ADAPTERS = {
    SD15.name: "ip-adapter_sd15.safetensors",
    SDXL.name: "ip-adapter_sdxl_vit-h.safetensors",
}
# The published encoders by the width IP-Adapters read from them: (projected embedding, hidden states).
ENCODER_NAMES = {
    1024: "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
    1280: "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
}
HIDDEN_TO_EMBEDDING = {1280: 1024, 1664: 1280}
MAX_DESCRIBED = 256


@dataclass(frozen=True)
class ReferenceModels:
    """The files one reference uses: names in the model lists' `ipadapter` and `clip_vision`."""

    adapter: str
    encoder: str


_described: dict[tuple[str, str], tuple[FileStamp | None, Any]] = {}


def _describe(kind: str, path: Path) -> Any:
    """IPAdapterInfo / EncoderInfo of a file, read once per file version; ValueError when it is none."""
    key, stamp = (kind, str(path)), file_stamp(path)
    known = _described.get(key)
    if known is not None and stamp is not None and known[0] == stamp:
        return known[1]
    if kind == "clip_vision":
        found: Any = encoder_info(path)
    else:
        try:
            header = read_header(path)
        except (HeaderError, OSError) as error:
            raise ValueError(f"it can't be read ({error})") from None
        found = describe_ip_adapter({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    if len(_described) >= MAX_DESCRIBED:
        _described.clear()
    _described[key] = (stamp, found)
    return found


def adapter_info(store: Any, name: str) -> IPAdapterInfo:
    try:
        return _describe("ipadapter", store.resolve_usable("ipadapter", name))
    except ValueError as error:
        raise ModelError(f"IP-Adapter {name!r} can't be used: {error}.") from None


def family_of(store: Any, checkpoint: str) -> ModelFamily:
    """The checkpoint's family as its header says (the store's cached verdict: no weights are read); SD1.5
    where it doesn't say, as the loader takes such a file for SD1.5 (stores without verdicts: test stubs)."""
    verdict = getattr(store, "verdict", None)
    found = verdict("checkpoints", checkpoint).family if verdict is not None else None
    return FAMILIES.get(found or SD15.name, SD15)


def choose_adapter(store: Any, reference: ReferenceParam, family: ModelFamily) -> str:
    """The reference's IP-Adapter: the one it names (refused when made for another family), else the first
    listed one of `family`'s, else the first whose family can't be told."""
    if reference.model is not None:
        info = adapter_info(store, reference.model)
        found = info.family
        if found is not None and found is not family:
            raise ModelError(
                f"{describe_mismatch(f'IP-Adapter {reference.model!r}', found, family)} "
                f"Use an {family.label} IP-Adapter."
            )
        return reference.model
    untold: str | None = None
    other: str | None = None
    for name in store.list_kind("ipadapter"):
        verdict = store.verdict("ipadapter", name)
        if verdict.reason is not None:
            continue
        if verdict.family == family.name:
            return name
        if verdict.family is None:
            untold = untold or name
        else:
            other = other or name
    if untold is not None:
        return untold
    found = f" ({other} is made for another model family)" if other is not None else ""
    raise ModelNotFoundError(
        f"No IP-Adapter for {family.label} found{found}. Put {SUGGESTED_ADAPTERS[family.name]} (or another "
        f"{family.label} IP-Adapter .safetensors file) in {store.shown_folder('ipadapter')}, or name one in "
        "the reference's 'model'."
    )


def choose_encoder(store: Any, adapter: str, info: IPAdapterInfo) -> str:
    """The first listed CLIP vision encoder whose output is as wide as what `adapter` reads."""
    for name in store.list_kind("clip_vision"):
        try:
            encoder: EncoderInfo = _describe("clip_vision", store.resolve("clip_vision", name))
        except (ValueError, ModelError):
            continue
        if encoder.output_width(info.hidden_states) == info.image_width:
            return name
    width = info.image_width if not info.hidden_states else HIDDEN_TO_EMBEDDING.get(info.image_width)
    known = ENCODER_NAMES.get(width) if width is not None else None
    which = (
        f"the encoder it was trained with ({known})" if known else "the CLIP vision encoder it was made for"
    )
    raise ModelNotFoundError(
        f"No CLIP vision encoder fits IP-Adapter {adapter!r} (it reads {info.describe_input()}). Put {which} "
        f"in {store.shown_folder('clip_vision')}"
    )


def choose_reference_models(
    store: Any, references: Sequence[ReferenceParam], checkpoint: str
) -> tuple[ReferenceModels | None, ...]:
    """Each reference's files; None for a reference that can't act (strength 0: never loaded)."""
    if not references:
        return ()
    family = family_of(store, checkpoint)
    chosen: list[ReferenceModels | None] = []
    for reference in references:
        if reference.strength == 0:
            chosen.append(None)
            continue
        adapter = choose_adapter(store, reference, family)
        chosen.append(ReferenceModels(adapter, choose_encoder(store, adapter, adapter_info(store, adapter))))
    return tuple(chosen)
