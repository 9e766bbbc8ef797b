"""Prompts longer than 75 tokens (backend/engine/prompt_tokens.py, conditioning.py), as ComfyUI and A1111 read
them: chunks of 77 positions, each encoded on its own and read one after the other; a word or an embedding is
never split across two chunks; a negative prompt of fewer chunks is padded with the empty prompt's chunk;
SDXL's pooled embedding is the first chunk's. One-chunk prompts are encoded as before (test_embeddings.py)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from backend.engine.conditioning import Conditioner, EncodablePrompt, conditioning_for
from backend.engine.model_choice import ModelChoice
from backend.engine.prompt_syntax import Piece
from backend.engine.prompt_tokens import Encoder, plain_tokens, tokenize
from backend.engine.prompts import PromptCache
from backend.loading.tokenizer import load_tokenizer, load_tokenizer_2
from backend.model_families import SD15, SDXL
from protocol.messages import JobParams
from tests.backend.test_engine_support import job, make_canvas, make_engine, run
from tests.fixtures import tiny_sdxl
from tests.fixtures.tiny_models import build_text_encoder

CPU = torch.device("cpu")
LONG = "cat " * 100  # 100 tokens: a chunk of 75 and one of 25


def components(family: Any, **parts: Any) -> Any:
    unet = SimpleNamespace(dtype=torch.float32, config=SimpleNamespace(time_cond_proj_dim=None))
    return SimpleNamespace(unet=unet, name=f"tiny-{family.name}", family=family, **parts)


@pytest.fixture(scope="module")
def sd15() -> Any:
    return components(SD15, text_encoder=build_text_encoder(seed=3), tokenizer=load_tokenizer())


@pytest.fixture(scope="module")
def sdxl() -> Any:
    return components(
        SDXL,
        text_encoder=tiny_sdxl.build_text_encoder(seed=21),
        tokenizer=load_tokenizer(),
        text_encoder_2=tiny_sdxl.build_text_encoder_2(seed=22),
        tokenizer_2=load_tokenizer_2(),
    )


def encode(parts: Any, text: str) -> Any:
    with torch.inference_mode():
        return conditioning_for(parts).encode(parts, EncodablePrompt.of_text(text), CPU)


def clip_chunk(parts: Any, text: str) -> torch.Tensor:
    """What CLIP gives for `text` as one chunk of its own (start, tokens, end, padding)."""
    with torch.inference_mode():
        return parts.text_encoder(plain_tokens(parts.tokenizer, text).input_ids)[0]


def test_a_long_prompt_is_read_as_chunks_one_after_the_other(sd15: Any) -> None:
    hidden = encode(sd15, LONG).hidden
    assert hidden.shape[1] == 2 * 77
    assert torch.equal(hidden[:, :77], clip_chunk(sd15, "cat " * 75))
    assert torch.equal(hidden[:, 77:], clip_chunk(sd15, "cat " * 25))
    assert encode(sd15, "cat " * 75).hidden.shape[1] == 77  # 75 tokens still fit one chunk


def test_a_word_is_not_split_across_chunks(sd15: Any) -> None:
    word = "antidisestablishmentarianism"
    word_ids = sd15.tokenizer(word, add_special_tokens=False).input_ids
    assert len(word_ids) > 1  # several tokens: it would straddle the boundary
    encoder = Encoder("clip_l", sd15.tokenizer, sd15.text_encoder)
    [chunks] = EncodablePrompt.of_text("cat " * 74 + word + " dog").tokens([encoder])
    assert len(chunks) == 2
    first, second = (chunk.input_ids[0].tolist() for chunk in chunks)
    cat = sd15.tokenizer("cat", add_special_tokens=False).input_ids[0]
    assert first[1:76] == [cat] * 74 + [sd15.tokenizer.eos_token_id]  # padded out after the 74 cats
    dog = sd15.tokenizer("dog", add_special_tokens=False).input_ids
    assert second[1 : 2 + len(word_ids)] == [*word_ids, *dog]


def test_break_ends_a_chunk_as_in_a1111(sd15: Any) -> None:
    hidden = encode(sd15, "a castle on a hill BREAK a red dragon BREAK").hidden
    assert hidden.shape[1] == 2 * 77
    assert torch.equal(hidden[:, :77], clip_chunk(sd15, "a castle on a hill"))
    assert torch.equal(hidden[:, 77:], clip_chunk(sd15, "a red dragon"))
    assert encode(sd15, "a castle, BREAKING news").hidden.shape[1] == 77  # only the word in capitals


@dataclass(frozen=True)
class FixedEmbedding:
    rows: torch.Tensor

    def vectors(self, role: str, width: int) -> torch.Tensor | None:
        return self.rows

    def widths(self) -> str:
        return f"{self.rows.shape[1]}-wide vectors"


def test_an_embeddings_vectors_stay_in_one_chunk(sd15: Any) -> None:
    encoder = Encoder("clip_l", sd15.tokenizer, sd15.text_encoder)
    vecs = torch.randn(3, 32, generator=torch.Generator().manual_seed(60))
    loaded = {"e.pt": FixedEmbedding(vecs)}
    pieces = [Piece("cat " * 73, 1.2), Piece("e", 1.0, "e.pt", explicit=True), Piece("dog")]
    first, second = tokenize(encoder, pieces, loaded)
    assert first.rows is None and first.weights[1:74] == (1.2,) * 73
    assert second.positions == (1, 2, 3) and second.rows is not None and torch.equal(second.rows, vecs)


def test_a_shorter_negative_prompt_is_padded_with_the_empty_chunk(sd15: Any) -> None:
    conditioner = Conditioner(PromptCache(), CPU)
    choice = ModelChoice(sd15.name, None, (), None)
    with torch.inference_mode():
        params = JobParams(prompt=LONG, negative_prompt="blurry", cfg=4.0)
        guidance = conditioner.guidance(sd15, choice, params)
    assert guidance.uncond is not None and guidance.cond.shape == guidance.uncond.shape
    assert torch.equal(guidance.uncond[:, :77], clip_chunk(sd15, "blurry"))
    assert torch.equal(guidance.uncond[:, 77:], clip_chunk(sd15, ""))
    assert guidance.embeddings().shape[:2] == (2, 154)


def test_sdxl_reads_both_encoders_in_chunks_and_pools_the_first(sdxl: Any) -> None:
    long, first = encode(sdxl, LONG), encode(sdxl, "cat " * 75)
    assert long.hidden.shape[1] == 154 and torch.equal(long.hidden[:, :77], first.hidden)
    assert long.pooled is not None and first.pooled is not None and torch.equal(long.pooled, first.pooled)


@pytest.mark.slow
def test_the_words_past_75_tokens_reach_the_image() -> None:
    """A job whose prompt is 75 tokens and then more words: the words past the first chunk change the result
    (they used to be dropped), and a long prompt with a short negative at cfg > 1 runs."""
    engine, _ = make_engine()
    canvas = make_canvas(64, 64, seed=8)
    head = "a watercolor house, " * 15  # 75 tokens of "a watercolor house ,"
    params: dict[str, Any] = {"sampler": "euler", "cfg": 3.0, "negative_prompt": "blurry", "strength": 0.8}
    short = run(engine, job(canvas, prompt=head, **params)).image
    longer = run(engine, job(canvas, prompt=head + "stormy night sky, lightning", **params)).image
    assert not np.array_equal(short, longer)
