"""Loading checkpoints, VAEs, TAESD and ControlNets from real file formats (tiny models), offline."""

# diffusers' and torch's annotations reject their own documented calls here (pipelines with
# safety_checker=None, from_config results, config and submodule attributes)
# pyright: reportArgumentType=false, reportAttributeAccessIssue=false, reportCallIssue=false

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.loading.checkpoint import PipelineComponents, load_checkpoint
from backend.loading.configs import SD15_CONFIG_DIR, SD15_INPAINT_CONFIG_DIR, sd_config_dir
from backend.loading.controlnet import load_controlnet
from backend.loading.files import read_tensors
from backend.loading.ldm_names import UNetShape, unet_ldm_names, unet_name_to_ldm
from backend.loading.tokenizer import load_tokenizer
from backend.loading.vae import load_taesd, load_vae
from backend.model_errors import ModelError
from tests.fixtures import ldm_writer
from tests.fixtures.tiny_models import TinyModels, build_controlnet, build_taesd, build_unet, build_vae

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")


def load(tiny: TinyModels, name: str, dtype: torch.dtype = torch.float32) -> PipelineComponents:
    return load_checkpoint(tiny.path("checkpoints", name), CPU, dtype, tiny.config_dir, name=name)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


# --- tokenizer and shipped configs --------------------------------------------------------------------------


def test_tokenizer_matches_clip() -> None:
    tokenizer = load_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    padded = tokenizer("a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 and padded[-1] == 49407
    assert load_tokenizer() is tokenizer


def test_shipped_configs_are_sd15() -> None:
    """The real SD1.5 parameter counts prove the hand-written configs (meta device: no memory used)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from backend.loading.configs import CONTROLNET_CONFIG_DIR

    def count(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet")
        )
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG_DIR, subfolder="vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
        controlnet = ControlNetModel.from_config(ControlNetModel.load_config(CONTROLNET_CONFIG_DIR))
    assert count(unet) == 859_520_964
    assert count(vae) == 83_653_863
    assert count(text) == 123_060_480
    assert list(controlnet.config.conditioning_embedding_out_channels) == [16, 32, 96, 256]
    assert vae.config.scaling_factor == 0.18215

    inpaint = json.loads((SD15_INPAINT_CONFIG_DIR / "unet/config.json").read_text())
    plain = json.loads((SD15_CONFIG_DIR / "unet/config.json").read_text())
    assert inpaint == {**plain, "in_channels": 9}
    for part in ("vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json"):
        assert (SD15_INPAINT_CONFIG_DIR / part).read_text() == (SD15_CONFIG_DIR / part).read_text()
    assert sd_config_dir(None, inpaint=True) == SD15_INPAINT_CONFIG_DIR
    assert sd_config_dir(None, inpaint=False) == SD15_CONFIG_DIR


# --- original-layout names ----------------------------------------------------------------------------------


def test_ldm_names_of_known_sd15_layers() -> None:
    shape = UNetShape.from_config(json.loads((SD15_CONFIG_DIR / "unet/config.json").read_text()))
    expected = {
        "conv_in.weight": "input_blocks.0.0.weight",
        "time_embedding.linear_2": "time_embed.2",
        "down_blocks.0.resnets.0.conv1": "input_blocks.1.0.in_layers.2",
        "down_blocks.0.attentions.1.proj_in": "input_blocks.2.1.proj_in",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "down_blocks.1.resnets.0.conv_shortcut": "input_blocks.4.0.skip_connection",
        "down_blocks.2.downsamplers.0.conv.bias": "input_blocks.9.0.op.bias",
        "down_blocks.3.resnets.1.time_emb_proj": "input_blocks.11.0.emb_layers.1",
        "mid_block.resnets.1.norm2": "middle_block.2.out_layers.0",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_k": (
            "middle_block.1.transformer_blocks.0.attn2.to_k"
        ),
        "up_blocks.0.resnets.2.conv2": "output_blocks.2.0.out_layers.3",
        "up_blocks.0.upsamplers.0.conv": "output_blocks.2.1.conv",
        "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
        "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2": (
            "output_blocks.11.1.transformer_blocks.0.ff.net.2"
        ),
        "conv_norm_out": "out.0",
        "conv_out.bias": "out.2.bias",
    }
    for name, ldm in expected.items():
        assert unet_name_to_ldm(name, shape) == ldm, name
    assert unet_name_to_ldm("down_blocks.0", shape) is None


def test_ldm_names_agree_with_diffusers_converter_at_full_sd15_size() -> None:
    """Every SD1.5 UNet key, renamed to LDM and converted back by diffusers, returns to itself."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    names = list(unet.state_dict())
    ldm = unet_ldm_names(names, unet.config)
    assert len(ldm) == len(names) and len(set(ldm.values())) == len(names)
    tagged = {ldm_writer.UNET_PREFIX + ldm[name]: torch.tensor(float(i)) for i, name in enumerate(names)}
    back = convert_ldm_unet_checkpoint(tagged, unet.config)
    assert {name: int(back[name]) for name in names} == {name: i for i, name in enumerate(names)}


# --- checkpoints --------------------------------------------------------------------------------------------


def test_single_file_round_trip_through_diffusers_is_bit_exact(tiny_models: TinyModels) -> None:
    """Our LDM writer, read by diffusers' own single-file pipeline loader, gives the diffusers folder."""
    from diffusers import StableDiffusionPipeline

    single = StableDiffusionPipeline.from_single_file(
        str(tiny_models.path("checkpoints", tiny_models.checkpoint)),
        config=str(tiny_models.config_dir),
        local_files_only=True,
        safety_checker=None,
    )
    folder = StableDiffusionPipeline.from_pretrained(
        tiny_models.path("checkpoints", tiny_models.diffusers_checkpoint),
        local_files_only=True,
        safety_checker=None,
    )
    for part in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(single, part), getattr(folder, part))


