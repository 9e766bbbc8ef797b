"""TAESD files: the model files list, and the loader looks up, the suffixes of model_files.TAESD_SUFFIXES;
damaged ones leave live frames on the full VAE."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from backend.loading.model_cache import ModelCache
from backend.model_files import TAESD_SUFFIXES, ModelStore
from protocol import JobParams, Result
from tests.backend.server_harness import random_canvas, run, running_server
from tests.fixtures.tiny_models import TinyModels
from tests.protocol_client import Client


def manager_for(root: Path) -> ModelCache:
    return ModelCache(ModelStore(root), torch.device("cpu"), torch.float32)


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


@pytest.mark.slow
def test_a_damaged_taesd_file_does_not_break_live_frames(tiny_models: TinyModels, tmp_path: Path) -> None:
    """TAESD is an optional speed-up for live frames: when its files can't be read, live frames decode with
    the checkpoint's VAE instead of every live frame failing with a model error."""
    root = tmp_path / "models"
    shutil.copytree(tiny_models.root, root)
    (root / "vae_approx" / tiny_models.taesd_decoder).write_bytes(b"truncated download")

    async def scenario(url: str) -> None:
        client = await Client.connect(url)
        params = JobParams(checkpoint=tiny_models.checkpoint, steps=2, strength=0.6)
        for _ in range(2):
            live = await client.run(random_canvas(32, 32, 2), params, live=True)
            assert isinstance(live.final, Result), live.final
            assert live.final.params["decoder"] == "vae"
            params = JobParams(checkpoint=tiny_models.checkpoint, steps=2, strength=0.7)
        await client.close()

    with running_server(root, model_config_dir=tiny_models.config_dir) as server:
        run(scenario(server.url))
