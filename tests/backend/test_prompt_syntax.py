"""The prompt syntax's documented examples (backend/engine/prompt_syntax.py, protocol/README.md)."""

from __future__ import annotations

import pytest

from backend.engine.prompt_syntax import (
    EMPHASIS,
    EmbeddingRef,
    LoraTag,
    Piece,
    PromptSyntaxError,
    Segment,
    parse_emphasis,
    plain_text,
    prompt_pieces,
    scan_prompt,
    split_lora_tags,
)

LESS = 1 / EMPHASIS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red house", [("a red house", 1.0)]),
        ("a (red) house", [("a ", 1.0), ("red", EMPHASIS), (" house", 1.0)]),
        ("a [red] house", [("a ", 1.0), ("red", LESS), (" house", 1.0)]),
        ("a (red:1.3) house", [("a ", 1.0), ("red", 1.3), (" house", 1.0)]),
        ("(red : 0.5)", [("red ", 0.5)]),
        ("((red))", [("red", EMPHASIS * EMPHASIS)]),
        ("((red:1.5))", [("red", 1.5 * EMPHASIS)]),  # nested brackets multiply (A1111)
        ("[(red)]", [("red", EMPHASIS * LESS)]),
        ("(red, (blue:2))", [("red, ", EMPHASIS), ("blue", 2 * EMPHASIS)]),
        ("a (red house", [("a ", 1.0), ("red house", EMPHASIS)]),  # left open: closed at the end
        ("a [red house", [("a ", 1.0), ("red house", LESS)]),
        (r"a \(red\) house", [("a (red) house", 1.0)]),  # escapes are the characters themselves
        (r"\[x\] \\ y", [(r"[x] \ y", 1.0)]),
        (r"(a \(b\))", [("a (b)", EMPHASIS)]),
        ("a :1.3) house", [("a :1.3) house", 1.0)]),  # a weight with no `(` before it is text
        ("red) house]", [("red) house]", 1.0)]),  # so are closing brackets with nothing open
        ("a photo: close-up", [("a photo: close-up", 1.0)]),
        ("(red:x)", [("red:x", EMPHASIS)]),  # no number after the colon: text, and the bracket weighs 1.1
        ("castle BREAK dragon", [("castle BREAK dragon", 1.0)]),  # a word of its own: a chunk ends there
        ("castle,BREAK(dragon)", [("castle, BREAK ", 1.0), ("dragon", 1.1)]),
        ("(red:1)", [("red", 1.0)]),
        ("a (b:1.0) c", [("a b c", 1.0)]),  # runs of one weight are merged
        ("", [("", 1.0)]),
        ("()", [("", 1.0)]),
    ],
)
def test_emphasis(text: str, expected: list[tuple[str, float]]) -> None:
    found = parse_emphasis(text)
    assert [segment.text for segment in found] == [text for text, _ in expected]
    assert [segment.weight for segment in found] == pytest.approx([weight for _, weight in expected])


def test_a_prompt_without_syntax_is_unchanged() -> None:
    for text in ("a red house by a lake", "photo, 8k, detailed: sharp", "", "  spaces  "):
        assert parse_emphasis(text) == [Segment(text, 1.0)]
        assert plain_text(prompt_pieces(text)) == text


@pytest.mark.parametrize(
    ("text", "tags", "rest"),
    [
        ("a cat <lora:style:0.8>", [("style", 0.8, 0.8)], "a cat  "),
        ("<lora:style>", [("style", 1.0, 1.0)], " "),
        # A1111's order: the text encoder's strength first, then the UNet's
        ("<lora:style:0.8:0.5>", [("style", 0.5, 0.8)], " "),
        ("<lora:style:te=0.3:unet=0.6>", [("style", 0.6, 0.3)], " "),
        ("<lora:style:0.4:unet=0>", [("style", 0.0, 0.4)], " "),
        ("<lora:sub/style.safetensors:-1>", [("sub/style.safetensors", -1.0, -1.0)], " "),
        ("<lyco:detail:0.5>", [("detail", 0.5, 0.5)], " "),
        ("<LoRA: style : 0.7 >", [("style", 0.7, 0.7)], " "),
        ("a <lora:one:1> b <lora:two:0.5>", [("one", 1.0, 1.0), ("two", 0.5, 0.5)], "a   b  "),
        ("<hypernet:x:1> <lora:unclosed", [], "<hypernet:x:1> <lora:unclosed"),
    ],
)
def test_lora_tags(text: str, tags: list[tuple[str, float, float]], rest: str) -> None:
    found_rest, found = split_lora_tags(text)
    assert found_rest == rest
    assert [(tag.name, tag.model_strength, tag.clip_strength) for tag in found] == tags


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("<lora:style:strong>", "'strong' is not a strength"),
        ("<lora:style:11>", "'11' is not a strength"),
        ("<lora:style:nan>", "'nan' is not a strength"),
        ("<lora::0.5>", "names no LoRA"),
        ("<lora:style:1:1:1>", "more than two strengths"),
        ("<lora:style:dyn=4>", "'dyn' is no LoRA setting"),
    ],
)
def test_unreadable_lora_tags(text: str, says: str) -> None:
    with pytest.raises(PromptSyntaxError, match=says):
        split_lora_tags(text)


def test_scan_finds_tags_embedding_names_and_candidate_words() -> None:
    scan = scan_prompt(
        "(embedding:EasyNegative:1.2), embedding:sub/bad-hands-5.pt. Ugly_Face, <lora:style:0.8>"
    )
    assert scan.loras == (LoraTag("style", 0.8, 0.8, "<lora:style:0.8>"),)
    assert scan.explicit_embeddings == ("EasyNegative", "sub/bad-hands-5.pt")
    assert "ugly_face" in scan.words and "style" not in scan.words  # casefolded; tags are no words


EASY = EmbeddingRef("easynegative", "EasyNegative.safetensors", explicit=False)
BAD_HANDS = EmbeddingRef("bad-hands-5", "neg/bad-hands-5.pt", explicit=True)


def test_pieces_put_embeddings_in_place_of_their_names() -> None:
    pieces = prompt_pieces("blurry, (embedding:bad-hands-5:1.2), EasyNegative. <lora:x:1>", (EASY, BAD_HANDS))
    assert pieces == [
        Piece("blurry, ", 1.0),
        Piece("embedding:bad-hands-5", 1.2, "neg/bad-hands-5.pt", explicit=True),
        Piece(", ", 1.0),
        Piece("EasyNegative", 1.0, "EasyNegative.safetensors"),  # A1111's bare name, any case
        Piece(".  ", 1.0),  # the sentence's dot stays text; the tag is gone
    ]
    assert plain_text(pieces) is None


def test_only_resolved_names_and_whole_words_become_embeddings() -> None:
    assert prompt_pieces("EasyNegatives, my-easynegative, easynegative_v2", (EASY,)) == [
        Piece("EasyNegatives, my-easynegative, easynegative_v2")
    ]
    # an explicit name the intake did not resolve stays text (intake refuses it before the engine sees it)
    assert prompt_pieces("embedding:unknown", (EASY,)) == [Piece("embedding:unknown")]
    # a bare word that is a resolved explicit name only is no embedding
    assert prompt_pieces("bad-hands-5", (BAD_HANDS,)) == [Piece("bad-hands-5")]
