"""Text-encoder embeddings with a cache: painters change the canvas far more often than the prompt."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from .conditioning import PromptEmbedding


@dataclass(frozen=True)
class PromptKey:
    """What an embedding depends on: the text encoders' weights (model + fused LoRA state), the text, and the
    embedding files it uses (name and file version, so a file replaced under its name is read again)."""

    model: Hashable
    text: str
    files: tuple[tuple[str, Hashable], ...] = ()


class PromptCache:
    """LRU cache of prompt embeddings (on the engine's device, in the UNet's dtype)."""

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[PromptKey, PromptEmbedding] = OrderedDict()
        self.hits = 0

    def embed(
        self,
        model_key: Hashable,
        text: str,
        compute: Callable[[], PromptEmbedding],
        dtype: torch.dtype,
        files: tuple[tuple[str, Hashable], ...] = (),
    ) -> PromptEmbedding:
        key = PromptKey(model_key, text, files)
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return cached
        with torch.inference_mode():
            computed = compute()
        embedding = PromptEmbedding(
            computed.hidden.to(dtype=dtype),
            None if computed.pooled is None else computed.pooled.to(dtype=dtype),
        )
        self._entries[key] = embedding
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return embedding
