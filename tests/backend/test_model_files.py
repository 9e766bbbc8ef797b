"""ModelStore: listing, safe names, foreign (ComfyUI/A1111) folders and extra_paths.json. No torch needed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from backend.model_files import (
    KINDS,
    ModelError,
    ModelNotFoundError,
    ModelStore,
    UnsafeModelNameError,
    check_name,
    read_layouts,
)

if TYPE_CHECKING:
    from tests.fixtures.tiny_models import TinyModels


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    touch(root / "checkpoints" / "b.safetensors")
    touch(root / "checkpoints" / "A.safetensors")
    touch(root / "checkpoints" / "sd15" / "dream.safetensors")
    touch(root / "checkpoints" / "old.ckpt")
    touch(root / "checkpoints" / "notes.txt")
    touch(root / "checkpoints" / ".partial.safetensors")
    touch(root / "checkpoints" / "my-model.v1.5" / "model_index.json", b"{}")
    touch(root / "checkpoints" / "my-model.v1.5" / "unet" / "x.safetensors")
    touch(root / "checkpoints" / "unet-only" / "unet" / "config.json", b"{}")
    touch(root / "checkpoints" / "empty-dir" / "readme.md")
    touch(root / "loras" / "lcm.safetensors")
    touch(root / "loras" / "styles" / "ink.safetensors")
    touch(root / "loras" / "pickled.pt")
    touch(root / "controlnet" / "scribble.safetensors")
    touch(root / "vae" / "ft-mse.safetensors")
    touch(root / "vae_approx" / "taesd_encoder.pth")
    touch(root / "vae_approx" / "taesd_decoder.pth")
    return root


def test_lists_every_kind_with_relative_posix_names(models: Path) -> None:
    listed = ModelStore(models).list_models()
    assert set(listed) == set(KINDS)
    assert listed["checkpoints"] == [
        "A.safetensors",
        "b.safetensors",
        "my-model.v1.5",
        "old.ckpt",
        "sd15/dream.safetensors",
        "unet-only",
    ]
    assert listed["loras"] == ["lcm.safetensors", "styles/ink.safetensors"]
    assert listed["controlnet"] == ["scribble.safetensors"]
    assert listed["vae"] == ["ft-mse.safetensors"]
    assert listed["taesd"] == ["taesd_decoder.pth", "taesd_encoder.pth"]


def test_missing_folders_list_nothing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "nothing-here")
    assert store.list_models() == {kind: [] for kind in KINDS}
    assert store.default_checkpoint() is None


def test_resolve_and_default(models: Path) -> None:
    store = ModelStore(models)
    assert (
        store.resolve("checkpoints", "sd15/dream.safetensors")
        == models / "checkpoints/sd15/dream.safetensors"
    )
    assert store.resolve("checkpoints", "my-model.v1.5") == models / "checkpoints/my-model.v1.5"
    assert store.resolve("taesd", "taesd_encoder.pth") == models / "vae_approx/taesd_encoder.pth"
    # These files are one-byte stand-ins, none usable: no default (tests/backend/test_model_choice.py).
    assert store.default_checkpoint() is None


def test_not_found_says_what_to_put_where(models: Path) -> None:
    store = ModelStore(models)
    with pytest.raises(ModelNotFoundError) as e:
        store.resolve("checkpoints", "missing.safetensors")
    assert "No checkpoint named 'missing.safetensors'" in e.value.message
    assert str(models / "checkpoints") in e.value.message
    assert ".safetensors" in e.value.message
    with pytest.raises(ModelNotFoundError, match="loras"):
        store.resolve("loras", "lcm")
    # a folder that is not a diffusers model is not a checkpoint
    with pytest.raises(ModelNotFoundError):
        store.resolve("checkpoints", "empty-dir")


def test_unsupported_file_type_is_a_model_error(models: Path) -> None:
    with pytest.raises(ModelError, match="unsupported file type"):
        ModelStore(models).resolve("loras", "pickled.pt")
    with pytest.raises(ModelError, match="unsupported file type"):
        ModelStore(models).resolve("checkpoints", "notes.txt")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../models/checkpoints/A.safetensors",
        "sd15/../../secret.safetensors",
        "/etc/passwd",
        "C:/models/x.safetensors",
        "sd15\\dream.safetensors",
        "a\0b.safetensors",
        "./A.safetensors",
        "sd15//dream.safetensors",
        " A.safetensors",
        "..",
    ],
)
def test_unsafe_names_are_refused(models: Path, name: str) -> None:
    with pytest.raises(UnsafeModelNameError):
        ModelStore(models).resolve("checkpoints", name)


def test_check_name_accepts_plain_relative_names() -> None:
    assert check_name("sd15/dream v2.safetensors").parts == ("sd15", "dream v2.safetensors")


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_symlinks_are_followed_wherever_they_lead(models: Path, tmp_path: Path) -> None:
    """Links are the machine owner's (painters link models kept elsewhere); names are what is guarded."""
    outside = touch(tmp_path / "elsewhere" / "secret.safetensors")
    (models / "checkpoints" / "linked.safetensors").symlink_to(outside)
    (models / "checkpoints" / "linked-dir").symlink_to(outside.parent, target_is_directory=True)
    (models / "checkpoints" / "alias.safetensors").symlink_to(models / "checkpoints" / "A.safetensors")
    (models / "checkpoints" / "dangling.safetensors").symlink_to(tmp_path / "gone.safetensors")
    (models / "checkpoints" / "sd15" / "loop").symlink_to(models / "checkpoints", target_is_directory=True)
    store = ModelStore(models)
    listed = store.list_kind("checkpoints")
    assert {"linked.safetensors", "linked-dir/secret.safetensors", "alias.safetensors"} <= set(listed)
    assert "dangling.safetensors" not in listed
    assert not any(name.startswith("sd15/loop") for name in listed)  # a link back inside: not walked again
    assert store.resolve("checkpoints", "linked.safetensors").resolve() == outside
    assert store.resolve("checkpoints", "linked-dir/secret.safetensors").resolve() == outside
    with pytest.raises(ModelNotFoundError):
        store.resolve("checkpoints", "dangling.safetensors")
    assert store.resolve("checkpoints", "alias.safetensors").resolve() == models / "checkpoints/A.safetensors"
    with pytest.raises(UnsafeModelNameError):
        store.resolve("checkpoints", "linked-dir/../../elsewhere/secret.safetensors")


