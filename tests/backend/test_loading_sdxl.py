"""Loading SDXL checkpoints (original single files and diffusers folders) from tiny models, offline."""

# diffusers' and torch's annotations reject their own documented calls here (from_config results, config
# and submodule attributes)
# pyright: reportArgumentType=false, reportAttributeAccessIssue=false, reportCallIssue=false

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.loading.checkpoint import PipelineComponents, load_checkpoint
from backend.loading.configs import (
    CONTROLNET_SDXL_CONFIG_DIR,
    SDXL_CONFIG_DIR,
    SDXL_INPAINT_CONFIG_DIR,
    controlnet_config_dir,
    family_config_dir,
)
from backend.loading.ldm_names import unet_ldm_names, unet_name_to_ldm
from backend.loading.text_encoders import open_clip_to_transformers
from backend.loading.tokenizer import load_tokenizer, load_tokenizer_2
from backend.model_errors import ModelError
from backend.model_families import SD15, SDXL, UNSERVED_CHECKPOINT_MARKERS
from tests.fixtures import ldm_writer, sdxl_writer
from tests.fixtures.tiny_models import TinyModels, build_tiny_models
from tests.fixtures.tiny_sdxl import SdxlModels, TinySdxl, build_models, build_tiny_sdxl

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sdxl_weights() -> SdxlModels:
    return build_models()


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, sdxl_weights: SdxlModels) -> tuple[TinyModels, TinySdxl]:
    """SD1.5 and SDXL tiny models in one models folder, as a painter's folder holds both."""
    root = tmp_path_factory.mktemp("tiny-both") / "models"
    return build_tiny_models(root), build_tiny_sdxl(root, sdxl_weights)


@pytest.fixture(scope="module")
def tiny_sdxl(both: tuple[TinyModels, TinySdxl]) -> TinySdxl:
    return both[1]


def load(tiny: TinySdxl, name: str, dtype: torch.dtype = torch.float32) -> PipelineComponents:
    return load_checkpoint(tiny.path("checkpoints", name), CPU, dtype, tiny.config_dir, name=name)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


def assert_parts_equal(parts: object, models: SdxlModels, dtype: torch.dtype = torch.float32) -> None:
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert_same_weights(getattr(parts, part), getattr(models, part).to(dtype))


# --- shipped configs and tokenizers -------------------------------------------------------------------------


def test_shipped_configs_are_sdxl_base() -> None:
    """The real SDXL base 1.0 parameter counts prove the hand-written configs (meta device: no memory)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def count(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(SDXL_CONFIG_DIR, subfolder="unet")
        )
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SDXL_CONFIG_DIR, subfolder="vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder"))
        text_2 = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder_2")
        )
        controlnet = ControlNetModel.from_config(ControlNetModel.load_config(CONTROLNET_SDXL_CONFIG_DIR))
    assert count(unet) == 2_567_463_684
    assert count(vae) == 83_653_863
    assert count(text) == 123_060_480
    assert count(text_2) == 694_659_840
    assert count(controlnet) == 1_251_014_160
    assert vae.config.scaling_factor == 0.13025 and vae.config.force_upcast
    assert unet.config.cross_attention_dim == SDXL.cross_attention_width == 768 + 1280
    assert text_2.config.projection_dim + 6 * unet.config.addition_time_embed_dim == 2816
    scheduler = json.loads((SDXL_CONFIG_DIR / "scheduler/scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "EulerDiscreteScheduler" and scheduler["prediction_type"] == "epsilon"

    inpaint = json.loads((SDXL_INPAINT_CONFIG_DIR / "unet/config.json").read_text())
    plain = json.loads((SDXL_CONFIG_DIR / "unet/config.json").read_text())
    assert inpaint == {**plain, "in_channels": 9}
    for part in ("vae", "text_encoder", "text_encoder_2"):
        same = (SDXL_INPAINT_CONFIG_DIR / part / "config.json").read_text()
        assert same == (SDXL_CONFIG_DIR / part / "config.json").read_text()
    assert family_config_dir(SDXL, None, inpaint=True) == SDXL_INPAINT_CONFIG_DIR
    assert family_config_dir(SDXL, None, inpaint=False) == SDXL_CONFIG_DIR
    assert controlnet_config_dir(None, SDXL) == CONTROLNET_SDXL_CONFIG_DIR


def test_second_tokenizer_pads_with_exclamation_marks() -> None:
    """SDXL's tokenizer_2: the same vocabulary as CLIP's, padded with "!" (id 0) as open_clip trained."""
    first, second = load_tokenizer(), load_tokenizer_2()
    assert second is load_tokenizer_2() and second is not first
    assert second("a photo of a cat").input_ids == first("a photo of a cat").input_ids
    padded = second("a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert padded[:4] == [49406, 320, 2368, 49407] and padded[4:] == [0] * 73
    assert first("a cat", padding="max_length", max_length=77).input_ids[4:] == [49407] * 73
    assert second.pad_token == "!" and first.pad_token == "<|endoftext|>"


# --- original-layout names ----------------------------------------------------------------------------------


def test_ldm_names_agree_with_diffusers_converter_at_full_sdxl_size() -> None:
    """Every SDXL UNet key (label_emb included), renamed to LDM and converted back by diffusers, returns."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = UNet2DConditionModel.load_config(SDXL_CONFIG_DIR, subfolder="unet")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    names = list(unet.state_dict())
    ldm = unet_ldm_names(names, unet.config)
    assert len(ldm) == len(names) and len(set(ldm.values())) == len(names)
    assert ldm["add_embedding.linear_2.weight"] == "label_emb.0.2.weight"
    tagged = {ldm_writer.UNET_PREFIX + ldm[name]: torch.tensor(float(i)) for i, name in enumerate(names)}
    back = convert_ldm_unet_checkpoint(tagged, unet.config)
    assert {name: int(back[name]) for name in names} == {name: i for i, name in enumerate(names)}


