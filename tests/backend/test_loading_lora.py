"""LoRA reading and fusing, and the ModelCache's caching, on the tiny models."""

# diffusers' and torch's annotations reject their own documented calls here (pipelines with
# safety_checker=None, from_config results, config and submodule attributes)
# pyright: reportArgumentType=false

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.engine.model_choice import LoraSpec
from backend.loading.checkpoint import PipelineComponents, load_checkpoint
from backend.loading.ldm_names import UNetShape, unet_name_to_ldm
from backend.loading.lora import TEXT_ENCODER, UNET, LoraFuser, LoraTargets, read_lora
from backend.loading.model_cache import ModelCache
from backend.model_files import ModelError, ModelNotFoundError, ModelStore
from tests.fixtures.tiny_models import STYLE_TEXT_TARGETS, TinyModels

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")


def fresh(tiny: TinyModels, dtype: torch.dtype = torch.float32) -> PipelineComponents:
    return load_checkpoint(tiny.path("checkpoints", tiny.diffusers_checkpoint), CPU, dtype, tiny.config_dir)


def fuse(
    tiny: TinyModels, lora: str, strength: float, clip_strength: float, path: Path | None = None
) -> PipelineComponents:
    parts = fresh(tiny)
    path = path or tiny.path("loras", lora)
    weights = read_lora(path, lora, LoraTargets(parts.unet, parts.text_encoder))
    assert not weights.skipped
    LoraFuser(parts.unet, UNET).apply([(weights, strength)])
    LoraFuser(parts.text_encoder, TEXT_ENCODER).apply([(weights, clip_strength)])
    return parts


def weights_of(parts: PipelineComponents) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v.clone() for k, v in parts.unet.state_dict().items()}
    out.update({f"te.{k}": v.clone() for k, v in parts.text_encoder.state_dict().items()})
    return out


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


def diffusers_fused(tiny: TinyModels, lora: str, scale: float) -> PipelineComponents:
    """The library's own path (peft adapters, then fuse_lora) as the reference."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    parts = fresh(tiny)
    pipe = StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=PNDMScheduler.from_config(parts.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.load_lora_weights(str(tiny.path("loras", lora)), adapter_name="reference")
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()  # keeps the fused weights, drops the peft wrappers
    return parts


@pytest.mark.parametrize("lora", ["lcm-lora-tiny.safetensors", "style-peft.safetensors"])
def test_fusion_matches_diffusers_and_peft(tiny_models: TinyModels, lora: str) -> None:
    ours = weights_of(fuse(tiny_models, lora, 0.7, 0.7))
    reference = weights_of(diffusers_fused(tiny_models, lora, 0.7))
    assert max_difference(ours, reference) < 1e-5
    assert changed(ours, weights_of(fresh(tiny_models)))  # the comparison is not vacuous


def test_lcm_lora_file_has_the_published_shape(tiny_models: TinyModels) -> None:
    tensors = load_file(str(tiny_models.path("loras", tiny_models.lcm_lora)))
    assert "lora_unet_up_blocks_1_attentions_0_proj_in.lora_up.weight" in tensors
    alphas = [v for k, v in tensors.items() if k.endswith(".alpha")]
    assert alphas and all(a.dtype == torch.float16 for a in alphas)
    parts = fresh(tiny_models)
    weights = read_lora(
        tiny_models.path("loras", tiny_models.lcm_lora), "lcm", LoraTargets(parts.unet, parts.text_encoder)
    )
    assert weights.count(UNET) == len(alphas) and weights.count(TEXT_ENCODER) == 0


def test_kohya_original_names_equal_peft_names(tiny_models: TinyModels) -> None:
    """Original SD block names, resnet layers and text encoder included, land on the same layers as peft's."""
    keys = load_file(str(tiny_models.path("loras", tiny_models.style_lora))).keys()
    for part in (
        "_emb_layers_1.",
        "_in_layers_2.",
        "_out_layers_3.",
        "_skip_connection.",
        "lora_unet_input_blocks_",
    ):
        assert any(part in k for k in keys), part
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)

    kohya = weights_of(fuse(tiny_models, tiny_models.style_lora, 0.8, 0.6))
    peft = weights_of(fuse(tiny_models, tiny_models.style_lora_peft, 0.8, 0.6))
    assert max_difference(kohya, peft) < 1e-6
    touched = changed(kohya, weights_of(fresh(tiny_models)))
    assert any(".time_emb_proj." in k for k in touched) and any(".conv_shortcut." in k for k in touched)
    assert {k.split(".")[-2] for k in touched if k.startswith("te.")} == set(STYLE_TEXT_TARGETS)


