"""A checkpoint's settings file beside it (backend/loading/sidecar.py): A1111's `<name>.yaml` makes a file
without markers v-prediction (and zero terminal SNR), overrides the markers, is read through the real
loader and the model cache, and a broken one is a clear error naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from backend.loading.checkpoint import load_checkpoint
from backend.loading.files import read_tensors
from backend.loading.model_cache import ModelCache
from backend.loading.sidecar import checkpoint_stamp, sampling_overrides
from backend.model_errors import ModelError
from backend.model_files import ModelStore
from tests.fixtures import ldm_writer
from tests.fixtures.tiny_models import TinyModels

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
# The shape of A1111's LDM configs (v2-inference-v.yaml): the key sits under model.params.
A1111_V = """model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
"""


@pytest.fixture
def models(tiny_models: TinyModels, tmp_path: Path) -> Path:
    """A model folder of its own holding the tiny SD1.5 single file (sidecars are written per test)."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(tiny_models.path("checkpoints", tiny_models.checkpoint), folder / "tiny.safetensors")
    return tmp_path


def load(models: Path, tiny_models: TinyModels, name: str = "tiny.safetensors") -> dict[str, object]:
    components = load_checkpoint(models / "checkpoints" / name, CPU, torch.float32, tiny_models.config_dir)
    return components.scheduler_config


def test_a1111_yaml_beside_the_file_makes_it_v_prediction(models: Path, tiny_models: TinyModels) -> None:
    assert load(models, tiny_models).get("prediction_type", "epsilon") == "epsilon"  # the family's config
    (models / "checkpoints" / "tiny.yaml").write_text(A1111_V)
    config = load(models, tiny_models)
    assert config["prediction_type"] == "v_prediction"
    assert not config.get("rescale_betas_zero_snr", False)
    (models / "checkpoints" / "tiny.yaml").write_text("parameterization: v\nzero_terminal_snr: true\n")
    config = load(models, tiny_models)
    assert (config["prediction_type"], config["rescale_betas_zero_snr"]) == ("v_prediction", True)


def test_the_sidecar_overrides_the_files_marker_tensors(models: Path, tiny_models: TinyModels) -> None:
    marked = models / "checkpoints" / "marked.safetensors"
    tensors = dict(read_tensors(models / "checkpoints" / "tiny.safetensors", "Checkpoint"))
    ldm_writer.save_tensors(marked, {**tensors, "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])})
    config = load(models, tiny_models, "marked.safetensors")
    assert (config["prediction_type"], config["rescale_betas_zero_snr"]) == ("v_prediction", True)
    (models / "checkpoints" / "marked.yml").write_text("parameterization: eps\nzsnr: false\n")
    config = load(models, tiny_models, "marked.safetensors")
    assert (config["prediction_type"], config["rescale_betas_zero_snr"]) == ("epsilon", False)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("model: [unclosed", "tiny.yaml (settings of tiny.safetensors) can't be read"),
        ("parameterization: x0\n", "sets parameterization 'x0'; the backend runs 'v'"),
        ("zero_terminal_snr: maybe\n", "zero_terminal_snr must be true or false"),
    ],
)
def test_a_broken_sidecar_is_a_clear_error_naming_it(models: Path, text: str, said: str) -> None:
    (models / "checkpoints" / "tiny.yaml").write_text(text)
    with pytest.raises(ModelError, match=said.replace("(", r"\(").replace(")", r"\)")):
        sampling_overrides(models / "checkpoints" / "tiny.safetensors")


def test_editing_the_sidecar_reloads_the_checkpoint(models: Path, tiny_models: TinyModels) -> None:
    checkpoint = models / "checkpoints" / "tiny.safetensors"
    before = checkpoint_stamp(checkpoint)
    cache = ModelCache(ModelStore(models), CPU, torch.float32, tiny_models.config_dir)
    config = cache.components("tiny.safetensors").scheduler_config
    assert config.get("prediction_type", "epsilon") == "epsilon"
    (models / "checkpoints" / "tiny.yaml").write_text("parameterization: v\n")
    assert checkpoint_stamp(checkpoint) != before
    assert cache.components("tiny.safetensors").scheduler_config["prediction_type"] == "v_prediction"
    assert cache.load_counts["checkpoint"] == 2