def test_known_sdxl_ldm_names() -> None:
    from backend.loading.ldm_names import UNetShape

    shape = UNetShape.from_config(json.loads((SDXL_CONFIG_DIR / "unet/config.json").read_text()))
    expected = {
        "add_embedding.linear_1.bias": "label_emb.0.0.bias",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k": (
            "input_blocks.8.1.transformer_blocks.9.attn2.to_k"
        ),
        "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
        "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
        "up_blocks.2.resnets.2.conv2": "output_blocks.8.0.out_layers.3",
    }
    for name, want in expected.items():
        assert unet_name_to_ldm(name, shape) == want, name


def test_open_clip_layout_round_trip(sdxl_weights: SdxlModels) -> None:
    """The writer's open_clip layout (q/k/v stacked, projection transposed) converts back bit for bit."""
    state = sdxl_weights.text_encoder_2.state_dict()
    layout = sdxl_writer.open_clip_from_transformers(state)
    hidden = sdxl_weights.text_encoder_2.config.hidden_size
    assert layout["transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * hidden, hidden)
    assert torch.equal(layout["text_projection"], state["text_projection.weight"].T)
    back = open_clip_to_transformers(layout, "x.safetensors")
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


# --- checkpoints --------------------------------------------------------------------------------------------


def test_single_file_round_trip_through_diffusers_is_bit_exact(
    tiny_sdxl: TinySdxl, sdxl_weights: SdxlModels
) -> None:
    """Our writer's file, read by diffusers' own SDXL single-file loader, gives every weight as built."""
    from diffusers import StableDiffusionXLPipeline

    path = tiny_sdxl.path("checkpoints", tiny_sdxl.checkpoint)
    tensors = load_file(str(path))
    assert "model.diffusion_model.label_emb.0.2.weight" in tensors
    assert "conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight" in tensors
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in tensors
    pipe = StableDiffusionXLPipeline.from_single_file(
        str(path), config=str(tiny_sdxl.config_dir), local_files_only=True
    )
    assert_parts_equal(pipe, sdxl_weights)
    folder = StableDiffusionXLPipeline.from_pretrained(
        tiny_sdxl.path("checkpoints", tiny_sdxl.diffusers_checkpoint), local_files_only=True
    )
    assert_parts_equal(folder, sdxl_weights)


def test_single_file_and_folder_load_as_built(tiny_sdxl: TinySdxl, sdxl_weights: SdxlModels) -> None:
    single = load(tiny_sdxl, tiny_sdxl.checkpoint)
    folder = load(tiny_sdxl, tiny_sdxl.diffusers_checkpoint)
    for parts in (single, folder):
        assert_parts_equal(parts, sdxl_weights)
        assert parts.family is SDXL and not parts.is_inpaint
        assert parts.tokenizer is load_tokenizer() and parts.tokenizer_2 is load_tokenizer_2()
        assert parts.scheduler_config["_class_name"] == "EulerDiscreteScheduler"
        assert parts.scheduler_config["prediction_type"] == "epsilon"
        assert parts.vae.config.scaling_factor == 0.13025
        assert parts.unet.config.addition_embed_type == "text_time"
        assert parts.text_encoder_2 is not None and not parts.text_encoder_2.training
        assert not any(p.requires_grad for p in parts.text_encoder_2.parameters())
    assert single.name == tiny_sdxl.checkpoint


def test_half_precision_reaches_every_part(tiny_sdxl: TinySdxl, sdxl_weights: SdxlModels) -> None:
    parts = load(tiny_sdxl, tiny_sdxl.checkpoint, dtype=torch.float16)
    assert parts.text_encoder_2 is not None
    for module in (parts.unet, parts.vae, parts.text_encoder, parts.text_encoder_2):
        assert {p.dtype for p in module.parameters()} == {torch.float16}
    assert_parts_equal(parts, sdxl_weights, torch.float16)


def test_inpaint_checkpoint_is_detected(tiny_sdxl: TinySdxl, sdxl_weights: SdxlModels) -> None:
    inpaint = load(tiny_sdxl, tiny_sdxl.inpaint_checkpoint)
    assert inpaint.is_inpaint and inpaint.family is SDXL
    assert inpaint.unet.conv_in.weight.shape[1] == 9
    assert_same_weights(inpaint.unet, sdxl_weights.inpaint_unet)


def test_one_config_folder_serves_both_families(both: tuple[TinyModels, TinySdxl]) -> None:
    """The server gets one --model-config folder: SD1.5's tiny configs with SDXL's in `sdxl/` beside them."""
    sd15, sdxl = both
    assert sdxl.shared_config_dir == sd15.config_dir
    assert family_config_dir(SDXL, sd15.config_dir, inpaint=False) == sdxl.config_dir
    assert family_config_dir(SD15, sd15.config_dir, inpaint=False) == sd15.config_dir
    for tiny, name, family in (
        (sd15, sd15.checkpoint, SD15),
        (sd15, sd15.diffusers_checkpoint, SD15),
        (sdxl, sdxl.checkpoint, SDXL),
        (sdxl, sdxl.diffusers_checkpoint, SDXL),
    ):
        parts = load_checkpoint(tiny.path("checkpoints", name), CPU, torch.float32, sd15.config_dir)
        assert parts.family is family, name
        assert (parts.text_encoder_2 is None) == (family is SD15)
        assert (parts.tokenizer_2 is None) == (family is SD15)


def test_shipped_sdxl_configs_refuse_a_file_of_another_size(tiny_sdxl: TinySdxl) -> None:
    with pytest.raises(ModelError, match=r"not an SDXL checkpoint"):
        load_checkpoint(tiny_sdxl.path("checkpoints", tiny_sdxl.checkpoint), CPU, torch.float32)


def write_variant(
    tiny: TinySdxl, tmp_path: Path, change: Callable[[dict[str, torch.Tensor]], object]
) -> Path:
    tensors = load_file(str(tiny.path("checkpoints", tiny.checkpoint)))
    change(tensors)
    path = tmp_path / "variant.safetensors"
    save_file(tensors, str(path))
    return path


def test_v_prediction_markers_reach_the_scheduler_config(tiny_sdxl: TinySdxl, tmp_path: Path) -> None:
    markers = {"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}
    path = write_variant(tiny_sdxl, tmp_path, lambda t: t.update(markers))
    parts = load_checkpoint(path, CPU, torch.float32, tiny_sdxl.config_dir)
    assert parts.scheduler_config["prediction_type"] == "v_prediction"
    assert parts.scheduler_config["rescale_betas_zero_snr"] is True
    only_v = write_variant(tiny_sdxl, tmp_path, lambda t: t.update({"v_pred": torch.tensor([])}))
    config = load_checkpoint(only_v, CPU, torch.float32, tiny_sdxl.config_dir).scheduler_config
    assert config["prediction_type"] == "v_prediction" and "rescale_betas_zero_snr" not in config


OPEN_CLIP = sdxl_writer.OPEN_CLIP_PREFIX
CLIP_L = sdxl_writer.CLIP_L_PREFIX


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop(OPEN_CLIP + "ln_final.weight"), "second text encoder weights missing"),
        (lambda t: t.pop(OPEN_CLIP + "transformer.resblocks.1.attn.in_proj_bias"), "weights missing"),
        (lambda t: t.pop(OPEN_CLIP + "text_projection"), r"missing \(text_projection\.weight\)"),
        (
            lambda t: t.update({OPEN_CLIP + "text_projection": torch.zeros(64, 32)}),
            "second text encoder doesn't fit SDXL's OpenCLIP bigG",
        ),
        (
            lambda t: t.update(
                {OPEN_CLIP + "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(193, 64)}
            ),
            "don't split into query, key and value",
        ),
        (lambda t: t.pop(CLIP_L + "text_model.final_layer_norm.bias"), "text encoder weights missing"),
        (lambda t: t.pop("model.diffusion_model.label_emb.0.2.weight"), "missing weights"),
        (
            lambda t: t.update({"model.diffusion_model.label_emb.0.0.weight": torch.zeros(128, 7)}),
            "don't fit the SDXL architecture",
        ),
        (lambda t: t.pop("model.diffusion_model.input_blocks.0.0.weight"), "no UNet weights"),
    ],
)
def test_broken_sdxl_files_fail_loudly_naming_the_file(
    tiny_sdxl: TinySdxl, tmp_path: Path, change: Callable[[dict[str, torch.Tensor]], object], message: str
) -> None:
    path = write_variant(tiny_sdxl, tmp_path, change)
    with pytest.raises(ModelError, match=message) as caught:
        load_checkpoint(path, CPU, torch.float32, tiny_sdxl.config_dir)
    assert path.name in caught.value.message


