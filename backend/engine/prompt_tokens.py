"""A prompt's pieces (prompt_syntax.py) as one CLIP text encoder reads them: token ids, a weight per position,
and embeddings' vectors in place of placeholder tokens; and emphasis applied to the encoder's output.

**Embeddings** go in through the token embedding table's output, for the one call: a forward hook replaces
the rows at the embedding's positions with its vectors (cast to the table's dtype). The encoder then computes
what it would with the vectors added to its vocabulary as new tokens, which is what diffusers'
`load_textual_inversion` does (tests/backend/test_embeddings.py compares them), without changing the
shared tokenizer or model. The placeholder ids are 0, below the end token, so the pooled output of CLIP
configs that find the end token as the highest id (SDXL's second encoder) is still read there.

**Emphasis** is ComfyUI's: the encoder reads the tokens unweighted; then at each position whose weight w is
not 1, the output vector h becomes e + (h - e) * w, where e is the empty prompt's output at that position (w
above 1 moves it away from "nothing said", below 1 towards it). Positions of weight 1 are left as computed,
so emphasis changes the embedding at the weighted tokens only. A1111's rule (scale every vector, then restore
the mean) is not used. The pooled output (SDXL) is not weighted, as in ComfyUI.

**Length**: chunks of the encoder's 77 positions, as ComfyUI and A1111 encode long prompts: each holds the
start token, up to 75 tokens, the end token and padding, and is encoded on its own; the UNet reads the chunks'
outputs one after the other (77 x n positions). A word, or an embedding's vectors, is not split across two
chunks (a chunk that can't take the next one whole is padded out and the next chunk starts with it, ComfyUI's
rule), unless it is longer than a chunk; A1111's `BREAK` ends a chunk there. Emphasis is applied per chunk
against the empty prompt's output.
SDXL's pooled embedding is the first chunk's, as in both. A prompt of one chunk is encoded as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from backend.model_errors import ModelError

from .prompt_syntax import CHUNK_BREAK, Piece

PLACEHOLDER_ID = 0  # token id where an embedding vector goes (module docstring: below the end token)


class Embedding(Protocol):
    """A loaded textual-inversion embedding (backend/loading/embeddings.py's TextualInversion)."""

    def vectors(self, role: str, width: int) -> torch.Tensor | None: ...

    def widths(self) -> str: ...


@dataclass(frozen=True)
class Encoder:
    """One text encoder of a checkpoint and the tokenizer for it; `role` names it in SDXL embedding files."""

    role: str
    tokenizer: Any
    model: Any

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)


@dataclass(frozen=True, eq=False)
class EncoderTokens:
    input_ids: torch.Tensor  # 1 x L
    attention_mask: torch.Tensor  # 1 x L: 1 up to the end token
    weights: tuple[float, ...] = ()  # per position; empty: all 1
    positions: tuple[int, ...] = ()  # where embedding vectors replace the placeholders
    rows: torch.Tensor | None = None  # len(positions) x width

    @property
    def weighted(self) -> bool:
        return any(weight != 1.0 for weight in self.weights)