def test_single_file_ckpt_and_folder_load_the_same(tiny_models: TinyModels) -> None:
    single = load(tiny_models, tiny_models.checkpoint)
    folder = load(tiny_models, tiny_models.diffusers_checkpoint)
    ckpt = load(tiny_models, tiny_models.checkpoint_ckpt)
    for other in (folder, ckpt):
        for part in ("unet", "vae", "text_encoder"):
            assert_same_weights(getattr(single, part), getattr(other, part))
    assert_same_weights(single.unet, build_unet(seed=1))
    assert single.name == tiny_models.checkpoint
    assert not single.is_inpaint
    assert single.tokenizer is load_tokenizer()
    assert single.scheduler_config["num_train_timesteps"] == 1000
    assert not single.unet.training
    assert not any(p.requires_grad for p in single.text_encoder.parameters())


def test_inpaint_checkpoint_is_detected(tiny_models: TinyModels) -> None:
    inpaint = load(tiny_models, tiny_models.inpaint_checkpoint, dtype=torch.float16)
    assert inpaint.is_inpaint
    assert inpaint.unet.config.in_channels == 9
    assert inpaint.unet.conv_in.weight.shape[1] == 9
    assert inpaint.unet.dtype == torch.float16 and inpaint.vae.dtype == torch.float16
    assert inpaint.text_encoder.dtype == torch.float16
    assert_same_weights(inpaint.unet, build_unet(seed=4, in_channels=9).half())


def test_shipped_sd15_configs_refuse_a_non_sd15_checkpoint(tiny_models: TinyModels) -> None:
    """Without a config folder the SD1.5 configs apply: a file of another size is refused with a reason."""
    with pytest.raises(ModelError, match=r"not an SD1\.5 checkpoint"):
        load_checkpoint(tiny_models.path("checkpoints", tiny_models.checkpoint), CPU, torch.float32)


