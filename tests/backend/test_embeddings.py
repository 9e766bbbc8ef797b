"""Textual-inversion embeddings: the A1111/ComfyUI files read as diffusers' `load_textual_inversion` reads
them (bit-identical text embeddings on the tiny SD1.5 and SDXL text encoders), written in prompts as ComfyUI
(`embedding:name`) and A1111 (the bare file name) write them, cached by file version; and emphasis, which
changes the embedding at the weighted tokens only."""

# diffusers' annotations reject its own documented calls (pipelines built with None parts)
# pyright: reportArgumentType=false

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from backend.engine.conditioning import Conditioner, EncodablePrompt, conditioning_for
from backend.engine.model_choice import ModelChoice
from backend.engine.prompt_models import prompt_models
from backend.engine.prompt_syntax import Piece
from backend.engine.prompt_tokens import plain_tokens
from backend.engine.prompts import PromptCache
from backend.loading.embeddings import EmbeddingFiles, read_embedding
from backend.loading.tokenizer import load_tokenizer, load_tokenizer_2
from backend.model_errors import ModelError, ModelNotFoundError
from backend.model_families import SD15, SDXL
from backend.model_files import ModelStore
from protocol.messages import JobParams
from tests.fixtures import tiny_sdxl
from tests.fixtures.tiny_models import build_text_encoder

CPU = torch.device("cpu")
PROMPT = "a photo of {}, red house by a lake"


@pytest.fixture(scope="module")
def sd15() -> Any:
    return _components(SD15, text_encoder=build_text_encoder(seed=3), tokenizer=load_tokenizer())


@pytest.fixture(scope="module")
def sdxl() -> Any:
    return _components(
        SDXL,
        text_encoder=tiny_sdxl.build_text_encoder(seed=21),
        tokenizer=load_tokenizer(),
        text_encoder_2=tiny_sdxl.build_text_encoder_2(seed=22),
        tokenizer_2=load_tokenizer_2(),
    )


def _components(family: Any, **parts: Any) -> Any:
    # The conditioner reads the UNet's dtype and whether it is guidance-distilled; no UNet needs to run.
    unet = SimpleNamespace(dtype=torch.float32, config=SimpleNamespace(time_cond_proj_dim=None))
    return SimpleNamespace(unet=unet, name=f"tiny-{family.name}", family=family, **parts)


