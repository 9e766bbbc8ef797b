"""The CLIP tokenizers, built from the BPE file shipped in backend/data.

SD1.5's (OpenAI CLIP ViT-L/14) pads with its end token. SDXL has two tokenizers over the same vocabulary: the
first is SD1.5's, the second (for the OpenCLIP bigG encoder) pads with "!", as open_clip did in training.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BPE_PATH = Path(__file__).resolve().parents[1] / "data" / "bpe_simple_vocab_16e6.txt.gz"
MODEL_MAX_LENGTH = 77
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
OPEN_CLIP_PAD_TOKEN = "!"  # id 0: open_clip pads token ids with zeros
# CLIP keeps the first 48894 merges of the file (line 0 is a version header); vocab size then comes to 49408.
MERGE_COUNT = 49152 - 256 - 2


def byte_alphabet() -> list[str]:
    """One printable character per byte value, in the order CLIP's vocabulary lists them.

    Printable Latin-1 bytes stand for themselves; the rest are shifted above 255 so that no vocabulary entry
    is whitespace or a control character.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = [chr(b) for b in printable]
    shifted = 0
    for b in range(256):
        if b not in printable:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


def read_merges(path: Path = BPE_PATH) -> list[tuple[str, str]]:
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    merges = []
    for line in lines[1 : 1 + MERGE_COUNT]:
        first, second = line.split()
        merges.append((first, second))  # tuples: the tokenizers backend rejects "a b" strings here
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    alphabet = byte_alphabet()
    tokens = [
        *alphabet,
        *(c + "</w>" for c in alphabet),
        *("".join(m) for m in merges),
        START_TOKEN,
        END_TOKEN,
    ]
    return {token: index for index, token in enumerate(tokens)}


def load_tokenizer() -> CLIPTokenizer:
    """Shared instance: building it parses 49k merges (about a second), and it holds no per-call state."""
    return _build_tokenizer(END_TOKEN)


def load_tokenizer_2() -> CLIPTokenizer:
    """SDXL's second tokenizer (`tokenizer_2`): the same vocabulary, padded with "!"."""
    return _build_tokenizer(OPEN_CLIP_PAD_TOKEN)


@lru_cache(maxsize=2)
def _build_tokenizer(pad_token: str) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    merges = read_merges()
    return CLIPTokenizer(
        vocab=build_vocab(merges),
        # transformers annotates merges as list[str]; its tokenizers backend takes only (str, str) pairs
        merges=merges,  # pyright: ignore[reportArgumentType]
        model_max_length=MODEL_MAX_LENGTH,
        bos_token=START_TOKEN,
        eos_token=END_TOKEN,
        unk_token=END_TOKEN,
        pad_token=pad_token,
    )