def test_older_and_comfyui_namings(tiny_models: TinyModels, tmp_path: Path) -> None:
    """The old diffusers attention-processor naming and ComfyUI's dotted original names land correctly."""
    shape = UNetShape.from_config(fresh(tiny_models).unet.config)
    renamed = {}
    for key, tensor in load_file(str(tiny_models.path("loras", tiny_models.style_lora_peft))).items():
        module, role = key.rsplit(".lora_", 1)
        role = {"A.weight": "down.weight", "B.weight": "up.weight"}[role]
        attention = re.match(r"^(unet\..*\.attn\d)\.(to_[qkv]|to_out\.0)$", module)
        text_attention = re.match(r"^(text_encoder\..*\.self_attn)\.([qkv]|out)_proj$", module)
        if attention:
            projection = attention[2].removesuffix(".0")
            renamed[f"{attention[1]}.processor.{projection}_lora.{role}"] = tensor
        elif text_attention:
            renamed[f"{text_attention[1]}.to_{text_attention[2]}_lora.{role}"] = tensor
        elif module.startswith("unet."):
            ldm = unet_name_to_ldm(module.removeprefix("unet."), shape)
            renamed[f"diffusion_model.{ldm}.lora_{role}"] = tensor
        else:
            renamed[f"{module}.lora.{role}"] = tensor
    save_file(renamed, tmp_path / "renamed.safetensors")
    other = weights_of(fuse(tiny_models, "renamed", 0.9, 0.4, path=tmp_path / "renamed.safetensors"))
    assert max_difference(other, weights_of(fuse(tiny_models, tiny_models.style_lora_peft, 0.9, 0.4))) < 1e-6


def test_bad_loras_are_model_errors(tiny_models: TinyModels, tmp_path: Path) -> None:
    parts = fresh(tiny_models)
    targets = LoraTargets(parts.unet, parts.text_encoder)
    sdxl = tmp_path / "sdxl.safetensors"
    xl_base = "lora_unet_label_emb_0_0"  # SDXL's extra embedding: SD1.5 has no such layer
    save_file(
        {
            f"{xl_base}.lora_down.weight": torch.zeros(4, 8),
            f"{xl_base}.lora_up.weight": torch.zeros(8, 4),
            "lora_unet_x.hada_w1_a": torch.zeros(1),
        },
        sdxl,
    )
    with pytest.raises(ModelError, match=r"no layers that match.*LoHa"):
        read_lora(sdxl, "sdxl", targets)
    wrong_shape = tmp_path / "wide.safetensors"
    base = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file(
        {f"{base}.lora_down.weight": torch.zeros(4, 320), f"{base}.lora_up.weight": torch.zeros(320, 4)},
        wrong_shape,
    )
    with pytest.raises(ModelError, match="doesn't fit this checkpoint"):
        read_lora(wrong_shape, "wide", targets)
    half = tmp_path / "half.safetensors"
    save_file({f"{base}.lora_down.weight": torch.zeros(4, 32)}, half)
    with pytest.raises(ModelError, match="damaged"):
        read_lora(half, "half", targets)


# --- ModelCache -------------------------------------------------------------------------------------------


@pytest.fixture
def manager(tiny_models: TinyModels) -> ModelCache:
    return ModelCache(ModelStore(tiny_models.root), CPU, torch.float32, config_dir=tiny_models.config_dir)


def test_strength_changes_re_fuse_without_reloading(manager: ModelCache, tiny_models: TinyModels) -> None:
    ckpt = tiny_models.checkpoint
    plain = manager.components(ckpt)
    clean = weights_of(plain)
    assert manager.components(ckpt) is plain  # identical call: no-op, same object

    style = LoraSpec(tiny_models.style_lora, model_strength=1.0, clip_strength=1.0)
    lcm = LoraSpec(tiny_models.lcm_lora)
    first = manager.components(ckpt, [style], lcm_lora=lcm)
    at_one = weights_of(first)
    assert first.unet is plain.unet and changed(at_one, clean)

    weaker = manager.components(ckpt, [LoraSpec(style.name, 0.3, 0.5)], lcm_lora=lcm)
    assert weaker.unet is plain.unet
    assert changed(weights_of(weaker), at_one)
    again = manager.components(ckpt, [style], lcm_lora=lcm)
    assert max_difference(weights_of(again), at_one) < 1e-5
    assert not changed(weights_of(again), at_one)  # recomputed from the originals: bit-exact

    manager.components(ckpt, [LoraSpec(style.name, 0.0, 0.0)], lcm_lora=LoraSpec(lcm.name, 0.0, 0.0))
    assert not changed(weights_of(plain), clean)  # strength 0 is exactly no LoRA
    manager.components(ckpt)
    assert not changed(weights_of(plain), clean)

    assert manager.load_counts["checkpoint"] == 1
    assert manager.load_counts["lora"] == 2  # each file read once, then re-fused from the cache
    assert manager.loaded()["loras"] == []


def test_fp16_fusing_back_and_forth_does_not_drift(tiny_models: TinyModels) -> None:
    manager = ModelCache(ModelStore(tiny_models.root), CPU, torch.float16, config_dir=tiny_models.config_dir)
    lcm = tiny_models.lcm_lora
    once = weights_of(manager.components(tiny_models.checkpoint, [LoraSpec(lcm, 0.9)]))
    for strength in (0.1, 0.55, 1.0, 0.25):
        manager.components(tiny_models.checkpoint, [LoraSpec(lcm, strength)])
    back = weights_of(manager.components(tiny_models.checkpoint, [LoraSpec(lcm, 0.9)]))
    assert not changed(back, once)


