"""Model loading that survives files changing under it and bad switches (in process, on the tiny models)."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, load_file, save, save_file

from backend.engine.model_choice import LoraSpec
from backend.loading.model_cache import ModelCache
from backend.loading.owned_safetensors import SafetensorsReadError, read_safetensors
from backend.loading.stamps import file_stamp
from backend.model_files import ModelError, ModelStore
from tests.fixtures.tiny_models import TinyModels

CPU = torch.device("cpu")


@pytest.fixture
def own_models(tiny_models: TinyModels, tmp_path: Path) -> TinyModels:
    root = tmp_path / "models"
    shutil.copytree(tiny_models.root, root)
    return TinyModels(root=root, config_dir=tiny_models.config_dir)


def manager_for(models: TinyModels) -> ModelCache:
    return ModelCache(ModelStore(models.root), CPU, torch.float32, config_dir=models.config_dir)


# --- the reader -------------------------------------------------------------------------------------------


def test_owned_reader_matches_the_safetensors_library_for_every_dtype(tmp_path: Path) -> None:
    tensors = {
        "f32": torch.randn(3, 5),
        "f16": torch.randn(7).half(),
        "bf16": torch.randn(2, 2).bfloat16(),
        "i64": torch.arange(5),
        "u8": torch.arange(9, dtype=torch.uint8).reshape(3, 3),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "f8": torch.randn(4).to(torch.float8_e4m3fn),
    }
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    expected = load_file(str(path))
    got = read_safetensors(path)
    assert got.keys() == expected.keys()
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.dtype and got[key].shape == tensor.shape, key
        assert torch.equal(got[key].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), key


def test_owned_reader_keeps_nothing_of_the_file(tmp_path: Path) -> None:
    """After the read the file can be truncated to nothing: the tensors still hold their values."""
    path = tmp_path / "weights.safetensors"
    original = torch.randn(256, 256)
    save_file({"w": original}, str(path))
    tensors = read_safetensors(path)
    with open(path, "r+b") as f:
        f.truncate(0)
    assert torch.equal(tensors["w"], original)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:6],  # inside the header length
        lambda data: data[:40],  # inside the header
        lambda data: data[: len(data) - 100],  # inside the last tensor
        lambda data: struct.pack("<Q", 2**40) + data[8:],  # a header length beyond the file
        lambda data: struct.pack("<Q", 4) + b"[1] " + data[12:],  # a header that is no object
        lambda data: data.replace(b'"F32"', b'"Q99"'),  # an unknown dtype
    ],
)
def test_owned_reader_refuses_damaged_files(tmp_path: Path, damage: object) -> None:
    data = save({"a": torch.randn(64), "b": torch.randn(64)})
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(damage(data))  # type: ignore[operator]
    with pytest.raises(SafetensorsReadError):
        read_safetensors(path)


def test_file_stamp_sees_rewrites_in_place_and_replacements(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"x" * 100)
    first = file_stamp(path)
    assert file_stamp(path) == first
    info = os.stat(path)
    with open(path, "r+b") as f:  # same size, and the old mtime put back (`rsync -t --inplace`)
        f.write(b"y")
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert file_stamp(path) != first
    assert file_stamp(tmp_path / "missing") is None


# --- the manager ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_failed_checkpoint_switch_keeps_the_working_model(own_models: TinyModels) -> None:
    broken = own_models.path("checkpoints", "broken.safetensors")
    data = own_models.path("checkpoints", own_models.checkpoint).read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # a download that stopped half-way
    not_a_checkpoint = own_models.path("checkpoints", "a-lora.safetensors")
    shutil.copy(own_models.path("loras", own_models.style_lora), not_a_checkpoint)
    manager = manager_for(own_models)
    working = manager.components(own_models.checkpoint)
    for bad in ("broken.safetensors", "a-lora.safetensors"):
        with pytest.raises(ModelError):
            manager.components(bad)
        assert manager.loaded()["checkpoint"] == own_models.checkpoint
        assert manager.components(own_models.checkpoint) is working
    # One read of the good file, one attempt at each bad one: no reload of the good one in between.
    assert manager.load_counts["checkpoint"] == 3


@pytest.mark.slow
def test_a_lora_rewritten_on_disk_is_read_again_and_refused_while_damaged(own_models: TinyModels) -> None:
    manager = manager_for(own_models)
    lora_path = own_models.path("loras", own_models.style_lora)
    original = lora_path.read_bytes()
    choice = [LoraSpec(own_models.style_lora, 0.8, 0.8)]
    manager.components(own_models.checkpoint, choice)
    fused = {
        k: v.clone() for k, v in manager.components(own_models.checkpoint, choice).unet.state_dict().items()
    }
    assert manager.load_counts["lora"] == 1

    with open(lora_path, "r+b") as f:  # `cp` over it, stopped part-way
        f.truncate(0)
        f.write(original[:1000])
    with pytest.raises(ModelError, match="not a readable"):
        manager.components(own_models.checkpoint, choice)

    doubled = {k: (v * 2 if k.endswith("lora_up.weight") else v) for k, v in load(original).items()}
    with open(lora_path, "r+b") as f:  # a new version of the LoRA under the same name
        f.truncate(0)
        f.write(save(doubled))
    changed = manager.components(own_models.checkpoint, choice).unet.state_dict()
    assert manager.load_counts["lora"] == 3
    assert any(not torch.equal(changed[k], fused[k]) for k in fused)
