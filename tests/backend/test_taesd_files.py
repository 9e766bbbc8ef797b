"""TAESD files: the model store lists, and the loader looks up, the suffixes of model_store.TAESD_SUFFIXES."""

from __future__ import annotations

from pathlib import Path

import torch

from backend.loading.manager import ModelManager
from backend.model_store import TAESD_SUFFIXES, ModelStore


def manager_for(root: Path) -> ModelManager:
    return ModelManager(ModelStore(root), torch.device("cpu"), torch.float32)


def test_every_listed_taesd_file_is_one_the_loader_finds(tmp_path: Path) -> None:
    for suffix in TAESD_SUFFIXES:
        root = tmp_path / suffix.strip(".") / "models"
        (root / "vae_approx").mkdir(parents=True)
        for stem in ("taesd_encoder", "taesd_decoder"):
            (root / "vae_approx" / f"{stem}{suffix}").write_bytes(b"")
        manager = manager_for(root)
        assert manager.store.list_kind("taesd") == [f"taesd_decoder{suffix}", f"taesd_encoder{suffix}"]
        assert manager._find_taesd("taesd_encoder") == root / "vae_approx" / f"taesd_encoder{suffix}"


def test_safetensors_is_preferred_when_a_folder_has_both(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "vae_approx"
    folder.mkdir(parents=True)
    for name in ("taesd_encoder.pth", "taesd_encoder.safetensors", "taesd_encoder.bin"):
        (folder / name).write_bytes(b"")
    manager = manager_for(tmp_path / "models")
    assert manager.store.list_kind("taesd") == ["taesd_encoder.pth", "taesd_encoder.safetensors"]
    assert manager._find_taesd("taesd_encoder") == folder / "taesd_encoder.safetensors"
    assert manager._find_taesd("taesd_decoder") is None
