r"""The prompt syntax painters paste from model pages and from ComfyUI or A1111: pure text, no torch.

- **Inline LoRAs** `<lora:name>`, `<lora:name:0.8>`, `<lora:name:0.8:0.5>` (A1111's order: the first number
  is the text encoder's strength, the second the UNet's, which defaults to the first; `te=` and `unet=` name
  them) and A1111's `<lyco:...>` alike. The tags are taken out of the text before it is encoded; the job
  fuses the LoRAs they name (backend/engine/prompt_models.py finds the files).
- **Emphasis**, A1111's notation: `(words)` weighs them 1.1, `[words]` 1/1.1, `(words:1.3)` 1.3; nested
  brackets multiply (`((a))` 1.21, `((a:1.5))` 1.65); a bracket left open weighs the rest of the prompt as if
  it were closed at the end; `\(`, `\)`, `\[`, `\]` and `\\` are the characters themselves. A `:1.3)`
  or a closing bracket with nothing open is plain text; `BREAK` (A1111's chunk separator, in capitals)
  stays a word of its own (`CHUNK_BREAK`), where prompt_tokens.py starts the next 75-token chunk. How a
  weight acts on the embedding is ComfyUI's rule (prompt_tokens.py): the
  weighted tokens' vectors are moved away from (or towards) the empty prompt's vectors at the same places.
- **Embeddings** (textual inversion): `embedding:name` as ComfyUI writes it (`(embedding:name:1.2)` weighs
  it), and A1111's bare file name as a word (`EasyNegative, blurry`). `name` is a file in the embeddings
  folders, with or without its suffix and subfolder.

Words and names are delimited by whitespace and `, ( ) [ ] { } < > | : " ' \`; a name also ends before
trailing dots (`EasyNegative.` at a sentence's end).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

EMPHASIS = 1.1  # `(words)`; `[words]` is 1 / EMPHASIS
EMBEDDING_PREFIX = "embedding:"

_LORA_TAG = re.compile(r"<(lora|lyco):([^<>]*)>", re.IGNORECASE)
# One emphasis token: an escape, an opening bracket, a weighted closing bracket, a closing bracket, or text.
_EMPHASIS_TOKEN = re.compile(r"\\[()\[\]\\]|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:|\\")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
CHUNK_BREAK = "BREAK"
_SEPARATORS = r"\s,()\[\]{}<>|:\"'\\"
# `embedding:name` or a word that may be an A1111 embedding's file name.
_NAME_OR_WORD = re.compile(rf"(?i:embedding):([^{_SEPARATORS}]+)|([^{_SEPARATORS}]+)")


class PromptSyntaxError(ValueError):
    """A tag the prompt writes can't be read (a LoRA strength that is no number)."""


@dataclass(frozen=True)
class LoraTag:
    """An inline `<lora:...>`: the name as written and its strengths."""

    name: str
    model_strength: float  # on the UNet
    clip_strength: float  # on the text encoders
    written: str  # the whole tag, for messages


@dataclass(frozen=True)
class Segment:
    """A run of text with one emphasis weight."""

    text: str
    weight: float


@dataclass(frozen=True)
class EmbeddingRef:
    """How the prompt names an embedding, and the file that is (the name the embeddings list gives)."""

    word: str  # explicit: the name after `embedding:`; else the bare word, casefolded
    name: str
    explicit: bool


@dataclass(frozen=True)
class Piece:
    """What the encoder reads: text, or an embedding's vectors in place of `text` (the word as written)."""

    text: str
    weight: float = 1.0
    embedding: str | None = None  # the embedding file's name
    explicit: bool = False  # `embedding:name`: must be used; a bare word falls back to its text


@dataclass(frozen=True)
class PromptScan:
    """What a prompt asks for besides text: its LoRA tags and the embeddings it may name."""

    loras: tuple[LoraTag, ...]
    explicit_embeddings: tuple[str, ...]  # names after `embedding:`, in order of appearance
    words: frozenset[str]  # casefolded words that name an embedding if a file of that name exists


def split_lora_tags(text: str) -> tuple[str, list[LoraTag]]:
    """The text without its `<lora:...>` tags, and the tags (each replaced by a space)."""
    tags = [_lora_tag(m[0], m[2]) for m in _LORA_TAG.finditer(text)]
    return (_LORA_TAG.sub(" ", text) if tags else text), tags


def _lora_tag(written: str, inside: str) -> LoraTag:
    name, *fields = (part.strip() for part in inside.split(":"))
    if not name:
        raise PromptSyntaxError(f"The prompt's {written} names no LoRA.")
    positional: list[float] = []
    named: dict[str, float] = {}
    for field in fields:
        key, equals, value = field.partition("=")
        number = _strength(value if equals else field, written)
        if not equals:
            positional.append(number)
        elif key.strip() in ("te", "unet"):
            named[key.strip()] = number
        else:
            raise PromptSyntaxError(
                f"The prompt's {written}: {key.strip()!r} is no LoRA setting (te or unet)."
            )
    if len(positional) > 2:
        raise PromptSyntaxError(f"The prompt's {written} has more than two strengths.")
    clip = named.get("te", positional[0] if positional else 1.0)
    model = named.get("unet", positional[1] if len(positional) > 1 else clip)
    return LoraTag(name, model, clip, written)