def comfyui_app(tmp_path: Path) -> Path:
    app = tmp_path / "ComfyUI"
    touch(app / "models" / "checkpoints" / "comfy-ckpt.safetensors")
    touch(app / "models" / "loras" / "comfy-lora.safetensors")
    touch(app / "models" / "vae_approx" / "taesd_decoder.pth")
    (app / "models" / "clip_vision").mkdir()  # ComfyUI makes it; without it the folder reads as ours
    return app


def a1111_models(tmp_path: Path) -> Path:
    models = tmp_path / "stable-diffusion-webui" / "models"
    touch(models / "Stable-diffusion" / "webui-ckpt.safetensors")
    touch(models / "Stable-diffusion" / "A.safetensors")  # same name as ours: ours wins
    touch(models / "Lora" / "webui-lora.safetensors")
    touch(models / "LyCORIS" / "locon.safetensors")
    touch(models / "ControlNet" / "control_v11p_sd15_scribble.safetensors")
    touch(models / "VAE" / "webui-vae.safetensors")
    touch(models / "VAE-approx" / "taesd_encoder.pth")
    return models


def test_foreign_layouts_are_detected_and_merged(models: Path, tmp_path: Path) -> None:
    comfy = comfyui_app(tmp_path)  # the application folder: its models/ is found
    webui = a1111_models(tmp_path)  # the models folder itself
    store = ModelStore(models, extra_roots=[comfy, webui])
    assert [r.layout_name for r in store.roots] == ["own", "comfyui", "a1111"]
    listed = store.list_models()
    assert "comfy-ckpt.safetensors" in listed["checkpoints"]
    assert "webui-ckpt.safetensors" in listed["checkpoints"]
    assert listed["checkpoints"].count("A.safetensors") == 1
    assert {
        "lcm.safetensors",
        "comfy-lora.safetensors",
        "webui-lora.safetensors",
        "locon.safetensors",
    } <= set(listed["loras"])
    assert "control_v11p_sd15_scribble.safetensors" in listed["controlnet"]
    assert "webui-vae.safetensors" in listed["vae"]
    assert store.resolve("checkpoints", "A.safetensors") == models / "checkpoints" / "A.safetensors"
    assert store.resolve("loras", "locon.safetensors") == webui / "LyCORIS" / "locon.safetensors"
    assert store.resolve("taesd", "taesd_decoder.pth") == models / "vae_approx" / "taesd_decoder.pth"
    # Not-found messages point at our own folder, where new files should go.
    with pytest.raises(ModelNotFoundError, match=str(models / "loras")):
        store.resolve("loras", "nope.safetensors")


