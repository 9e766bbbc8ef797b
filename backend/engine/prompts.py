"""Text-encoder embeddings with a cache: painters change the canvas far more often than the prompt."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PromptKey:
    """What an embedding depends on: the text encoder's weights (model + fused LoRA state) and the text."""

    model: Hashable
    text: str


class PromptCache:
    """LRU cache of CLIP embeddings (1 x 77 x dim tensors on the engine's device)."""

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[PromptKey, torch.Tensor] = OrderedDict()
        self.hits = 0

    def embed(
        self,
        tokenizer: Any,
        text_encoder: Any,
        model_key: Hashable,
        text: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        key = PromptKey(model_key, text)
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return cached
        embedding = encode_text(tokenizer, text_encoder, text, device).to(dtype=dtype)
        self._entries[key] = embedding
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return embedding


def encode_text(tokenizer: Any, text_encoder: Any, text: str, device: torch.device) -> torch.Tensor:
    """CLIP's last hidden state for `text`, padded/truncated to the tokenizer's 77 tokens (as SD1.5 was
    trained)."""
    tokens = tokenizer(
        text,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    attention_mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        attention_mask = tokens.attention_mask.to(device)
    with torch.inference_mode():
        return text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)[0]
