"""backend/model_layouts.py: the one reader of the manifest's layouts, used by the model store and install.py,
and its one rule for naming a folder's layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend.model_files import REPO_MANIFEST, ModelStore, read_layouts
from backend.model_layouts import (
    NATIVE,
    LayoutError,
    Layouts,
    detect_layout,
    models_folder,
    parse_layouts,
)
from installer import manifest as installer_manifest

REPO = Path(__file__).resolve().parents[2]

# (subfolders, the layout both sides must name). Ties go to the layout listed first (ours, then the manifest's
# order) unless ComfyUI-only folders are there; a kind counts once however many of its folders are present.
CASES = [
    (["checkpoints", "loras"], NATIVE),
    (["checkpoints", "loras", "clip_vision"], "comfyui"),
    (["Stable-diffusion", "Lora", "VAE-approx"], "a1111"),
    # One kind each: before the shared rule the model store called this A1111's (two folders of one kind)
    # and install.py ours.
    (["checkpoints", "Lora", "LyCORIS"], NATIVE),
    (["Stable-diffusion", "checkpoints", "loras"], NATIVE),
    (["Stable-diffusion", "Lora", "loras", "clip_vision"], "a1111"),  # two kinds beat a tie-break
    (["vae", "Lora", "unet"], "comfyui"),  # ComfyUI's "vae" and A1111's "Lora": a tie, and a ComfyUI folder
]


def make_folders(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
    return root


@pytest.mark.parametrize(("folders", "expected"), CASES)
def test_install_py_and_the_model_store_name_a_folder_alike(
    tmp_path: Path, folders: list[str], expected: str
) -> None:
    manifest = installer_manifest.load_manifest(REPO_MANIFEST)
    extra = make_folders(tmp_path / "extra", folders)
    assert installer_manifest.detect_layout(extra, manifest) == expected
    store = ModelStore(make_folders(tmp_path / "own", []), extra_roots=[extra])
    assert [(root.path, root.layout_name) for root in store.roots[1:]] == [(extra, expected)]
    assert detect_layout(extra, read_layouts(None)) == expected


def test_an_application_folder_is_read_through_its_models_folder(tmp_path: Path) -> None:
    manifest = installer_manifest.load_manifest(REPO_MANIFEST)
    app = tmp_path / "ComfyUI"
    models = make_folders(app / "models", ["checkpoints", "clip_vision"])
    (app / "custom_nodes").mkdir()
    assert installer_manifest.models_root(app, manifest) == models
    store = ModelStore(make_folders(tmp_path / "own", []), extra_roots=[app])
    assert [(root.path, root.layout_name) for root in store.roots[1:]] == [(models, "comfyui")]
    assert installer_manifest.detect_layout(models, manifest) == "comfyui"


def test_a_folder_of_no_layout(tmp_path: Path) -> None:
    layouts = read_layouts(None)
    plain = make_folders(tmp_path / "plain", ["photos"])
    assert detect_layout(plain, layouts) is None and models_folder(plain, layouts) is None
    assert detect_layout(tmp_path / "absent", layouts) is None
    manifest = installer_manifest.load_manifest(REPO_MANIFEST)
    assert installer_manifest.detect_layout(plain, manifest) == NATIVE  # where install.py puts files
    assert installer_manifest.models_root(plain, manifest) == plain
    assert ModelStore(tmp_path / "own", extra_roots=[plain]).roots[1:] == []


def test_folders_of_a_kind_in_a_layout() -> None:
    layouts = Layouts({"loras": "loras", "taesd": "vae_approx"}, {"a1111": {"loras": ["Lora", "LyCORIS"]}})
    assert layouts.folders("a1111", "loras") == ["Lora", "LyCORIS"]
    assert layouts.folders("a1111", "taesd") == ["vae_approx"]  # a kind the layout lacks: ours
    assert layouts.folders(NATIVE, "loras") == ["loras"]
    assert list(layouts.all()) == [NATIVE, "a1111"]


def test_malformed_layouts_are_refused_by_both_readers(tmp_path: Path) -> None:
    bad = {"version": 1, "layout": {"loras": "loras"}, "foreign_layouts": {"comfyui": {"loras": "loras"}}}
    with pytest.raises(LayoutError, match="lists each kind's folders"):
        parse_layouts(bad)
    with pytest.raises(LayoutError):
        parse_layouts({"foreign_layouts": {}})
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({**bad, "models": []}), encoding="utf-8")
    with pytest.raises(installer_manifest.ManifestError, match="lists each kind's folders"):
        installer_manifest.load_manifest(path)
    # The model store falls back to the repository's manifest rather than failing to start.
    assert read_layouts(path) == read_layouts(None)


def test_the_reader_needs_only_the_standard_library() -> None:
    """install.py imports it with a bare interpreter (-I -S): no site-packages, no torch."""
    code = (
        "before = set(sys.modules); import backend.model_layouts; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new - set(sys.stdlib_module_names) - {'backend'}))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); {code}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