def test_loaded_reports_the_state(manager: ModelCache, tiny_models: TinyModels) -> None:
    assert manager.loaded()["checkpoint"] is None
    manager.components(
        tiny_models.inpaint_checkpoint,
        [LoraSpec(tiny_models.style_lora, 0.5, 0.25)],
        vae=tiny_models.vae,
        lcm_lora=LoraSpec(tiny_models.lcm_lora),
    )
    state = manager.loaded()
    assert state["checkpoint"] == tiny_models.inpaint_checkpoint and state["is_inpaint"]
    assert state["vae"] == tiny_models.vae
    assert state["loras"] == [{"name": tiny_models.style_lora, "model_strength": 0.5, "clip_strength": 0.25}]
    assert state["lcm_lora"]["name"] == tiny_models.lcm_lora
    assert state["dtype"] == "float32"


def test_vae_override_and_back(manager: ModelCache, tiny_models: TinyModels) -> None:
    plain = manager.components(tiny_models.checkpoint)
    own_vae = plain.vae
    overridden = manager.components(tiny_models.checkpoint, vae=tiny_models.vae)
    assert overridden.vae is not own_vae and overridden.unet is plain.unet
    assert not torch.equal(overridden.vae.decoder.conv_out.weight, own_vae.decoder.conv_out.weight)
    back = manager.components(tiny_models.checkpoint)
    assert back.vae is own_vae
    assert manager.load_counts["checkpoint"] == 1 and manager.load_counts["vae"] == 1


def test_switching_checkpoint_reloads_and_clears_loras(manager: ModelCache, tiny_models: TinyModels) -> None:
    manager.components(tiny_models.checkpoint, [LoraSpec(tiny_models.style_lora)])
    other = manager.components(tiny_models.diffusers_checkpoint)
    assert manager.load_counts["checkpoint"] == 2
    assert not changed(weights_of(other), weights_of(fresh(tiny_models)))
    assert manager.loaded()["loras"] == []


def test_failures_keep_the_working_state(
    manager: ModelCache, tiny_models: TinyModels, tmp_path: Path
) -> None:
    good = manager.components(tiny_models.checkpoint, [LoraSpec(tiny_models.style_lora, 0.5)])
    before = weights_of(good)
    save_file(
        {
            "nothing_useful.lora_down.weight": torch.zeros(1, 1),
            "nothing_useful.lora_up.weight": torch.zeros(1, 1),
        },
        tiny_models.path("loras", "broken-test.safetensors"),
    )
    try:
        with pytest.raises(ModelError):
            manager.components(tiny_models.checkpoint, [LoraSpec("broken-test.safetensors")])
    finally:
        tiny_models.path("loras", "broken-test.safetensors").unlink()
    with pytest.raises(ModelNotFoundError):
        manager.components("missing.safetensors")
    with pytest.raises(ModelNotFoundError):
        manager.components(tiny_models.checkpoint, [LoraSpec("missing.safetensors")])
    with pytest.raises(ModelError, match="finite"):
        manager.components(tiny_models.checkpoint, [LoraSpec(tiny_models.style_lora, float("nan"))])
    assert manager.loaded()["checkpoint"] == tiny_models.checkpoint
    assert manager.loaded()["loras"][0]["model_strength"] == 0.5
    assert not changed(weights_of(good), before)


def test_controlnet_and_taesd_are_cached(manager: ModelCache, tiny_models: TinyModels) -> None:
    first = manager.controlnet(tiny_models.controlnet_scribble)
    assert manager.controlnet(tiny_models.controlnet_scribble) is first
    assert manager.controlnet(tiny_models.controlnet_openpose) is not first
    assert manager.load_counts["controlnet"] == 2
    taesd = manager.taesd()
    assert taesd is not None and manager.taesd() is taesd
    assert manager.loaded()["controlnets"] == [
        tiny_models.controlnet_openpose,
        tiny_models.controlnet_scribble,
    ]


def test_taesd_absent_is_none(tmp_path: Path) -> None:
    assert ModelCache(ModelStore(tmp_path / "models"), CPU, torch.float32).taesd() is None


def test_only_the_most_recently_used_controlnets_stay_loaded(
    manager: ModelCache, tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend.loading import model_cache as model_cache_module

    monkeypatch.setattr(model_cache_module, "MAX_CONTROLNETS", 1)
    scribble = manager.controlnet(tiny_models.controlnet_scribble)
    manager.controlnet(tiny_models.controlnet_openpose)  # evicts the scribble ControlNet
    assert manager.loaded()["controlnets"] == [tiny_models.controlnet_openpose]
    assert manager.controlnet(tiny_models.controlnet_scribble) is not scribble  # loaded again from its file
    assert manager.load_counts["controlnet"] == 3
