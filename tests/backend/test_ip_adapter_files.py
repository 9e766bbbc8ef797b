"""IP-Adapter and CLIP vision files told apart by their tensor names and shapes alone (the published files'
shapes, written as headers only where the real sizes would be large)."""

from __future__ import annotations

import pytest

from backend.loading.clip_vision import config_from_shapes
from backend.loading.ip_adapter import describe_ip_adapter
from backend.model_check import JUDGES
from backend.model_families import SD15, SDXL


def adapter_layers(count: int, cross: int, hidden: int = 320) -> dict[str, tuple[int, ...]]:
    names: dict[str, tuple[int, ...]] = {}
    for number in range(1, 2 * count, 2):
        names[f"ip_adapter.{number}.to_k_ip.weight"] = (hidden, cross)
        names[f"ip_adapter.{number}.to_v_ip.weight"] = (hidden, cross)
    return names


def test_published_variants_are_told_from_their_keys() -> None:
    base = describe_ip_adapter({
        "image_proj.proj.weight": (4 * 768, 1024), "image_proj.proj.bias": (4 * 768,),
        "image_proj.norm.weight": (768,), "image_proj.norm.bias": (768,), **adapter_layers(16, 768),
    })  # fmt: skip
    assert (base.variant, base.image_width, base.tokens, base.layers, base.family) == (
        "base",
        1024,
        4,
        16,
        SD15,
    )
    assert not base.hidden_states
    plus = describe_ip_adapter({
        "image_proj.latents": (1, 16, 1280), "image_proj.proj_in.weight": (1280, 1280),
        "image_proj.proj_out.weight": (2048, 1280), **adapter_layers(70, 2048),
    })  # fmt: skip
    assert (plus.variant, plus.image_width, plus.tokens, plus.layers, plus.family) == (
        "plus",
        1280,
        16,
        70,
        SDXL,
    )
    assert plus.hidden_states and plus.describe_input() == "1280-wide hidden states"
    full = describe_ip_adapter({
        "image_proj.proj.0.weight": (1280, 1280), "image_proj.proj.2.weight": (768, 1280),
        "image_proj.proj.3.weight": (768,), **adapter_layers(16, 768),
    })  # fmt: skip
    assert (full.variant, full.image_width, full.tokens) == ("full", 1280, 257)


@pytest.mark.parametrize(
    "names",
    [
        {"image_proj.proj.0.weight": (768, 512), "image_proj.norm.weight": (768,), **adapter_layers(16, 768)},
        {"image_proj.perceiver_resampler.proj_in.weight": (1280, 1280), **adapter_layers(16, 768)},
    ],
)
def test_faceid_files_are_refused_by_name(names: dict[str, tuple[int, ...]]) -> None:
    with pytest.raises(ValueError, match="FaceID"):
        describe_ip_adapter(names)
    assert "FaceID" in (JUDGES["ipadapter"](names).reason or "")


def test_other_files_in_the_ipadapter_folder_are_marked() -> None:
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}
    assert "not an IP-Adapter file" in (JUDGES["ipadapter"](lora).reason or "")


def test_vit_h_config_is_read_off_the_shapes() -> None:
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.patch_embedding.weight": (1280, 3, 14, 14),
        "vision_model.embeddings.position_embedding.weight": (257, 1280),
        "vision_model.encoder.layers.0.mlp.fc1.weight": (5120, 1280),
        "visual_projection.weight": (1024, 1280),
    }
    for layer in range(32):
        shapes[f"vision_model.encoder.layers.{layer}.self_attn.q_proj.weight"] = (1280, 1280)
    config = config_from_shapes(shapes)
    assert config == {
        "hidden_size": 1280, "num_channels": 3, "patch_size": 14, "image_size": 224, "num_hidden_layers": 32,
        "intermediate_size": 5120, "num_attention_heads": 16, "projection_dim": 1024, "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }  # fmt: skip
    assert JUDGES["clip_vision"](shapes).reason is None
    shapes.pop("visual_projection.weight")
    assert "not a CLIP vision encoder" in (JUDGES["clip_vision"](shapes).reason or "")


def test_the_families_reference_kinds_are_those_with_style_blocks() -> None:
    """What the registry tells clients (the panel greys out the rest) is what the engine takes: "reference"
    always, "style" and "composition" where the family has InstantStyle's blocks."""
    from backend.engine.references import STYLE_BLOCKS
    from protocol.references import REFERENCE_KINDS
    from protocol.registry import MODEL_FAMILIES, family_reference_kinds

    for name, info in MODEL_FAMILIES.items():
        assert set(info.reference_kinds) == {"reference", *STYLE_BLOCKS.get(name, {})}
        assert set(info.reference_kinds) <= set(REFERENCE_KINDS)
    assert family_reference_kinds("no-such-family") is None
