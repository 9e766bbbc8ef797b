"""The model files a job's prompts name (prompt_syntax.py): inline LoRAs and embeddings, found in the model
lists when the job's models are resolved (model_choice.choose_models, at intake), so that a name without a
file fails then, with the name, before any pixels are sent.

A name matches a listed file by its whole name (`sub/style.safetensors`), by that name without its suffix
(`sub/style`), or by its file name without the suffix (`style`, as A1111 and model pages write them: the
first listed file of that name, subfolders included); each first exactly, then ignoring case. The model store
is duck-typed (backend/model_files.py's ModelStore, or a test's stand-in).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from backend.model_errors import ModelError, ModelNotFoundError

from .prompt_syntax import EmbeddingRef, LoraTag, PromptSyntaxError, scan_prompt

EMBEDDINGS = "embeddings"
LORAS = "loras"
SINGULAR = {EMBEDDINGS: "embedding", LORAS: "LoRA"}
MAX_PROMPT_LORAS = 16  # as many as a job's `loras` list may hold


@dataclass(frozen=True)
class PromptModels:
    loras: tuple[tuple[str, LoraTag], ...]  # (the listed file's name, the tag), first tag per file
    embeddings: tuple[EmbeddingRef, ...]

    def added_loras(self, taken: Collection[str | None]) -> list[tuple[str, float, float]]:
        """(name, model strength, clip strength) of the tags' LoRAs to fuse: those not `taken` already (the
        job's own list and its LCM-LoRA win), and not at strength 0 ("not fused", as in the job's list)."""
        return [
            (name, tag.model_strength, tag.clip_strength)
            for name, tag in self.loras
            if name not in taken and (tag.model_strength != 0 or tag.clip_strength != 0)
        ]


def prompt_models(store: Any, prompts: Sequence[str]) -> PromptModels:
    """The LoRA tags and embeddings of the prompts, resolved to listed files. Raises ModelError (or its
    ModelNotFoundError) naming a LoRA or `embedding:` name that no file answers, or a tag that can't be read.
    A bare word is an embedding only where a file of that name exists: any other word is just a word."""
    try:
        scans = [scan_prompt(text) for text in prompts]
    except PromptSyntaxError as error:
        raise ModelError(str(error)) from None
    tags = [tag for scan in scans for tag in scan.loras]
    explicit = list(dict.fromkeys(name for scan in scans for name in scan.explicit_embeddings))
    words = frozenset().union(*(scan.words for scan in scans))

    loras: dict[str, LoraTag] = {}
    if tags:
        listed = store.list_kind(LORAS)
        for tag in tags:
            loras.setdefault(_resolve(store, LORAS, tag.name, listed), tag)
        if len(loras) > MAX_PROMPT_LORAS:
            raise ModelError(f"The prompts name {len(loras)} LoRAs; at most {MAX_PROMPT_LORAS} can be used.")

    refs: list[EmbeddingRef] = []
    names = embedding_names(store) if explicit or words else []
    for name in explicit:
        refs.append(EmbeddingRef(name, _resolve(store, EMBEDDINGS, name, names), explicit=True))
    by_stem: dict[str, str] = {}
    for name in names:
        by_stem.setdefault(_stem(name).casefold(), name)
    refs += [EmbeddingRef(word, by_stem[word], explicit=False) for word in sorted(words) if word in by_stem]
    return PromptModels(tuple(loras.items()), tuple(refs))


def embedding_names(store: Any) -> list[str]:
    """The listed embeddings; none for a store that has no such list (a test's stand-in)."""
    names: Any = getattr(store, "embedding_names", None)
    return [] if names is None else list(names())


def _resolve(store: Any, kind: str, name: str, listed: Sequence[str]) -> str:
    for form in range(3):  # the whole name, the name without its suffix, the file name without it
        for fold in (False, True):
            wanted = name.casefold() if fold else name
            for candidate in listed:
                found = _forms(candidate)[form]
                if (found.casefold() if fold else found) == wanted:
                    return candidate
    resolve = getattr(store, "resolve", None)
    if resolve is None:
        raise ModelNotFoundError(f"No {SINGULAR[kind]} named {name!r}.")
    resolve(kind, name)  # raises the store's own advice: no such file, an unsafe name, ...
    return name  # a file the listing missed (created since): the store found it


def _stem(name: str) -> str:
    return PurePosixPath(name).stem


def _forms(listed: str) -> tuple[str, str, str]:
    path = PurePosixPath(listed)
    return listed, str(path.with_suffix("")), path.stem
