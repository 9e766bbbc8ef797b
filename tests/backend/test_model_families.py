"""Model families told from file headers alone (backend/model_families.py through backend/model_check.py):
which family a checkpoint, LoRA or ControlNet is made for, whether a checkpoint inpaints, and which files
are of architectures the backend does not run, named in their mark. Real tensor names in real .safetensors
and torch.save files, with tensors cut small (tests/backend/fake_headers.py); no model is loaded."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch

from backend.model_check import Verdict, VerdictCache, judge
from backend.model_families import SD15, SDXL, UnservedFamily, adapter_family, checkpoint_family
from tests.backend.fake_headers import (
    controlnet,
    flux_checkpoint,
    kohya_lora,
    sd2_checkpoint,
    sd15_checkpoint,
    sdxl_checkpoint,
    sdxl_refiner,
    write_safetensors,
)


def judged(tmp_path: Path, kind: str, shapes: dict[str, Sequence[int]]) -> Verdict:
    return judge(kind, write_safetensors(tmp_path / kind / "model.safetensors", shapes))


@pytest.mark.parametrize(
    ("shapes", "expected"),
    [
        (sd15_checkpoint(), Verdict(None, "sd15", False)),
        (sd15_checkpoint(in_channels=9), Verdict(None, "sd15", True)),
        (sdxl_checkpoint(), Verdict(None, "sdxl", False)),
        (sdxl_checkpoint(in_channels=9), Verdict(None, "sdxl", True)),
    ],
)
def test_served_checkpoints_are_usable_with_their_family(
    tmp_path: Path, shapes: dict[str, Sequence[int]], expected: Verdict
) -> None:
    assert judged(tmp_path, "checkpoints", shapes) == expected


@pytest.mark.parametrize(
    ("shapes", "named"),
    [
        (sdxl_refiner(), "an SDXL refiner checkpoint"),
        (sd2_checkpoint(), "an SD 2.x checkpoint"),
        (flux_checkpoint(), "a Flux checkpoint"),
    ],
)
def test_checkpoints_of_unserved_families_are_marked_with_the_family(
    tmp_path: Path, shapes: dict[str, Sequence[int]], named: str
) -> None:
    verdict = judged(tmp_path, "checkpoints", shapes)
    assert verdict.reason is not None and verdict.reason.startswith(named), verdict
    assert "SD 1.5 and SDXL" in verdict.reason and verdict.family is None


def test_incomplete_and_odd_checkpoints_are_marked(tmp_path: Path) -> None:
    one_encoder = sdxl_checkpoint()
    del one_encoder["conditioner.embedders.1.model.token_embedding.weight"]
    verdict = judged(tmp_path, "checkpoints", one_encoder)
    assert verdict.family == "sdxl" and verdict.reason is not None and "text encoder" in verdict.reason
    eight = judged(tmp_path, "checkpoints", sdxl_checkpoint(in_channels=8))
    assert eight.reason is not None and "8 input channels" in eight.reason
    lora = judged(tmp_path, "checkpoints", kohya_lora(768))
    assert lora.reason is not None and "a LoRA, not a checkpoint" in lora.reason


@pytest.mark.parametrize(
    ("shapes", "family"),
    [
        (kohya_lora(768), "sd15"),
        (kohya_lora(2048), "sdxl"),
        (kohya_lora(None, second_text_encoder=True), "sdxl"),  # no cross-attention: its text encoders say
        (kohya_lora(None), None),  # convolutions only: nothing says
        (kohya_lora(32), None),  # a width no architecture has (the tests' tiny models): not judged
    ],
)
def test_lora_families(tmp_path: Path, shapes: dict[str, Sequence[int]], family: str | None) -> None:
    assert judged(tmp_path, "loras", shapes) == Verdict(None, family)


@pytest.mark.parametrize(("kind", "shapes"), [("loras", kohya_lora(1024)), ("controlnet", controlnet(1024))])
def test_adapters_for_unserved_families_are_marked(
    tmp_path: Path, kind: str, shapes: dict[str, Sequence[int]]
) -> None:
    verdict = judged(tmp_path, kind, shapes)
    assert verdict.reason is not None and verdict.reason.startswith("made for SD 2.x"), verdict


def test_controlnet_families(tmp_path: Path) -> None:
    assert judged(tmp_path, "controlnet", controlnet(768)) == Verdict(None, "sd15")
    assert judged(tmp_path, "controlnet", controlnet(2048)) == Verdict(None, "sdxl")


def test_the_family_table_reads_the_same_names_without_files() -> None:
    assert checkpoint_family(sd15_checkpoint()) is SD15
    assert checkpoint_family(sdxl_checkpoint()) is SDXL
    assert checkpoint_family(kohya_lora(768)) is None  # not a checkpoint at all
    with pytest.raises(UnservedFamily, match="SDXL refiner"):
        checkpoint_family(sdxl_refiner())
    assert adapter_family(controlnet(2048)) is SDXL
    with pytest.raises(UnservedFamily, match=r"SD 2\.x"):
        adapter_family(kohya_lora(1024))


@pytest.mark.parametrize(("in_channels", "inpaint"), [(4, False), (9, True)])
def test_a_ckpt_says_its_family_by_its_names_and_inpainting_by_its_unet_input(
    tmp_path: Path, in_channels: int, inpaint: bool
) -> None:
    """A .ckpt's pickle is read without unpickling: its names, and the size torch.save wrote for the UNet's
    first convolution (sd-v1-5-inpainting.ckpt is a .ckpt)."""
    path = tmp_path / "model.ckpt"
    state = {name: torch.zeros(shape) for name, shape in sdxl_checkpoint(in_channels).items()}
    torch.save({"state_dict": state, "global_step": 10}, path)
    assert judge("checkpoints", path) == Verdict(None, "sdxl", inpaint)
    parameters = {
        name: torch.nn.Parameter(torch.zeros(shape)) for name, shape in sd15_checkpoint(in_channels).items()
    }
    torch.save(parameters, path)  # Parameters, not tensors, and no `state_dict` around them
    assert judge("checkpoints", path) == Verdict(None, "sd15", inpaint)


def diffusers_folder(root: Path, unet: Mapping[str, object], parts: Sequence[str]) -> Path:
    for part in parts:
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text(json.dumps(unet if part == "unet" else {}))
        write_safetensors(root / part / "diffusion_pytorch_model.safetensors", {"w": (1,)})
    (root / "model_index.json").write_text("{}")
    return root


SD_PARTS = ("unet", "vae", "text_encoder")


def test_diffusers_folders_say_their_family_by_their_parts(tmp_path: Path) -> None:
    sd15 = diffusers_folder(tmp_path / "sd15", {"in_channels": 9, "cross_attention_dim": 768}, SD_PARTS)
    assert judge("checkpoints", sd15) == Verdict(None, "sd15", True)
    xl_unet = {"in_channels": 4, "cross_attention_dim": 2048}
    xl = diffusers_folder(tmp_path / "xl", xl_unet, (*SD_PARTS, "text_encoder_2"))
    assert judge("checkpoints", xl) == Verdict(None, "sdxl", False)
    sd2 = diffusers_folder(tmp_path / "sd2", {"in_channels": 4, "cross_attention_dim": 1024}, SD_PARTS)
    reason = judge("checkpoints", sd2).reason
    assert reason is not None and "SD 2.x" in reason
    refiner = diffusers_folder(tmp_path / "refiner", xl_unet, ("unet", "vae", "text_encoder_2"))
    reason = judge("checkpoints", refiner).reason
    assert reason is not None and reason.startswith("an SDXL refiner"), reason
    half_xl = diffusers_folder(tmp_path / "half-xl", xl_unet, SD_PARTS)
    (half_xl / "text_encoder_2").mkdir()  # its download has not got there yet
    reason = judge("checkpoints", half_xl).reason
    assert reason is not None and "text_encoder_2/" in reason


def test_verdicts_are_read_again_when_a_file_or_folder_changes(tmp_path: Path) -> None:
    cache = VerdictCache()
    path = write_safetensors(tmp_path / "x.safetensors", sdxl_refiner())
    assert cache.verdict("checkpoints", path).reason is not None
    write_safetensors(path, sdxl_checkpoint())  # another size: another version
    assert cache.verdict("checkpoints", path) == Verdict(None, "sdxl", False)
    folder = diffusers_folder(tmp_path / "f", {"in_channels": 4, "cross_attention_dim": 768}, ("unet", "vae"))
    assert cache.verdict("checkpoints", folder).reason is not None  # no text encoder yet
    diffusers_folder(folder, {}, ("text_encoder",))
    assert cache.verdict("checkpoints", folder) == Verdict(None, "sd15", False)