def write_variant(
    tiny: TinyModels, tmp_path: Path, change: Callable[[dict[str, torch.Tensor]], object]
) -> Path:
    tensors = load_file(str(tiny.path("checkpoints", tiny.checkpoint)))
    change(tensors)
    path = tmp_path / "variant.safetensors"
    save_file(tensors, str(path))
    return path


def test_missing_unet_weight_is_a_model_error(tiny_models: TinyModels, tmp_path: Path) -> None:
    path = write_variant(tiny_models, tmp_path, lambda t: t.pop("model.diffusion_model.out.2.weight"))
    with pytest.raises(ModelError, match="missing weights"):
        load_checkpoint(path, CPU, torch.float32, tiny_models.config_dir)


def test_wrong_shape_is_a_model_error(tiny_models: TinyModels, tmp_path: Path) -> None:
    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    path = write_variant(tiny_models, tmp_path, lambda t: t.update({key: torch.zeros(3, 3, 1, 1)}))
    with pytest.raises(ModelError, match="don't fit"):
        load_checkpoint(path, CPU, torch.float32, tiny_models.config_dir)


def test_missing_text_encoder_weight_is_a_model_error(tiny_models: TinyModels, tmp_path: Path) -> None:
    key = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
    path = write_variant(tiny_models, tmp_path, lambda t: t.pop(key))
    with pytest.raises(ModelError, match="text encoder"):
        load_checkpoint(path, CPU, torch.float32, tiny_models.config_dir)


def test_sdxl_and_sd2_files_are_refused(tmp_path: Path) -> None:
    sdxl = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.0.transformer.x": torch.zeros(1)}, str(sdxl))
    with pytest.raises(ModelError, match="SDXL"):
        load_checkpoint(sdxl, CPU, torch.float32)
    sd2 = tmp_path / "sd2.safetensors"
    save_file({"cond_stage_model.model.x": torch.zeros(1)}, str(sd2))
    with pytest.raises(ModelError, match="SD2"):
        load_checkpoint(sd2, CPU, torch.float32)


def test_files_in_the_wrong_folder_say_where_they_belong(tiny_models: TinyModels) -> None:
    with pytest.raises(ModelError, match="is a LoRA"):
        load_checkpoint(tiny_models.path("loras", tiny_models.lcm_lora), CPU, torch.float32)
    with pytest.raises(ModelError, match="is a VAE"):
        load_checkpoint(tiny_models.path("vae", tiny_models.vae), CPU, torch.float32)
    with pytest.raises(ModelError, match="is a ControlNet"):
        load_checkpoint(tiny_models.path("controlnet", tiny_models.controlnet_scribble), CPU, torch.float32)


@pytest.mark.parametrize("content", [b"", b"garbage that is not safetensors", b"\xff" * 8 + b"{}"])
def test_corrupt_safetensors_is_a_model_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="download it again"):
        load_checkpoint(path, CPU, torch.float32)


def test_truncated_download_is_a_model_error(tiny_models: TinyModels, tmp_path: Path) -> None:
    data = tiny_models.path("checkpoints", tiny_models.checkpoint).read_bytes()
    path = tmp_path / "partial.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="download it again"):
        load_checkpoint(path, CPU, torch.float32, tiny_models.config_dir)


class NotATensor:
    """Pickled objects of arbitrary classes are what weights_only loading refuses."""


def test_ckpt_with_python_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "callback": NotATensor()}, path)
    with pytest.raises(ModelError, match="not loaded for safety"):
        load_checkpoint(path, CPU, torch.float32)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a readable"):
        load_checkpoint(broken, CPU, torch.float32)


def test_broken_diffusers_folder_is_a_model_error(tiny_models: TinyModels, tmp_path: Path) -> None:
    folder = tmp_path / "half-copied"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    with pytest.raises(ModelError, match="Diffusers folder"):
        load_checkpoint(folder, CPU, torch.float32, tiny_models.config_dir)


# --- VAE, TAESD, ControlNet ---------------------------------------------------------------------------------