def vectors(count: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.5


def write_a1111_pt(path: Path, vecs: torch.Tensor) -> None:
    """As A1111's textual-inversion training saves them (the vectors still carrying requires_grad)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vecs.clone().requires_grad_(True)},
        "name": path.stem,
        "step": 3000,
        "sd_checkpoint": "a1b2c3d4",
        "sd_checkpoint_name": "v1-5-pruned",
    }
    torch.save(data, path)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


class Setup:
    """A models folder with embeddings, and a conditioner that loads them the way the model cache does."""

    def __init__(self, root: Path) -> None:
        self.store = ModelStore(root)
        self.files = EmbeddingFiles()
        self.cache = PromptCache()
        self.conditioner = Conditioner(self.cache, CPU, embeddings=self.load)

    def load(self, name: str) -> Any:
        return self.files.load(self.store.resolve("embeddings", name), name)

    def encode(self, components: Any, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        found = prompt_models(self.store, [prompt])
        choice = ModelChoice(components.name, None, (), None, (), found.embeddings)
        guidance = self.conditioner.guidance(components, choice, JobParams(prompt=prompt, cfg=1.0))
        pooled = guidance.added["text_embeds"] if guidance.added else None
        return guidance.cond, pooled


def sd15_reference(components: Any, prompt: str, files: list[tuple[Path, str]]) -> torch.Tensor:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=None, text_encoder=copy.deepcopy(components.text_encoder),
        tokenizer=copy.deepcopy(components.tokenizer), unet=None, scheduler=None, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    for path, token in files:
        pipe.load_textual_inversion(str(path), token=token)
    return pipe.encode_prompt(prompt, CPU, 1, False)[0]


@pytest.mark.slow  # diffusers' pipelines: imports and a model copy each
@pytest.mark.parametrize(
    ("layout", "count"),
    [("a1111_pt", 1), ("a1111_pt", 3), ("a1111_safetensors", 1), ("a1111_safetensors", 2), ("diffusers", 1)],
)
def test_sd15_embeddings_agree_with_diffusers(sd15: Any, tmp_path: Path, layout: str, count: int) -> None:
    vecs = vectors(count, 32, seed=count)
    if layout == "a1111_pt":
        path = tmp_path / "embeddings" / "myemb.pt"
        write_a1111_pt(path, vecs)
    elif layout == "a1111_safetensors":
        path = tmp_path / "embeddings" / "myemb.safetensors"
        write_safetensors(path, {"emb_params": vecs})
    else:  # diffusers' learned_embeds: {token: vector}
        path = tmp_path / "embeddings" / "myemb.safetensors"
        write_safetensors(path, {"<myemb>": vecs[0]})
    setup = Setup(tmp_path)
    reference = sd15_reference(sd15, PROMPT.format("myemb"), [(path, "myemb")])
    for written in (
        "myemb",
        "embedding:myemb",
        "MyEmb",
        "embedding:myemb.pt" if layout == "a1111_pt" else "myemb",
    ):
        ours, _ = setup.encode(sd15, PROMPT.format(written))
        assert torch.equal(ours, reference), written
    plain, _ = setup.encode(sd15, PROMPT.format("a cat"))
    assert not torch.equal(plain, reference)


@pytest.mark.slow  # diffusers' pipelines: imports and a model copy each
def test_two_embeddings_in_one_prompt(sd15: Any, tmp_path: Path) -> None:
    # names that are no word of the vocabulary: diffusers refuses to add those as tokens
    first, second = (
        tmp_path / "embeddings" / "zqone.pt",
        tmp_path / "embeddings" / "neg" / "zqtwo.safetensors",
    )
    write_a1111_pt(first, vectors(2, 32, seed=10))
    write_safetensors(second, {"emb_params": vectors(3, 32, seed=11)})
    prompt = "zqone, a house, zqtwo and zqone"
    reference = sd15_reference(sd15, prompt, [(first, "zqone"), (second, "zqtwo")])
    ours, _ = Setup(tmp_path).encode(sd15, "embedding:zqone, a house, embedding:neg/zqtwo and ZQONE")
    assert torch.equal(ours, reference)


@pytest.mark.slow  # diffusers' pipelines: imports and a model copy each
def test_sdxl_pair_agrees_with_diffusers(sdxl: Any, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    clip_l, clip_g = vectors(2, 32, seed=20), vectors(2, 64, seed=21)
    write_safetensors(tmp_path / "embeddings" / "myemb.safetensors", {"clip_l": clip_l, "clip_g": clip_g})
    pipe = StableDiffusionXLPipeline(
        vae=None, text_encoder=copy.deepcopy(sdxl.text_encoder),
        text_encoder_2=copy.deepcopy(sdxl.text_encoder_2), tokenizer=copy.deepcopy(sdxl.tokenizer),
        tokenizer_2=copy.deepcopy(sdxl.tokenizer_2), unet=None, scheduler=None,
    )  # fmt: skip
    # diffusers' recipe for SDXL files: each half into its own encoder and tokenizer
    pipe.load_textual_inversion(
        clip_l, token="myemb", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        clip_g, token="myemb", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    # SDXL's second encoder config has the pre-2023 end token id (2), with which transformers takes the
    # pooled output at the highest token id: in diffusers that is the added token's place. The end token's
    # own id makes it read the pooled output at the end token, where this backend reads it.
    pipe.text_encoder_2.text_model.eos_token_id = sdxl.tokenizer_2.eos_token_id
    hidden, _, pooled, _ = pipe.encode_prompt(
        PROMPT.format("myemb"), device=CPU, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    setup = Setup(tmp_path)
    for written in ("myemb", "embedding:myemb"):
        ours, our_pooled = setup.encode(sdxl, PROMPT.format(written))
        assert torch.equal(ours, hidden) and our_pooled is not None and torch.equal(our_pooled, pooled)


def test_an_embedding_for_another_family(sdxl: Any, tmp_path: Path) -> None:
    """An SD1.5 embedding (one set of CLIP-L-wide vectors) on SDXL: `embedding:name` is refused, naming it;
    the bare word stays a word, as A1111 skips embeddings made for another model."""
    write_a1111_pt(tmp_path / "embeddings" / "oldneg.pt", vectors(1, 32, seed=30))
    setup = Setup(tmp_path)
    with pytest.raises(ModelError, match=r"Embedding 'oldneg\.pt' doesn't fit this checkpoint"):
        setup.encode(sdxl, "blurry, embedding:oldneg")
    as_word, _ = setup.encode(sdxl, "blurry, oldneg")
    plain = conditioning_for(sdxl).encode(sdxl, EncodablePrompt((Piece("blurry, oldneg"),)), CPU).hidden
    assert torch.equal(as_word, plain)


def test_a_missing_embedding_is_named(tmp_path: Path) -> None:
    write_a1111_pt(tmp_path / "embeddings" / "present.pt", vectors(1, 32, seed=1))
    store = ModelStore(tmp_path)
    with pytest.raises(ModelNotFoundError, match="No embedding named 'absent'") as raised:
        prompt_models(store, ["a cat, embedding:absent, present"])
    assert "embeddings" in raised.value.message  # says where embeddings go
    # a bare word that names no file is just a word
    assert [ref.name for ref in prompt_models(store, ["absent, present"]).embeddings] == ["present.pt"]


def test_the_prompt_cache_keys_on_the_embedding_file(sd15: Any, tmp_path: Path) -> None:
    path = tmp_path / "embeddings" / "myemb.pt"
    write_a1111_pt(path, vectors(1, 32, seed=40))
    setup = Setup(tmp_path)
    first, _ = setup.encode(sd15, "a cat, myemb")
    again, _ = setup.encode(sd15, "a cat, myemb")
    assert setup.cache.hits == 1 and setup.files.loads == 1 and again is first
    write_a1111_pt(path, vectors(1, 32, seed=41))  # the painter replaces the file under its name
    replaced, _ = setup.encode(sd15, "a cat, myemb")
    assert setup.cache.hits == 1 and setup.files.loads == 2
    assert not torch.equal(replaced, first)


def test_a_plain_prompt_encodes_as_before(sd15: Any, sdxl: Any) -> None:
    """No syntax: the text encoder's output for the tokenizer's ids, as the engine has always computed it."""
    text = "a red house by a lake, evening light"
    ids = plain_tokens(sd15.tokenizer, text).input_ids
    ours = conditioning_for(sd15).encode(sd15, EncodablePrompt.of_text(text), CPU).hidden
    assert torch.equal(ours, sd15.text_encoder(ids)[0])
    layers = [
        encoder(plain_tokens(tokenizer, text).input_ids, output_hidden_states=True).hidden_states[-2]
        for encoder, tokenizer in (
            (sdxl.text_encoder, sdxl.tokenizer),
            (sdxl.text_encoder_2, sdxl.tokenizer_2),
        )
    ]
    assert torch.equal(
        conditioning_for(sdxl).encode(sdxl, EncodablePrompt.of_text(text), CPU).hidden, torch.cat(layers, -1)
    )


def changed_positions(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    return torch.nonzero((a != b).any(dim=-1)[0]).flatten().tolist()


@pytest.mark.parametrize(
    ("weighted", "positions", "weight"),
    [
        ("a photo of a (red:1.5) house", [5], 1.5),  # start token, a, photo, of, a, red
        ("a photo of a [red] house", [5], 1 / 1.1),
        ("a photo of a ((red house))", [5, 6], 1.21),
        ("(a photo:0.7) of a red house", [1, 2], 0.7),
    ],
)
def test_emphasis_changes_only_the_weighted_tokens(
    sd15: Any, sdxl: Any, weighted: str, positions: list[int], weight: float
) -> None:
    plain_text = "a photo of a red house"
    for components in (sd15, sdxl):
        conditioning = conditioning_for(components)
        plain = conditioning.encode(components, EncodablePrompt.of_text(plain_text), CPU)
        empty = conditioning.encode(components, EncodablePrompt.of_text(""), CPU)
        ours = conditioning.encode(components, EncodablePrompt.of_text(weighted), CPU)
        assert changed_positions(ours.hidden, plain.hidden) == positions
        # ComfyUI's rule: moved away from the empty prompt's output at the same place
        expected = (
            empty.hidden[:, positions] + (plain.hidden[:, positions] - empty.hidden[:, positions]) * weight
        )
        assert torch.allclose(ours.hidden[:, positions], expected, atol=1e-6)
        if plain.pooled is not None:
            assert ours.pooled is not None and torch.equal(ours.pooled, plain.pooled)  # not weighted


def test_weight_one_is_no_emphasis(sd15: Any) -> None:
    conditioning = conditioning_for(sd15)
    plain = conditioning.encode(sd15, EncodablePrompt.of_text("a red house"), CPU).hidden
    for text in ("a (red:1) house", "a (red:1.0) house", "(a red house:1)"):
        assert torch.equal(conditioning.encode(sd15, EncodablePrompt.of_text(text), CPU).hidden, plain)


def test_a_weighted_embedding(sd15: Any, tmp_path: Path) -> None:
    write_a1111_pt(tmp_path / "embeddings" / "myemb.pt", vectors(2, 32, seed=50))
    setup = Setup(tmp_path)
    plain, _ = setup.encode(sd15, "a cat, embedding:myemb")
    weighted, _ = setup.encode(sd15, "a cat, (embedding:myemb:1.3)")
    assert changed_positions(weighted, plain) == [4, 5]  # start, a, cat, ",", then the two vectors


@pytest.mark.parametrize(
    ("contents", "says"),
    [
        ({"a": torch.zeros(2, 32), "b": torch.zeros(2, 32)}, "not a textual-inversion embedding"),
        ({"emb_params": torch.zeros(80, 32)}, "80 vectors"),
        ({"emb_params": torch.zeros(2, 3, 32)}, r"\[2, 3, 32\]"),
        ({"clip_l": torch.zeros(2, 32), "clip_g": torch.zeros(3, 64)}, "different number of vectors"),
        ({"emb_params": torch.full((1, 32), float("nan"))}, "not finite"),
    ],
)
def test_unreadable_embeddings_say_why(tmp_path: Path, contents: dict[str, torch.Tensor], says: str) -> None:
    path = tmp_path / "bad.safetensors"
    write_safetensors(path, contents)
    with pytest.raises(ModelError, match=says):
        read_embedding(path, "bad.safetensors")


class NotWeights:
    pass


def test_a_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "payload": NotWeights()}, path)
    with pytest.raises(ModelError, match="Python objects besides its vectors"):
        read_embedding(path, "evil.pt")


def test_the_store_lists_embeddings_in_every_layout(tmp_path: Path) -> None:
    own = tmp_path / "models"
    write_a1111_pt(own / "embeddings" / "neg" / "bad-hands.pt", vectors(1, 32, seed=1))
    write_safetensors(own / "embeddings" / "style.safetensors", {"emb_params": vectors(1, 32, seed=2)})
    (own / "embeddings" / "notes.txt").write_text("not an embedding")
    webui = tmp_path / "stable-diffusion-webui"  # A1111 keeps embeddings beside its models folder
    (webui / "models" / "Stable-diffusion").mkdir(parents=True)
    (webui / "models" / "Lora").mkdir()
    write_a1111_pt(webui / "embeddings" / "EasyNegative.pt", vectors(1, 32, seed=3))
    comfy = tmp_path / "ComfyUI" / "models"
    (comfy / "checkpoints").mkdir(parents=True)
    write_safetensors(comfy / "embeddings" / "comfy-neg.safetensors", {"emb_params": vectors(1, 32, seed=4)})
    store = ModelStore(own, extra_roots=[webui, comfy.parent])
    expected = ["comfy-neg.safetensors", "EasyNegative.pt", "neg/bad-hands.pt", "style.safetensors"]
    assert store.list_kind("embeddings") == expected
    assert store.embedding_names() == expected
    assert (
        store.resolve("embeddings", "EasyNegative.pt").resolve() == webui / "embeddings" / "EasyNegative.pt"
    )
    assert "embeddings" in store.list_models()


def test_embedding_names_walk_only_after_a_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_a1111_pt(tmp_path / "embeddings" / "sub" / "one.pt", vectors(1, 32, seed=1))
    store = ModelStore(tmp_path)
    walks = []
    scan = store._scan  # pyright: ignore[reportPrivateUsage]
    monkeypatch.setattr(store, "_scan", lambda *args: walks.append(args[1]) or scan(*args))
    assert store.embedding_names() == ["sub/one.pt"]
    assert store.embedding_names() == ["sub/one.pt"] and len(walks) == 1  # a live frame's lookup: no walk
    write_a1111_pt(tmp_path / "embeddings" / "sub" / "two.pt", vectors(1, 32, seed=2))  # in a subfolder
    assert store.embedding_names() == ["sub/one.pt", "sub/two.pt"] and len(walks) == 2
