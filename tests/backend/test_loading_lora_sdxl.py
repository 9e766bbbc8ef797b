"""SDXL LoRAs as painters download them (kohya original and diffusers block names, lora_te1_/lora_te2_, peft),
fused into the UNet and both text encoders; LoRAs of the other family refused; the automatic LCM-LoRA of the
checkpoint's family. On the tiny SD1.5 and SDXL models in one models folder, as a painter's folder holds both.
"""

# diffusers' and torch's annotations reject their own documented calls here (from_single_file with config=,
# pipeline calls, config and submodule attributes)
# pyright: reportArgumentType=false, reportCallIssue=false, reportAttributeAccessIssue=false

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from backend.engine import Engine, EngineSettings
from backend.engine.model_choice import LoraSpec, choose_models
from backend.loading.checkpoint import PipelineComponents, load_checkpoint
from backend.loading.lora import TEXT_ENCODER, TEXT_ENCODER_2, UNET, LoraFuser, LoraTargets, read_lora
from backend.loading.model_cache import ModelCache
from backend.model_errors import ModelError
from backend.model_files import ModelStore
from protocol.messages import JobParams, LoraParam
from tests.backend.test_engine_agreement import SCHEDULERS, assert_agrees, owned_pipeline
from tests.backend.test_engine_support import job, make_canvas, run
from tests.fixtures.tiny_models import LORA_ALPHA, LORA_RANK, TinyModels, build_tiny_models
from tests.fixtures.tiny_sdxl import TinySdxl, build_tiny_sdxl

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
FLOAT32_EPS = torch.finfo(torch.float32).eps
PARTS = {"unet": UNET, "text_encoder": TEXT_ENCODER, "text_encoder_2": TEXT_ENCODER_2}


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyModels, TinySdxl]:
    root = tmp_path_factory.mktemp("lora-sdxl") / "models"
    return build_tiny_models(root), build_tiny_sdxl(root)


@pytest.fixture(scope="module")
def tiny_sdxl(both: tuple[TinyModels, TinySdxl]) -> TinySdxl:
    return both[1]


@pytest.fixture
def cache(tiny_sdxl: TinySdxl) -> ModelCache:
    return ModelCache(ModelStore(tiny_sdxl.root), CPU, torch.float32, tiny_sdxl.shared_config_dir)


def fresh(tiny: TinySdxl) -> PipelineComponents:
    return load_checkpoint(
        tiny.path("checkpoints", tiny.checkpoint), CPU, torch.float32, tiny.shared_config_dir
    )


def fuse(tiny: TinySdxl, lora: str, strength: float, clip_strength: float) -> PipelineComponents:
    parts = fresh(tiny)
    weights = read_lora(
        tiny.path("loras", lora), lora, LoraTargets.for_components(parts, tiny.shared_config_dir)
    )
    assert not weights.skipped
    for part, target in PARTS.items():
        LoraFuser(getattr(parts, part), target).apply(
            [(weights, clip_strength if "text" in part else strength)]
        )
    return parts


def weights_of(parts: Any) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v.clone() for part in PARTS for k, v in getattr(parts, part).state_dict().items()}


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_the_files_have_the_published_names(tiny_sdxl: TinySdxl) -> None:
    style = load_file(str(tiny_sdxl.path("loras", tiny_sdxl.style_lora)))
    for key in (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",  # the second level's first attention
        "lora_unet_input_blocks_7_1_transformer_blocks_1_attn2_to_k",  # a deeper transformer's second block
        "lora_unet_output_blocks_0_0_skip_connection",
        "lora_unet_label_emb_0_0",  # the pooled-text/size embedding
        "lora_unet_input_blocks_3_0_op",
        "lora_unet_out_2",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj",
    ):
        assert f"{key}.lora_down.weight" in style and f"{key}.alpha" in style, key
    lcm = load_file(str(tiny_sdxl.path("loras", tiny_sdxl.lcm_lora)))
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight" in lcm
    assert all(v.dtype == torch.float16 for v in lcm.values())

    parts = fresh(tiny_sdxl)
    targets = LoraTargets.for_components(parts, tiny_sdxl.shared_config_dir)
    lcm_weights = read_lora(tiny_sdxl.path("loras", tiny_sdxl.lcm_lora), "lcm", targets)
    assert not lcm_weights.skipped
    assert lcm_weights.count(UNET) == len(lcm) // 3 and lcm_weights.count(TEXT_ENCODER) == 0
    style_weights = read_lora(tiny_sdxl.path("loras", tiny_sdxl.style_lora), "style", targets)
    counts = {target: style_weights.count(target) for target in PARTS.values()}
    assert sum(counts.values()) == len(style) // 3 and all(counts.values()), counts


