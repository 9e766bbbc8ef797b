"""How each model family turns a prompt into what its UNet reads (the family's `conditioning` names a row of
CONDITIONINGS).

SD1.5 reads CLIP-L's last hidden state. SDXL-class UNets read the penultimate hidden states of two text
encoders side by side (CLIP-L and OpenCLIP bigG), plus added conditioning: bigG's pooled, projected embedding
and six "time ids" (the original image size, the crop's top-left corner and the target size, in pixels, height
first), as diffusers' SDXL pipelines build them.

Prompts may use the syntax of prompt_syntax.py: emphasis, `embedding:name` and A1111's bare embedding names,
and `<lora:...>` tags, which are only taken out here (the job's model choice fuses those LoRAs). How it
reaches the encoders is prompt_tokens.py's: embeddings' vectors in place of placeholder tokens, **ComfyUI's
emphasis** (a weighted position's output moved away from the empty prompt's output there), prompts longer
than 75 tokens in chunks of 77 positions read one after the other. A prompt that is plain text of one chunk
(no weights, no embeddings) is encoded exactly as it always was. When the negative prompt takes another number
of chunks than the prompt, the shorter is padded with the empty prompt's chunk (A1111's rule), so both rows of
a CFG batch have one length.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from backend.model_errors import ModelError

from .loop import Guidance, make_guidance
from .modules import model_dtype
from .prompt_syntax import Piece, plain_text, prompt_pieces
from .prompt_tokens import (
    Embedding,
    Encoder,
    EncoderTokens,
    fits_one_chunk,
    fitting_pieces,
    plain_tokens,
    run_encoder,
    tokenize,
    weigh,
)

if TYPE_CHECKING:
    from protocol.messages import JobParams

    from .model_choice import ModelChoice
    from .prompts import PromptCache
    from .residency import Residency

TIME_IDS_KEPT = 64  # generation sizes whose time ids stay on the device


@dataclass(frozen=True)
class PromptEmbedding:
    hidden: torch.Tensor  # 1 x 77n x D: the sequence the UNet's cross-attention reads (n chunks)
    pooled: torch.Tensor | None = None  # 1 x P: SDXL's pooled text embedding


@dataclass(frozen=True)
class EncodablePrompt:
    """A prompt's pieces (prompt_syntax.prompt_pieces) and the embeddings they use, loaded."""

    pieces: tuple[Piece, ...]
    embeddings: Mapping[str, Embedding] = field(default_factory=dict[str, Embedding])

    @classmethod
    def of_text(cls, text: str) -> EncodablePrompt:
        """The text with its syntax read (emphasis; `embedding:` names need `embeddings`)."""
        return cls(tuple(prompt_pieces(text)))

    def tokens(self, encoders: list[Encoder]) -> list[list[EncoderTokens]]:
        """Each encoder's chunks of tokens, as many for each: the plain text's, as always, when there is no
        syntax to apply and it fits one chunk."""
        text = plain_text(list(self.pieces))
        if text is not None and all(fits_one_chunk(encoder.tokenizer, text) for encoder in encoders):
            return [[plain_tokens(encoder.tokenizer, text)] for encoder in encoders]
        pieces = fitting_pieces(self.pieces, self.embeddings, encoders)
        chunks = [tokenize(encoder, pieces, self.embeddings) for encoder in encoders]
        count = max(len(each) for each in chunks)
        # The encoders share CLIP's vocabulary and chunk alike; should one take fewer, it reads empty chunks.
        return [
            each + [plain_tokens(encoder.tokenizer, "")] * (count - len(each))
            for encoder, each in zip(encoders, chunks, strict=True)
        ]


class Conditioning(Protocol):
    def encode(self, components: Any, prompt: EncodablePrompt, device: torch.device) -> PromptEmbedding: ...

    def empty_negative(self, like: PromptEmbedding) -> PromptEmbedding | None:
        """What an empty negative prompt means, when it is not the empty text's embedding."""
        ...

    def time_ids(self, height: int, width: int) -> torch.Tensor | None:
        """The size conditioning for a generation of this size (1 x n); None when the family has none."""
        ...