def plain_tokens(tokenizer: Any, text: str) -> EncoderTokens:
    """The text as the engine has always tokenized it: padded (and truncated) to the encoder's length."""
    tokens = tokenizer(
        text,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return EncoderTokens(tokens.input_ids, tokens.attention_mask)


def fitting_pieces(
    pieces: Sequence[Piece], embeddings: Mapping[str, Embedding], encoders: Sequence[Encoder]
) -> list[Piece]:
    """The pieces with each embedding checked against every encoder: a bare word whose file doesn't fit them
    all is read as the word (as A1111 skips embeddings of another model); `embedding:name` is an error."""
    fitted = []
    for piece in pieces:
        found = embeddings[piece.embedding] if piece.embedding is not None else None
        misfit = next(
            (e for e in encoders if found is not None and found.vectors(e.role, e.width) is None), None
        )
        if found is not None and misfit is not None:
            if piece.explicit:
                raise ModelError(
                    f"Embedding {piece.embedding!r} doesn't fit this checkpoint: its file holds "
                    f"{found.widths()}, its text encoder takes {misfit.width}-wide vectors. It is made for "
                    "another model family."
                )
            piece = replace(piece, embedding=None, explicit=False)
        fitted.append(piece)
    return fitted


@dataclass
class _Unit:
    """Tokens that go into one chunk together: a word's, or an embedding's vectors."""

    ids: list[int]
    weight: float
    rows: list[torch.Tensor] | None = None  # an embedding's vectors, one per id
    chunk_break: bool = False  # A1111's BREAK: the next unit starts a new chunk


def _units(encoder: Encoder, pieces: Sequence[Piece], embeddings: Mapping[str, Embedding]) -> list[_Unit]:
    units: list[_Unit] = []
    for piece in pieces:
        vectors = (
            None
            if piece.embedding is None
            else embeddings[piece.embedding].vectors(encoder.role, encoder.width)
        )
        if vectors is not None:
            units.append(_Unit([PLACEHOLDER_ID] * vectors.shape[0], piece.weight, list(vectors)))
            continue
        # CLIP's tokenizer splits on whitespace before its byte-pair merges: word by word gives the same ids.
        for word in piece.text.split():
            if word == CHUNK_BREAK:
                units.append(_Unit([], piece.weight, chunk_break=True))
                continue
            ids = encoder.tokenizer(word, add_special_tokens=False).input_ids
            if ids:
                units.append(_Unit(list(ids), piece.weight))
    return units


def _chunked(units: Sequence[_Unit], room: int) -> list[list[_Unit]]:
    """The units in chunks of at most `room` tokens; a unit longer than a chunk is cut into pieces."""
    chunks: list[list[_Unit]] = [[]]
    used = 0
    for unit in units:
        if unit.chunk_break:
            if used > 0:
                chunks.append([])
                used = 0
            continue
        if used + len(unit.ids) > room and used > 0 and len(unit.ids) <= room:
            chunks.append([])
            used = 0
        while used + len(unit.ids) > room:  # only a unit longer than what is left of an empty chunk
            fits = room - used
            head = _Unit(unit.ids[:fits], unit.weight, None if unit.rows is None else unit.rows[:fits])
            chunks[-1].append(head)
            unit = _Unit(unit.ids[fits:], unit.weight, None if unit.rows is None else unit.rows[fits:])
            chunks.append([])
            used = 0
        if unit.ids:
            chunks[-1].append(unit)
            used += len(unit.ids)
    if len(chunks) > 1 and not chunks[-1]:
        chunks.pop()  # a BREAK at the end
    return chunks


def tokenize(
    encoder: Encoder, pieces: Sequence[Piece], embeddings: Mapping[str, Embedding]
) -> list[EncoderTokens]:
    """Token ids of the pieces in chunks (module docstring), their weights, and the embeddings' vectors with
    their positions in their chunk; start and end tokens, padding. `pieces` went through `fitting_pieces`."""
    tokenizer = encoder.tokenizer
    length = tokenizer.model_max_length
    return [
        _chunk_tokens(tokenizer, chunk, length)
        for chunk in _chunked(_units(encoder, pieces, embeddings), length - 2)
    ]


def _chunk_tokens(tokenizer: Any, chunk: Sequence[_Unit], length: int) -> EncoderTokens:
    ids: list[int] = []
    weights: list[float] = []
    rows: list[torch.Tensor] = []
    positions: list[int] = []
    for unit in chunk:
        if unit.rows is not None:
            positions += [1 + len(ids) + i for i in range(len(unit.ids))]  # 1 + : after the start token
            rows += unit.rows
        ids += unit.ids
        weights += [unit.weight] * len(unit.ids)
    padding = length - len(ids) - 2
    input_ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id, *[tokenizer.pad_token_id] * padding]
    mask = [1] * (len(ids) + 2) + [0] * padding
    return EncoderTokens(
        input_ids=torch.tensor([input_ids], dtype=torch.long),
        attention_mask=torch.tensor([mask], dtype=torch.long),
        weights=(1.0, *weights, *[1.0] * (padding + 1)),
        positions=tuple(positions),
        rows=torch.stack(rows) if rows else None,
    )


def fits_one_chunk(tokenizer: Any, text: str) -> bool:
    """Whether plain text fits the 75 tokens of one chunk (then it is encoded as it always was)."""
    return len(tokenizer(text, add_special_tokens=False).input_ids) <= tokenizer.model_max_length - 2


def run_encoder(encoder: Encoder, tokens: EncoderTokens, device: torch.device, **kwargs: Any) -> Any:
    """The encoder's output for the tokens, embeddings' vectors in place."""
    with _vectors_in_place(encoder.model, tokens):
        return encoder.model(tokens.input_ids.to(device), **kwargs)


@contextmanager
def _vectors_in_place(model: Any, tokens: EncoderTokens) -> Iterator[None]:
    if tokens.rows is None:
        yield
        return
    rows = tokens.rows
    positions = torch.tensor(tokens.positions, dtype=torch.long)

    def put_vectors(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        replaced = output.clone()
        replaced[:, positions.to(output.device)] = rows.to(output.device, output.dtype)
        return replaced

    handle = model.get_input_embeddings().register_forward_hook(put_vectors)
    try:
        yield
    finally:
        handle.remove()


def weigh(hidden: torch.Tensor, empty: Callable[[], torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """ComfyUI's emphasis (module docstring) on a 1 x L x D output; `empty` gives the empty prompt's output
    of the same layer. Computed in float32, returned in the output's dtype."""
    index = [i for i, weight in enumerate(weights) if weight != 1.0]
    if not index:
        return hidden
    where = torch.tensor(index, dtype=torch.long, device=hidden.device)
    factor = torch.tensor([weights[i] for i in index], dtype=torch.float32, device=hidden.device)[:, None]
    base = empty()[:, where].float()
    weighted = hidden.clone()
    weighted[:, where] = ((hidden[:, where].float() - base) * factor + base).to(hidden.dtype)
    return weighted
