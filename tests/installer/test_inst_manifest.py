"""models/manifest.json's model part: families (the sets --models chooses), folder entries, and what makes a
manifest invalid. The first manifests (no families, single files only) stay valid."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from installer_testkit import REPO

from installer.manifest import ManifestError, UnknownModelSetError, load_manifest

LAYOUT = {"checkpoints": "checkpoints", "loras": "loras", "controlnet": "controlnet", "taesd": "vae_approx"}
SHA = "ab" * 32


def single(model_id: str, kind: str = "checkpoints", **extra: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "kind": kind,
        "file": f"{model_id}.safetensors",
        "url": f"https://example.org/{model_id}.safetensors",
        "size": 10,
        "sha256": SHA,
        "licence": "MIT",
        "required": True,
        "description": "test",
        **extra,
    }


def folder(model_id: str, **extra: Any) -> dict[str, Any]:
    files = [
        {"file": "diffusion_pytorch_model.safetensors", "url": "https://example.org/w", "size": None,
         "approx_size": 2_500_000_000, "sha256": None},
        {"file": "config.json", "url": "https://example.org/c", "size": 1500, "sha256": SHA},
    ]  # fmt: skip
    return {"id": model_id, "kind": "controlnet", "folder": model_id, "files": files, "licence": "Apache-2.0",
            "required": False, "description": "a diffusers ControlNet", **extra}  # fmt: skip


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def with_families(models: list[dict[str, Any]]) -> dict[str, Any]:
    families = {"sd15": {"label": "SD 1.5", "default": True}, "sdxl": {"label": "SDXL", "default": False}}
    return {"version": 1, "layout": LAYOUT, "families": families, "models": models}


def test_a_manifest_without_families_is_all_sd15_and_the_default(tmp_path: Path) -> None:
    data = {"version": 1, "layout": LAYOUT, "models": [single("a"), single("b", "loras")]}
    manifest = load_manifest(write(tmp_path, data))
    assert list(manifest.families) == ["sd15"] and manifest.default_families == ["sd15"]
    assert [m.family for m in manifest.models] == ["sd15", "sd15"]
    assert manifest.choose_families(None) == ["sd15"] and manifest.choose_families("all") == ["sd15"]
    entry = manifest.models[0]
    assert entry.name == "a.safetensors" and not entry.is_folder
    assert [(f.name, f.url, f.size, f.sha256) for f in entry.files] == [
        ("a.safetensors", "https://example.org/a.safetensors", 10, SHA)
    ]
    with pytest.raises(UnknownModelSetError, match="unknown model set 'sdxl': choose from sd15, all"):
        manifest.choose_families("sdxl")


def test_families_select_entries_in_manifest_order(tmp_path: Path) -> None:
    models = [single("a"), single("x", family="sdxl"), folder("cn", family="sdxl"), single("b", "loras")]
    manifest = load_manifest(write(tmp_path, with_families(models)))
    assert [m.family for m in manifest.models] == ["sd15", "sdxl", "sdxl", "sd15"]  # no family: sd15
    assert [m.id for m in manifest.entries(manifest.choose_families(None))] == ["a", "b"]
    assert [m.id for m in manifest.entries(manifest.choose_families("sdxl"))] == ["x", "cn"]
    assert manifest.choose_families("sdxl, SD15,sdxl") == ["sd15", "sdxl"]
    assert [m.id for m in manifest.entries(manifest.choose_families("all"))] == ["a", "x", "cn", "b"]


def test_a_folder_entry(tmp_path: Path) -> None:
    manifest = load_manifest(write(tmp_path, with_families([folder("cn", family="sdxl")])))
    (entry,) = manifest.models
    assert entry.is_folder and entry.name == "cn" and entry.kind == "controlnet"
    assert [f.name for f in entry.files] == ["diffusion_pytorch_model.safetensors", "config.json"]
    assert entry.files[1].sha256 == SHA and entry.files[0].sha256 is None
    assert entry.planned_size == 2_500_000_000 + 1500 and entry.size is None


def broken(mutate: str) -> dict[str, Any]:
    data = with_families([single("a"), folder("cn", family="sdxl")])
    models = data["models"]
    if mutate == "unknown family":
        models[0]["family"] = "sd3"
    elif mutate == "family called all":
        data["families"]["all"] = {"label": "All", "default": False}
    elif mutate == "no default family":
        data["families"]["sd15"]["default"] = False
    elif mutate == "default not a bool":
        data["families"]["sdxl"]["default"] = "no"
    elif mutate == "file and folder":
        models[1]["file"] = "x.safetensors"
    elif mutate == "neither file nor folder":
        del models[0]["file"]
    elif mutate == "empty files":
        models[1]["files"] = []
    elif mutate == "folder name with a slash":
        models[1]["folder"] = "../escape"
    elif mutate == "file name dot-dot":
        models[0]["file"] = ".."
    elif mutate == "folder file twice":
        models[1]["files"].append(copy.deepcopy(models[1]["files"][0]))
    elif mutate == "duplicate id":
        models[1]["id"] = "a"
    elif mutate == "bad sha256":
        models[1]["files"][1]["sha256"] = "not-a-checksum"
    elif mutate == "kind without folder":
        models[0]["kind"] = "upscalers"
    elif mutate == "part without url":
        del models[1]["files"][0]["url"]
    return data


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        ("unknown family", "family 'sd3', not one of the manifest's families"),
        ("family called all", "plain identifier other than 'all'"),
        ("no default family", "no family is marked default"),
        ("default not a bool", "true/false default"),
        ("file and folder", "needs either `file` and `url`, or `folder` and `files`"),
        ("neither file nor folder", "needs either"),
        ("empty files", "`files` must list the folder's files"),
        ("folder name with a slash", "must be a plain file or folder name"),
        ("file name dot-dot", "must be a plain file or folder name"),
        ("folder file twice", "lists a file twice"),
        ("duplicate id", "listed twice"),
        ("bad sha256", "sha256 must be 64 hex digits or null"),
        ("kind without folder", "no folder in the layout"),
        ("part without url", "malformed"),
    ],
)
def test_invalid_manifests_are_refused(tmp_path: Path, mutate: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_manifest(write(tmp_path, broken(mutate)))


def test_the_real_sdxl_set() -> None:
    manifest = load_manifest(REPO / "models" / "manifest.json")
    assert list(manifest.families) == ["sd15", "sdxl"] and manifest.default_families == ["sd15"]
    sdxl = {m.id: m for m in manifest.entries(["sdxl"])}
    names = {m.kind: set() for m in sdxl.values()}
    for m in sdxl.values():
        names[m.kind].add(m.name)
    assert names["taesd"] == {"taesdxl_encoder.pth", "taesdxl_decoder.pth"}  # beside SD1.5's taesd_*.pth
    assert "lcm-lora-sdxl.safetensors" in names["loras"] and len(names["checkpoints"]) == 1
    assert names["vae"] == {"sdxl-vae-fp16-fix.safetensors"}
    controlnets = [m for m in sdxl.values() if m.kind == "controlnet"]
    assert {"scribble", "openpose"} == {
        mode for m in controlnets for mode in ("scribble", "openpose") if mode in m.id
    }
    for m in controlnets:
        assert m.is_folder and sorted(f.name for f in m.files) == [
            "config.json",
            "diffusion_pytorch_model.safetensors",
        ]
        assert all(f.url.endswith("/" + f.name) for f in m.files)
    assert {m.name for m in manifest.entries(["sd15"])} & {m.name for m in sdxl.values()} == set()
    assert 10e9 < sum(m.planned_size for m in sdxl.values()) < 20e9  # the disk-space plan is sane


def test_the_manifest_families_are_families_the_backend_knows() -> None:
    """install.py only reads the names; the backend's model_families.py is where they mean something."""
    from backend.model_families import FAMILIES

    manifest = load_manifest(REPO / "models" / "manifest.json")
    assert set(manifest.families) <= set(FAMILIES)