def test_vae_override_in_both_namings(tiny_models: TinyModels) -> None:
    ldm = load_vae(tiny_models.path("vae", tiny_models.vae), CPU, torch.float32, tiny_models.config_dir)
    named = load_vae(
        tiny_models.path("vae", tiny_models.vae_diffusers), CPU, torch.float32, tiny_models.config_dir
    )
    assert_same_weights(ldm, build_vae(seed=5))
    assert_same_weights(named, ldm)
    base = load(tiny_models, tiny_models.checkpoint).vae
    assert not torch.equal(base.decoder.conv_out.weight, ldm.decoder.conv_out.weight)
    assert ldm.config.scaling_factor == 0.18215


def test_vae_from_a_whole_checkpoint_file(tiny_models: TinyModels) -> None:
    """Some people put a full checkpoint in vae/ to use its VAE: the `first_stage_model.` keys are taken."""
    vae = load_vae(
        tiny_models.path("checkpoints", tiny_models.checkpoint), CPU, torch.float32, tiny_models.config_dir
    )
    assert_same_weights(vae, build_vae(seed=2))


def test_non_vae_file_is_refused(tiny_models: TinyModels) -> None:
    with pytest.raises(ModelError, match="not a VAE"):
        load_vae(tiny_models.path("loras", tiny_models.lcm_lora), CPU, torch.float32, tiny_models.config_dir)


def test_taesd_files_load_strictly(tiny_models: TinyModels) -> None:
    encoder = tiny_models.path("taesd", tiny_models.taesd_encoder)
    decoder = tiny_models.path("taesd", tiny_models.taesd_decoder)
    assert "0.weight" in torch.load(encoder, weights_only=True)
    assert "1.weight" in torch.load(decoder, weights_only=True)  # index 0 is TAESD's parameter-free clamp
    taesd = load_taesd(encoder, decoder, CPU, torch.float32, tiny_models.config_dir)
    assert_same_weights(taesd, build_taesd(seed=6))
    # the published TAESD files are full size: without a config the default AutoencoderTiny must not fit these
    with pytest.raises(ModelError, match="TAESD"):
        load_taesd(encoder, decoder, CPU, torch.float32)


def test_controlnet_with_and_without_prefix(tiny_models: TinyModels) -> None:
    scribble_path = tiny_models.path("controlnet", tiny_models.controlnet_scribble)
    openpose_path = tiny_models.path("controlnet", tiny_models.controlnet_openpose)
    assert all(k.startswith("control_model.") for k in load_file(str(scribble_path)))
    assert "input_hint_block.0.weight" in load_file(str(openpose_path))
    scribble = load_controlnet(scribble_path, CPU, torch.float32, tiny_models.config_dir)
    openpose = load_controlnet(openpose_path, CPU, torch.float32, tiny_models.config_dir)
    unet = build_unet(seed=1)
    assert_same_weights(scribble, build_controlnet(unet, seed=7))
    assert_same_weights(openpose, build_controlnet(unet, seed=8))
    assert all(block.weight.abs().sum() > 0 for block in scribble.controlnet_down_blocks)
    assert scribble.controlnet_mid_block.weight.abs().sum() > 0


def test_non_controlnet_file_is_refused(tiny_models: TinyModels) -> None:
    with pytest.raises(ModelError, match=r"not an SD1\.5 ControlNet"):
        load_controlnet(
            tiny_models.path("loras", tiny_models.style_lora), CPU, torch.float32, tiny_models.config_dir
        )


@pytest.mark.parametrize("content", [b"truncated download", b"hello world this is text"])
@pytest.mark.parametrize("suffix", [".ckpt", ".pth"])
def test_a_damaged_pickle_file_is_a_model_error(tmp_path: Path, content: bytes, suffix: str) -> None:
    """torch.load raises IndexError/KeyError on some garbage: those must become the painter-readable model
    error, not an internal one."""
    path = tmp_path / f"damaged{suffix}"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="not a readable PyTorch file"):
        read_tensors(path, "Checkpoint")