def test_kohya_original_and_peft_names_fuse_identically(tiny_sdxl: TinySdxl) -> None:
    kohya = weights_of(fuse(tiny_sdxl, tiny_sdxl.style_lora, 0.8, 0.6))
    peft = weights_of(fuse(tiny_sdxl, tiny_sdxl.style_lora_peft, 0.8, 0.6))
    assert not changed(kohya, peft)  # alpha/rank = 1/2 folded into lora_B is exact in binary
    touched = changed(kohya, weights_of(fresh(tiny_sdxl)))
    for layer in (
        "unet.down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k.weight",
        "unet.add_embedding.linear_1.weight",
        "unet.conv_in.weight",
        "unet.conv_out.weight",
        "unet.down_blocks.0.downsamplers.0.conv.weight",
        "unet.up_blocks.1.upsamplers.0.conv.weight",
        "unet.up_blocks.0.resnets.0.conv_shortcut.weight",
        "text_encoder.encoder.layers.0.self_attn.q_proj.weight",
        "text_encoder_2.text_model.encoder.layers.2.mlp.fc2.weight",
    ):
        assert layer in touched, layer


def test_fused_weights_are_the_original_plus_the_scaled_product(tiny_sdxl: TinySdxl) -> None:
    """W + strength * alpha/rank * up @ down, computed here in float64 from the kohya file's tensors; each
    kohya layer's module is found through the peft copy (the one whose lora_A is its random down weight),
    so none of the loader's name mapping is used."""
    strength, clip_strength = 0.8, 0.6
    kohya = load_file(str(tiny_sdxl.path("loras", tiny_sdxl.style_lora)))
    peft = load_file(str(tiny_sdxl.path("loras", tiny_sdxl.style_lora_peft)))
    modules = {
        tuple(tensor.flatten().tolist()): key.removesuffix(".lora_A.weight")
        for key, tensor in peft.items()
        if key.endswith(".lora_A.weight")
    }
    original = weights_of(fresh(tiny_sdxl))
    fused = weights_of(fuse(tiny_sdxl, tiny_sdxl.style_lora, strength, clip_strength))
    expected = dict(original)
    bounds: dict[str, torch.Tensor] = {}  # float32's rounding, per element (see below)
    for layer in [k.removesuffix(".lora_down.weight") for k in kohya if k.endswith(".lora_down.weight")]:
        down, up = kohya[f"{layer}.lora_down.weight"], kohya[f"{layer}.lora_up.weight"]
        part, _, name = modules.pop(tuple(down.flatten().tolist())).partition(".")
        if part == "text_encoder":
            name = name.removeprefix("text_model.")  # CLIPTextModel has no `text_model.` level
        key = f"{part}.{name}.weight"
        scale = float(kohya[f"{layer}.alpha"]) / down.shape[0]
        assert scale == LORA_ALPHA / LORA_RANK
        delta = (up.double().flatten(1) @ down.double().flatten(1)).reshape(original[key].shape)
        size = (up.double().abs().flatten(1) @ down.double().abs().flatten(1)).reshape(original[key].shape)
        weight = strength if part == "unet" else clip_strength
        expected[key] = original[key].double() + weight * scale * delta
        # the sum rounds once (half an ulp); the product's rank-long dot products and its float32 factor
        # round a few times over, each relative to the size of its terms
        bounds[key] = FLOAT32_EPS * (expected[key].abs() + (LORA_RANK + 1) * weight * scale * size)
    assert not modules  # every layer of the peft copy was matched once
    for key, value in fused.items():
        if torch.equal(expected[key], original[key]):
            assert torch.equal(value, original[key]), key  # not in the LoRA: untouched
        else:
            assert bool(((value.double() - expected[key]).abs() <= bounds[key]).all()), key


@pytest.mark.parametrize(
    ("sampler", "cfg", "negative", "lora"),
    [("euler", 3.0, "blurry", "style"), ("euler_a", 2.0, "", "style"), ("lcm", 1.0, "", "lcm")],
)
def test_engine_with_lora_matches_diffusers(
    cache: ModelCache, tiny_sdxl: TinySdxl, sampler: str, cfg: float, negative: str, lora: str
) -> None:
    """The engine (model cache, our fusing) against diffusers' SDXL img2img pipeline on the same single file
    with the same LoRA through `load_lora_weights` and `fuse_lora` (diffusers' own kohya conversion, peft)."""
    import diffusers

    strength = 0.7
    params: dict[str, Any] = {"prompt": "a lighthouse at dusk", "negative_prompt": negative, "cfg": cfg,
                              "steps": 4, "strength": 0.6, "seed": 99, "sampler": sampler}  # fmt: skip
    if lora == "style":
        file = tiny_sdxl.style_lora
        params |= {"loras": [LoraParam(file, strength, strength)], "lcm_lora_strength": 0.0}
    else:
        file = tiny_sdxl.lcm_lora  # picked by the engine itself: the LCM sampler and no LCM-LoRA named
        params |= {"lcm_lora_strength": strength}
    engine = Engine(cache, CPU, torch.float32, EngineSettings(working_size=False, min_side=32))
    canvas = make_canvas(64, 48, seed=3)
    result = run(engine, job(canvas, checkpoint=tiny_sdxl.checkpoint, **params))
    if lora == "style":
        assert [entry["name"] for entry in result.params["loras"]] == [file]
    else:
        assert result.params["lcm_lora"] == file

    pipe = diffusers.StableDiffusionXLImg2ImgPipeline.from_single_file(
        str(tiny_sdxl.path("checkpoints", tiny_sdxl.checkpoint)), config=str(tiny_sdxl.config_dir),
        local_files_only=True,
    )  # fmt: skip
    pipe.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(tiny_sdxl.path("loras", file)), adapter_name="reference")
    owned_pipeline(pipe).fuse_lora(lora_scale=strength)  # frozen, as the engine's weights and LoRAs are
    pipe.unload_lora_weights()  # keeps the fused weights
    reference = pipe(
        prompt=params["prompt"], negative_prompt=negative or None, image=Image.fromarray(canvas[..., :3]),
        strength=params["strength"], num_inference_steps=4, guidance_scale=cfg,
        generator=torch.Generator().manual_seed(99), output_type="np",
    ).images  # fmt: skip
    # The style LoRA has 3x3 convolution layers: peft (as kohya) computes their product as a convolution, we
    # (as ComfyUI) as a matrix product; the same sum, whose last bit differs on AVX-512 CPUs: 1 level there.
    assert_agrees(result.image, reference, tolerance=1 if lora == "style" else 0)