def _strength(value: str, written: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and -10.0 <= number <= 10.0):
        raise PromptSyntaxError(
            f"The prompt's {written}: {value.strip()!r} is not a strength from -10 to 10."
        )
    return number


def parse_emphasis(text: str) -> list[Segment]:
    """The text as runs of equal weight (A1111's notation, module docstring), escapes resolved; adjacent
    runs of one weight merged. A text without brackets or escapes is one run of weight 1, unchanged."""
    runs: list[list[str | float]] = []  # [text, weight], weights multiplied as brackets close
    round_open: list[int] = []  # index into runs where each open `(` began
    square_open: list[int] = []

    def weigh(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] = float(run[1]) * factor

    for match in _EMPHASIS_TOKEN.finditer(text):
        token, weight = match[0], match[1]
        if len(token) == 2 and token[0] == "\\":
            runs.append([token[1], 1.0])
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open and _finite(weight):
            weigh(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            weigh(round_open.pop(), EMPHASIS)
        elif token == "]" and square_open:
            weigh(square_open.pop(), 1 / EMPHASIS)
        else:
            runs.append([_BREAK.sub(f" {CHUNK_BREAK} ", token), 1.0])
    for start in round_open:
        weigh(start, EMPHASIS)
    for start in square_open:
        weigh(start, 1 / EMPHASIS)
    merged: list[Segment] = []
    for run_text, run_weight in runs:
        run_text, run_weight = str(run_text), float(run_weight)
        if merged and merged[-1].weight == run_weight:
            merged[-1] = Segment(merged[-1].text + run_text, run_weight)
        elif run_text:
            merged.append(Segment(run_text, run_weight))
    return merged or [Segment("", 1.0)]


def _finite(number: str) -> bool:
    try:
        return math.isfinite(float(number))
    except ValueError:
        return False


def _names_and_words(text: str) -> Iterator[tuple[int, int, str, bool]]:
    """(start, end, name, explicit) for each `embedding:name` and each bare word, trailing dots left out."""
    for match in _NAME_OR_WORD.finditer(text):
        explicit = match[1] is not None
        found = match[1] if explicit else match[2]
        stripped = found.rstrip(".")
        if stripped:
            yield match.start(), match.end() - (len(found) - len(stripped)), stripped, explicit


def scan_prompt(text: str) -> PromptScan:
    """The LoRA tags and embedding names a prompt writes, read as `prompt_pieces` reads them."""
    rest, loras = split_lora_tags(text)
    explicit: list[str] = []
    words: set[str] = set()
    for segment in parse_emphasis(rest):
        for _, _, name, is_explicit in _names_and_words(segment.text):
            if is_explicit:
                explicit.append(name)
            else:
                words.add(name.casefold())
    return PromptScan(tuple(loras), tuple(dict.fromkeys(explicit)), frozenset(words))


def prompt_pieces(text: str, embeddings: tuple[EmbeddingRef, ...] = ()) -> list[Piece]:
    """What the text encoders read for `text`: LoRA tags removed, emphasis applied, and each word that
    `embeddings` resolves (`embedding:name`, or a bare file name) as an embedding piece. An `embedding:name`
    that `embeddings` lacks stays text here (resolution at intake refuses it before this is reached)."""
    explicit: Mapping[str, str] = {ref.word: ref.name for ref in embeddings if ref.explicit}
    bare: Mapping[str, str] = {ref.word: ref.name for ref in embeddings if not ref.explicit}
    rest, _ = split_lora_tags(text)
    pieces: list[Piece] = []
    for segment in parse_emphasis(rest):
        text_from = 0  # where the segment's text not yet in a piece begins
        for start, end, name, is_explicit in _names_and_words(segment.text):
            found = explicit.get(name) if is_explicit else bare.get(name.casefold())
            if found is None:
                continue
            if start > text_from:
                pieces.append(Piece(segment.text[text_from:start], segment.weight))
            pieces.append(Piece(segment.text[start:end], segment.weight, found, is_explicit))
            text_from = end
        if text_from < len(segment.text):
            pieces.append(Piece(segment.text[text_from:], segment.weight))
    return pieces or [Piece("")]


def plain_text(pieces: list[Piece]) -> str | None:
    """The text when the pieces are one run of unweighted text (encoded exactly as before this syntax)."""
    if len(pieces) == 1 and pieces[0].weight == 1.0 and pieces[0].embedding is None:
        if CHUNK_BREAK in pieces[0].text.split():
            return None  # chunks to cut where it says
        return pieces[0].text
    return None
