""".ckpt checkpoints are judged in the model lists' `unusable` map like .safetensors files: a torch.save
archive is read (its zip directory and its pickle's opcodes, never unpickled) and a file the loader would
refuse is marked with the loader's reason: pickled Python objects besides weights (refused for safety by
torch.load(weights_only=True)), a cut-off or garbled file, an SDXL checkpoint.

Real server and tiny models over a real WebSocket; every mark is checked against the real loader.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from backend.loading.files import read_tensors
from backend.model_check import unusable_reason
from backend.model_errors import ModelError
from tests.backend.hardening_client import RawClient
from tests.backend.server_harness import run, running_server
from tests.fixtures.tiny_models import TinyModels

pytestmark = pytest.mark.slow


class TrainingCallback:
    """Stands for what old training checkpoints carry (pytorch_lightning's ModelCheckpoint and the like)."""

    def __init__(self) -> None:
        self.monitor = "val/loss"


# name -> a word its reason must contain
EXPECTED_MARKS = {
    "callbacks.ckpt": "not loaded for safety",
    "numpy-step.ckpt": "not loaded for safety",
    "cut.ckpt": "cut short",
    "garbage.ckpt": "not a PyTorch file",
    "sdxl.ckpt": "SDXL",
    "lora-here.ckpt": "LoRA",
}


@pytest.fixture
def models(tmp_path: Path, tiny_models: TinyModels) -> Path:
    root = tmp_path / "models"
    checkpoints = root / "checkpoints"
    checkpoints.mkdir(parents=True)
    good = tiny_models.path("checkpoints", tiny_models.checkpoint_ckpt)
    shutil.copy(good, checkpoints / "good.ckpt")
    state = torch.load(good, weights_only=True)["state_dict"]
    torch.save(
        {"state_dict": state, "callbacks": {"best": TrainingCallback()}}, checkpoints / "callbacks.ckpt"
    )
    torch.save({"state_dict": state, "global_step": np.int64(1000)}, checkpoints / "numpy-step.ckpt")
    whole = good.read_bytes()
    (checkpoints / "cut.ckpt").write_bytes(whole[: len(whole) // 2])  # a download cut off halfway
    (checkpoints / "garbage.ckpt").write_bytes(bytes(range(256)) * 8)
    torch.save({"state_dict": {"conditioner.embedders.0.x": torch.zeros(2)}}, checkpoints / "sdxl.ckpt")
    torch.save({"lora_unet_down_blocks_0_attentions_0.lora_down.weight": torch.zeros(2, 2)},
               checkpoints / "lora-here.ckpt")  # fmt: skip
    return root


def test_ckpt_files_the_loader_refuses_are_marked_with_its_reason(
    models: Path, tiny_models: TinyModels
) -> None:
    async def scenario(url: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        client = await RawClient.connect(url)
        welcome = client.received[0]
        ends: dict[str, dict[str, Any]] = {}
        for index, name in enumerate(["good.ckpt", *EXPECTED_MARKS]):
            await client.send_job(f"j{index}", params={"checkpoint": name, "steps": 1, "strength": 0.5})
            await client.until_ended({f"j{index}"})
            ends[name] = client.ends_of(f"j{index}")[0]
        await client.close()
        assert isinstance(welcome, dict)
        return welcome, ends

    with running_server(models, model_config_dir=tiny_models.config_dir, preload=False) as server:
        welcome, ends = run(scenario(server.url))

    assert set(welcome["models"]["checkpoints"]) == {"good.ckpt", *EXPECTED_MARKS}, welcome["models"]
    marked = welcome["unusable"].get("checkpoints", {})
    assert set(marked) == set(EXPECTED_MARKS), marked
    for name, word in EXPECTED_MARKS.items():
        assert word in marked[name] and len(marked[name]) < 200 and str(models) not in marked[name], marked
        # The mark agrees with the loader: a job naming the file fails with a model error.
        assert (ends[name]["type"], ends[name].get("code")) == ("error", "model_error"), (name, ends[name])
    assert "TrainingCallback" in marked["callbacks.ckpt"] and "numpy" in marked["numpy-step.ckpt"], marked
    assert ends["good.ckpt"]["type"] == "result", ends["good.ckpt"]


def test_the_unsafe_marks_are_what_torch_load_refuses(models: Path) -> None:
    checkpoints = models / "checkpoints"
    for name in ("callbacks.ckpt", "numpy-step.ckpt"):
        with pytest.raises(ModelError, match="besides weights"):
            read_tensors(checkpoints / name, "Checkpoint")
    assert read_tensors(checkpoints / "good.ckpt", "Checkpoint")
    # A file that isn't a torch.save archive but a bare pickle (torch's legacy format) is not judged.
    legacy = checkpoints / "legacy.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, legacy, _use_new_zipfile_serialization=False)
    assert unusable_reason("checkpoints", legacy) is None