def test_extra_roots_without_model_folders_are_ignored(models: Path, tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    store = ModelStore(models, extra_roots=[tmp_path / "random", tmp_path / "absent"])
    assert len(store.roots) == 1


def test_extra_paths_json_adds_roots(models: Path, tmp_path: Path) -> None:
    webui = a1111_models(tmp_path)
    (models / "extra_paths.json").write_text(json.dumps({"paths": [str(webui)]}))
    store = ModelStore(models)
    assert "webui-ckpt.safetensors" in store.list_kind("checkpoints")
    # an extra root given twice (argument and file) is scanned once
    assert len(ModelStore(models, extra_roots=[webui]).roots) == 2


def test_broken_extra_paths_json_is_ignored(models: Path) -> None:
    (models / "extra_paths.json").write_text("{not json")
    assert len(ModelStore(models).roots) == 1


def test_layout_comes_from_the_manifest(tmp_path: Path) -> None:
    repo = read_layouts(None)  # the repository's models/manifest.json
    assert repo.own["taesd"] == "vae_approx"
    assert repo.foreign["a1111"]["loras"] == ["Lora", "LyCORIS"]

    root = tmp_path / "models"
    manifest = {"version": 1, "layout": {"taesd": "approx"}, "foreign_layouts": {}, "models": []}
    touch(root / "manifest.json", json.dumps(manifest).encode())
    touch(root / "approx" / "taesd_encoder.pth")
    store = ModelStore(root)
    assert store.list_kind("taesd") == ["taesd_encoder.pth"]
    assert store.folder("checkpoints") == root / "checkpoints"  # kinds the manifest omits keep defaults


def test_unknown_kind(models: Path) -> None:
    with pytest.raises(ModelError, match="Unknown model kind"):
        ModelStore(models).list_kind("hypernetworks")


def test_error_codes_match_the_protocol() -> None:
    from protocol.errors import ErrorCode

    assert ErrorCode(ModelError.code) == ErrorCode.MODEL_ERROR
    assert ErrorCode(ModelNotFoundError.code) == ErrorCode.MODEL_NOT_FOUND
    assert ErrorCode(UnsafeModelNameError.code) == ErrorCode.UNSAFE_NAME
    assert issubclass(ModelNotFoundError, ModelError) and issubclass(UnsafeModelNameError, ModelError)


@pytest.mark.slow
def test_tiny_models_are_listed(tiny_models: TinyModels) -> None:
    listed = ModelStore(tiny_models.root).list_models()
    assert listed["checkpoints"] == sorted(
        [
            tiny_models.checkpoint,
            tiny_models.checkpoint_ckpt,
            tiny_models.diffusers_checkpoint,
            tiny_models.inpaint_checkpoint,
        ]
    )
    assert tiny_models.lcm_lora in listed["loras"]
    assert listed["controlnet"] == [tiny_models.controlnet_openpose, tiny_models.controlnet_scribble]
    assert listed["taesd"] == [tiny_models.taesd_decoder, tiny_models.taesd_encoder]