@pytest.mark.parametrize("marker", list(UNSERVED_CHECKPOINT_MARKERS))
def test_unserved_families_are_named(tmp_path: Path, marker: str) -> None:
    """SD2, the SDXL refiner, Flux, SD3: refused with the architecture named, even with a UNet-like key."""
    path = tmp_path / "other.safetensors"
    save_file(
        {marker: torch.zeros(2, 2), "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)},
        str(path),
    )
    label = re.escape(UNSERVED_CHECKPOINT_MARKERS[marker])
    with pytest.raises(
        ModelError, match=f"{label} checkpoint; only SD 1.5 and SDXL checkpoints are supported"
    ):
        load_checkpoint(path, CPU, torch.float32)


def test_sdxl_file_without_its_second_encoder_is_refused(tiny_sdxl: TinySdxl, tmp_path: Path) -> None:
    def drop_open_clip(tensors: dict[str, torch.Tensor]) -> None:
        for key in [k for k in tensors if k.startswith(OPEN_CLIP)]:
            del tensors[key]

    path = write_variant(tiny_sdxl, tmp_path, drop_open_clip)
    with pytest.raises(ModelError, match="incomplete SDXL checkpoint"):
        load_checkpoint(path, CPU, torch.float32, tiny_sdxl.config_dir)


def test_diffusers_folder_of_mixed_families_is_refused(tiny_sdxl: TinySdxl, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_sdxl.path("checkpoints", tiny_sdxl.diffusers_checkpoint), folder)
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(ModelError, match=r"mixes SDXL and SD1\.5 parts"):
        load_checkpoint(folder, CPU, torch.float32, tiny_sdxl.config_dir)
    refiner = tmp_path / "refiner"
    shutil.copytree(tiny_sdxl.path("checkpoints", tiny_sdxl.diffusers_checkpoint), refiner)
    shutil.rmtree(refiner / "text_encoder")
    with pytest.raises(ModelError, match="SDXL refiner"):
        load_checkpoint(refiner, CPU, torch.float32, tiny_sdxl.config_dir)