class ClipConditioning:
    """SD1.5: CLIP's last hidden state for the text, padded/truncated to 77 tokens (as SD1.5 was trained)."""

    def encode(self, components: Any, prompt: EncodablePrompt, device: torch.device) -> PromptEmbedding:
        encoder = Encoder("clip_l", components.tokenizer, components.text_encoder)
        [chunks] = prompt.tokens([encoder])
        empty = plain_tokens(encoder.tokenizer, "")
        hidden: list[torch.Tensor] = []
        for tokens in chunks:
            chunk = self._hidden(encoder, tokens, device)
            if tokens.weighted:
                chunk = weigh(chunk, lambda: self._hidden(encoder, empty, device), tokens.weights)
            hidden.append(chunk)
        return PromptEmbedding(torch.cat(hidden, dim=1) if len(hidden) > 1 else hidden[0])

    @staticmethod
    def _hidden(encoder: Encoder, tokens: EncoderTokens, device: torch.device) -> torch.Tensor:
        attention_mask = None
        if getattr(encoder.model.config, "use_attention_mask", False):
            attention_mask = tokens.attention_mask.to(device)
        return run_encoder(encoder, tokens, device, attention_mask=attention_mask)[0]

    def empty_negative(self, like: PromptEmbedding) -> PromptEmbedding | None:
        return None

    def time_ids(self, height: int, width: int) -> torch.Tensor | None:
        return None


class PooledTimeIdsConditioning:
    """SDXL: both encoders' penultimate hidden states concatenated, bigG's pooled output, size time ids.

    An empty negative prompt is all zeros (SDXL base's `force_zeros_for_empty_prompt`, which diffusers applies
    when no negative prompt is given): it is what the model was trained to read as "no prompt".
    """

    def encode(self, components: Any, prompt: EncodablePrompt, device: torch.device) -> PromptEmbedding:
        encoders = [
            Encoder("clip_l", components.tokenizer, components.text_encoder),
            Encoder("clip_g", components.tokenizer_2, components.text_encoder_2),
        ]
        hidden: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for encoder, chunks in zip(encoders, prompt.tokens(encoders), strict=True):
            layers: list[torch.Tensor] = []
            for index, tokens in enumerate(chunks):
                output = run_encoder(encoder, tokens, device, output_hidden_states=True)
                if index == 0:
                    pooled = output[0]  # the last encoder's first chunk's: bigG's projected pooled embedding
                layer = output.hidden_states[-2]
                if tokens.weighted:
                    layer = weigh(layer, _empty_layer(encoder, device), tokens.weights)
                layers.append(layer)
            hidden.append(torch.cat(layers, dim=1) if len(layers) > 1 else layers[0])
        return PromptEmbedding(torch.cat(hidden, dim=-1), pooled)

    def empty_negative(self, like: PromptEmbedding) -> PromptEmbedding | None:
        pooled = None if like.pooled is None else torch.zeros_like(like.pooled)
        return PromptEmbedding(torch.zeros_like(like.hidden), pooled)

    def time_ids(self, height: int, width: int) -> torch.Tensor | None:
        original, crop_top_left, target = (height, width), (0, 0), (height, width)
        return torch.tensor([[*original, *crop_top_left, *target]], dtype=torch.float32)


def same_length(embeddings: Sequence[PromptEmbedding], empty: torch.Tensor) -> list[PromptEmbedding]:
    """The embeddings with their sequences padded to the longest by repeating `empty` (the empty prompt's one
    chunk), so they batch together (the rows of a CFG or regions batch)."""
    longest = max(embedding.hidden.shape[1] for embedding in embeddings)
    padded = []
    for embedding in embeddings:
        missing = (longest - embedding.hidden.shape[1]) // empty.shape[1]
        hidden = embedding.hidden
        if missing:
            hidden = torch.cat([hidden, *[empty.to(hidden.dtype)] * missing], dim=1)
        padded.append(PromptEmbedding(hidden, embedding.pooled))
    return padded