def test_other_family_loras_are_refused_both_ways(
    both: tuple[TinyModels, TinySdxl], cache: ModelCache, tmp_path: Path
) -> None:
    sd15, sdxl = both
    plain = cache.components(sdxl.checkpoint)
    before = weights_of(plain)
    for lora in (sd15.style_lora, sd15.lcm_lora):  # with its text encoder, and the UNet alone
        with pytest.raises(ModelError, match=r"made for SD 1\.5 models; the checkpoint in use is SDXL"):
            cache.components(sdxl.checkpoint, [LoraSpec(lora)])
    assert not changed(weights_of(plain), before)  # nothing was fused on the way

    on_sd15 = ModelCache(ModelStore(sd15.root), CPU, torch.float32, sdxl.shared_config_dir)
    for lora in (sdxl.style_lora, sdxl.style_lora_peft, sdxl.lcm_lora):
        with pytest.raises(ModelError, match=r"made for SDXL models; the checkpoint in use is SD 1\.5"):
            on_sd15.components(sd15.checkpoint, [LoraSpec(lora)])

    # Widths of the real families are known without any config: an SD1.5 LoRA's 768, an SD2 one's 1024.
    parts = fresh(sdxl)
    targets = LoraTargets.for_components(parts)
    base = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    for width, family in ((768, r"SD 1\.5 models"), (1024, r"SD 2\.x")):
        path = tmp_path / f"width-{width}.safetensors"
        save_file(
            {f"{base}.lora_down.weight": torch.zeros(4, width), f"{base}.lora_up.weight": torch.zeros(8, 4)},
            path,
        )
        with pytest.raises(ModelError, match=rf"made for {family}.*the checkpoint in use is SDXL"):
            read_lora(path, path.name, targets)


def test_both_text_encoders_follow_the_clip_strength(cache: ModelCache, tiny_sdxl: TinySdxl) -> None:
    plain = cache.components(tiny_sdxl.checkpoint)
    clean = weights_of(plain)
    unet_only = weights_of(cache.components(tiny_sdxl.checkpoint, [LoraSpec(tiny_sdxl.style_lora, 1.0, 0.0)]))
    assert {k.partition(".")[0] for k in changed(unet_only, clean)} == {"unet"}
    text_only = weights_of(cache.components(tiny_sdxl.checkpoint, [LoraSpec(tiny_sdxl.style_lora, 0.0, 1.0)]))
    assert {k.partition(".")[0] for k in changed(text_only, clean)} == {"text_encoder", "text_encoder_2"}
    cache.components(tiny_sdxl.checkpoint)
    assert not changed(weights_of(plain), clean)  # unfused exactly, the second text encoder included
    assert cache.load_counts["checkpoint"] == 1 and cache.load_counts["lora"] == 1


def test_the_automatic_lcm_lora_is_the_checkpoints_familys(both: tuple[TinyModels, TinySdxl]) -> None:
    """Both families' LCM-LoRAs in one folder: `lcm-lora-tiny-sdxl` sorts before `lcm-lora-tiny`."""
    sd15, sdxl = both
    store = ModelStore(sdxl.root)
    assert store.list_kind("loras").index(sdxl.lcm_lora) < store.list_kind("loras").index(sd15.lcm_lora)
    for checkpoint, lcm_lora in (
        (sdxl.checkpoint, sdxl.lcm_lora),
        (sdxl.diffusers_checkpoint, sdxl.lcm_lora),
        (sd15.checkpoint, sd15.lcm_lora),
        (sd15.diffusers_checkpoint, sd15.lcm_lora),
    ):
        choice = choose_models(store, JobParams(checkpoint=checkpoint, sampler="lcm"))
        assert choice.lcm_lora is not None and choice.lcm_lora.name == lcm_lora, checkpoint
