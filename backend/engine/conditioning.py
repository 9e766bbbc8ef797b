"""How each model family turns a prompt into what its UNet reads (the family's `conditioning` names a row of
CONDITIONINGS).

SD1.5 reads CLIP-L's last hidden state. SDXL-class UNets read the penultimate hidden states of two text
encoders side by side (CLIP-L and OpenCLIP bigG), plus added conditioning: bigG's pooled, projected embedding
and six "time ids" (the original image size, the crop's top-left corner and the target size, in pixels, height
first), as diffusers' SDXL pipelines build them.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .loop import Guidance, make_guidance, repeat_for_batch
from .modules import model_dtype

if TYPE_CHECKING:
    from protocol.messages import JobParams

    from .prompts import PromptCache
    from .residency import Residency

TIME_IDS_KEPT = 64  # generation sizes whose time ids stay on the device


@dataclass(frozen=True)
class PromptEmbedding:
    hidden: torch.Tensor  # 1 x 77 x D: the sequence the UNet's cross-attention reads
    pooled: torch.Tensor | None = None  # 1 x P: SDXL's pooled text embedding


class Conditioning(Protocol):
    def encode(self, components: Any, text: str, device: torch.device) -> PromptEmbedding: ...

    def empty_negative(self, like: PromptEmbedding) -> PromptEmbedding | None:
        """What an empty negative prompt means, when it is not the empty text's embedding."""
        ...

    def time_ids(self, height: int, width: int) -> torch.Tensor | None:
        """The size conditioning for a generation of this size (1 x n); None when the family has none."""
        ...


def _tokens(tokenizer: Any, text: str) -> Any:
    return tokenizer(
        text,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )


class ClipConditioning:
    """SD1.5: CLIP's last hidden state for the text, padded/truncated to 77 tokens (as SD1.5 was trained)."""

    def encode(self, components: Any, text: str, device: torch.device) -> PromptEmbedding:
        text_encoder = components.text_encoder
        tokens = _tokens(components.tokenizer, text)
        attention_mask = None
        if getattr(text_encoder.config, "use_attention_mask", False):
            attention_mask = tokens.attention_mask.to(device)
        hidden = text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)[0]
        return PromptEmbedding(hidden)

    def empty_negative(self, like: PromptEmbedding) -> PromptEmbedding | None:
        return None

    def time_ids(self, height: int, width: int) -> torch.Tensor | None:
        return None


class PooledTimeIdsConditioning:
    """SDXL: both encoders' penultimate hidden states concatenated, bigG's pooled output, size time ids.

    An empty negative prompt is all zeros (SDXL base's `force_zeros_for_empty_prompt`, which diffusers applies
    when no negative prompt is given): it is what the model was trained to read as "no prompt".
    """

    def encode(self, components: Any, text: str, device: torch.device) -> PromptEmbedding:
        pairs = (
            (components.tokenizer, components.text_encoder),
            (components.tokenizer_2, components.text_encoder_2),
        )
        hidden: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for tokenizer, text_encoder in pairs:
            output = text_encoder(_tokens(tokenizer, text).input_ids.to(device), output_hidden_states=True)
            pooled = output[0]  # the last encoder's: bigG's projected pooled embedding
            hidden.append(output.hidden_states[-2])
        return PromptEmbedding(torch.cat(hidden, dim=-1), pooled)

    def empty_negative(self, like: PromptEmbedding) -> PromptEmbedding | None:
        pooled = None if like.pooled is None else torch.zeros_like(like.pooled)
        return PromptEmbedding(torch.zeros_like(like.hidden), pooled)

    def time_ids(self, height: int, width: int) -> torch.Tensor | None:
        original, crop_top_left, target = (height, width), (0, 0), (height, width)
        return torch.tensor([[*original, *crop_top_left, *target]], dtype=torch.float32)


CONDITIONINGS: dict[str, Conditioning] = {
    "clip": ClipConditioning(),
    "clip_pooled_time_ids": PooledTimeIdsConditioning(),
}


def conditioning_for(components: Any) -> Conditioning:
    family = getattr(components, "family", None)
    return CONDITIONINGS[family.conditioning if family is not None else "clip"]


@dataclass
class Conditioner:
    """A job's prompt conditioning: embeddings from the cache, classifier-free guidance, the size inputs."""

    prompts: PromptCache
    device: torch.device
    residency: Residency | None = None  # low-VRAM mode: the text encoders come to the device to encode
    _time_ids: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)

    def guidance(self, components: Any, text_encoder_state: Hashable, params: JobParams) -> Guidance:
        unet = components.unet
        conditioning = conditioning_for(components)
        model_key = (components.name, id(components.text_encoder), text_encoder_state)

        def encode(text: str) -> PromptEmbedding:
            if self.residency is None:
                return conditioning.encode(components, text, self.device)
            with self.residency.using(components.text_encoder, getattr(components, "text_encoder_2", None)):
                return conditioning.encode(components, text, self.device)

        def embed(text: str) -> PromptEmbedding:
            return self.prompts.embed(model_key, text, lambda: encode(text), model_dtype(unet))

        cond = embed(params.prompt)
        distilled = getattr(unet.config, "time_cond_proj_dim", None)
        uncond: PromptEmbedding | None = None
        if params.cfg > 1.0 and distilled is None:
            empty = conditioning.empty_negative(cond) if params.negative_prompt == "" else None
            uncond = empty or embed(params.negative_prompt)
        guidance = make_guidance(cond.hidden, uncond.hidden if uncond else None, params.cfg, distilled)
        if cond.pooled is not None:
            pooled = cond.pooled
            if guidance.batched and uncond is not None and uncond.pooled is not None:
                pooled = torch.cat([uncond.pooled, cond.pooled])
            guidance.added = {"text_embeds": pooled}
        return guidance

    def condition_on_size(self, guidance: Guidance, components: Any, height: int, width: int) -> None:
        """The generation's size where the family conditions on it (SDXL's time ids). Kept per size on the
        device: a new tensor each live frame would be a blocking host-to-device copy."""
        if guidance.added is None:
            return
        dtype = guidance.cond.dtype
        conditioning = conditioning_for(components)
        key = (id(conditioning), height, width, dtype, guidance.batched)
        time_ids = self._time_ids.get(key)
        if time_ids is None:
            made = conditioning.time_ids(height, width)
            if made is None:
                return
            if len(self._time_ids) >= TIME_IDS_KEPT:
                self._time_ids.clear()
            time_ids = self._time_ids[key] = repeat_for_batch(made.to(self.device, dtype), guidance.batched)
        guidance.added["time_ids"] = time_ids