def _empty_layer(encoder: Encoder, device: torch.device) -> Callable[[], torch.Tensor]:
    """The empty prompt's penultimate hidden state for this encoder, computed when asked."""
    return lambda: run_encoder(
        encoder, plain_tokens(encoder.tokenizer, ""), device, output_hidden_states=True
    ).hidden_states[-2]


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
    # The model source's `embedding(name)` (backend/loading/model_cache.py): an embedding file's vectors,
    # read again when the file changed; None: prompts can't use embeddings.
    embeddings: Callable[[str], Embedding] | None = None
    _time_ids: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)

    def guidance(
        self, components: Any, choice: ModelChoice, params: JobParams, prompts: Sequence[str] | None = None
    ) -> Guidance:
        """The prompts' conditioning for the job's models; `choice.embeddings` are the embedding files the
        prompts name (found at intake), its LoRAs' clip strengths part of the text encoders' state.

        `prompts`: the texts of the cond rows, one row each (regions, engine/regions.py); None: the job's
        prompt, one row. The negative prompt is the one uncond row either way."""
        unet = components.unet
        conditioning = conditioning_for(components)
        embeddings = choice.embeddings
        model_key = (components.name, id(components.text_encoder), choice.text_encoder_state())

        def encode(prompt: EncodablePrompt) -> PromptEmbedding:
            if self.residency is None:
                return conditioning.encode(components, prompt, self.device)
            with self.residency.using(components.text_encoder, getattr(components, "text_encoder_2", None)):
                return conditioning.encode(components, prompt, self.device)

        def embed(text: str) -> PromptEmbedding:
            pieces = tuple(prompt_pieces(text, embeddings))
            loaded = self._load_embeddings(pieces)
            # The files' versions key the cache too: an embedding file replaced under its name re-encodes.
            files = tuple((name, getattr(loaded[name], "stamp", None)) for name in sorted(loaded))
            prompt = EncodablePrompt(pieces, loaded)
            return self.prompts.embed(model_key, text, lambda: encode(prompt), model_dtype(unet), files)

        conds = [embed(text) for text in ([params.prompt] if prompts is None else prompts)]
        distilled = getattr(unet.config, "time_cond_proj_dim", None)
        uncond: PromptEmbedding | None = None
        if params.cfg > 1.0 and distilled is None:
            longest = max(conds, key=lambda each: each.hidden.shape[1])
            empty = conditioning.empty_negative(longest) if params.negative_prompt == "" else None
            uncond = empty or embed(params.negative_prompt)
        rows = [*conds, *([uncond] if uncond else [])]
        if len({row.hidden.shape[1] for row in rows}) > 1:
            rows = same_length(rows, embed("").hidden)
            conds, uncond = rows[: len(conds)], (rows[len(conds)] if uncond else None)
        hidden = conds[0].hidden if len(conds) == 1 else torch.cat([each.hidden for each in conds])
        guidance = make_guidance(hidden, uncond.hidden if uncond else None, params.cfg, distilled)
        pooled_rows = [each.pooled for each in conds if each.pooled is not None]
        if pooled_rows:
            if guidance.batched and uncond is not None and uncond.pooled is not None:
                pooled_rows.insert(0, uncond.pooled)
            pooled = pooled_rows[0] if len(pooled_rows) == 1 else torch.cat(pooled_rows)
            guidance.added = {"text_embeds": pooled}
        return guidance

    def _load_embeddings(self, pieces: tuple[Piece, ...]) -> dict[str, Embedding]:
        names = sorted({piece.embedding for piece in pieces if piece.embedding is not None})
        if not names:
            return {}
        if self.embeddings is None:
            raise ModelError(f"Embedding {names[0]!r}: this engine's model source loads no embeddings.")
        return {name: self.embeddings(name) for name in names}

    def condition_on_size(self, guidance: Guidance, components: Any, height: int, width: int) -> None:
        """The generation's size where the family conditions on it (SDXL's time ids). Kept per size on the
        device: a new tensor each live frame would be a blocking host-to-device copy."""
        if guidance.added is None:
            return
        dtype = guidance.cond.dtype
        conditioning = conditioning_for(components)
        key = (id(conditioning), height, width, dtype, guidance.rows)
        time_ids = self._time_ids.get(key)
        if time_ids is None:
            made = conditioning.time_ids(height, width)
            if made is None:
                return
            if len(self._time_ids) >= TIME_IDS_KEPT:
                self._time_ids.clear()
            time_ids = self._time_ids[key] = guidance.repeat(made.to(self.device, dtype))
        guidance.added["time_ids"] = time_ids
