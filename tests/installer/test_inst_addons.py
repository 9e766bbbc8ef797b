"""`install.py --models` with add-ons: optional sets (the manifest's `addons`) fetched on top of the chosen
families' base sets only when named (`sd15,guidance`), never by default; a file several families share (the
IP-Adapters' image encoder, the estimators) is one entry, fetched once. And the real manifest's add-on."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from installer_testkit import REPO, UPSTREAM, LoopbackServer, fixture_bytes, model_path, sha256

from installer import cli
from installer.manifest import ManifestError, UnknownModelSetError, load_manifest
from installer.progress import human_size
from installer.report import EXIT_OK, EXIT_USAGE
from protocol.registry import CONTROL_KINDS, pick_controlnet

# (id, family or families, add-on, kind, file, size); the folder entry (an image encoder) is ENCODER.
SINGLES: list[tuple[str, Any, str | None, str, str, int]] = [
    ("ckpt", "sd15", None, "checkpoints", "tiny_checkpoint.safetensors", 30_000),
    ("lcm", "sd15", None, "loras", "lcm-lora-sdv1-5.safetensors", 12_000),
    ("xl-ckpt", "sdxl", None, "checkpoints", "tiny_xl_checkpoint.safetensors", 40_000),
    ("canny", "sd15", "guidance", "controlnet", "control_v11p_sd15_canny_fp16.safetensors", 9_000),
    ("ipa", "sd15", "guidance", "ipadapter", "ip-adapter_sd15.safetensors", 4_000),
    ("xl-ipa", "sdxl", "guidance", "ipadapter", "ip-adapter_sdxl_vit-h.safetensors", 7_000),
    ("lineart", ["sd15", "sdxl"], "guidance", "annotators", "sk_model.pth", 2_000),
]
ENCODER = "CLIP-ViT-H-14-laion2B-s32B-b79K"
ENCODER_FILES = [("model.safetensors", 25_000), ("config.json", 600)]
ADDON_SIZE = 9_000 + 4_000 + 2_000 + sum(size for _, size in ENCODER_FILES)  # SD1.5's guidance files


def names(family: str | None = None, addon: bool | None = None) -> list[str]:
    """Served names (file names, folder/file for the encoder) of a family's base set (addon False), its
    add-on (True), or both (None); every family's when family is None."""
    picked = []
    for _, families, entry_addon, _, name, _ in SINGLES:
        serves = family is None or family in ([families] if isinstance(families, str) else families)
        if serves and (addon is None or addon == (entry_addon is not None)):
            picked.append(name)
    if addon is not False:  # the encoder: guidance, for both families
        picked += [f"{ENCODER}/{name}" for name, _ in ENCODER_FILES]
    return picked


@pytest.fixture
def files() -> dict[str, bytes]:
    data = {name: fixture_bytes(name, size) for _, _, _, _, name, size in SINGLES}
    data.update(
        {f"{ENCODER}/{name}": fixture_bytes(f"{ENCODER}/{name}", size) for name, size in ENCODER_FILES}
    )
    return data


def part(name: str, data: bytes) -> dict[str, Any]:
    return {"url": UPSTREAM + model_path(name), "size": len(data), "sha256": sha256(data)}


def addon_manifest(files: dict[str, bytes]) -> dict[str, Any]:
    real = json.loads((REPO / "models" / "manifest.json").read_text(encoding="utf-8"))
    models: list[dict[str, Any]] = []
    for model_id, family, addon, kind, name, _ in SINGLES:
        entry = {
            "id": model_id,
            "family": family,
            "kind": kind,
            "file": name,
            **part(name, files[name]),
            "licence": "test",
            "source": "test",
            "required": addon is None,
            "description": "test",
        }
        models.append(entry if addon is None else {**entry, "addon": addon})
    encoder_files = [
        {"file": name, **part(f"{ENCODER}/{name}", files[f"{ENCODER}/{name}"])} for name, _ in ENCODER_FILES
    ]
    models.append({"id": "encoder", "family": ["sd15", "sdxl"], "addon": "guidance", "kind": "clip_vision",
                   "folder": ENCODER, "files": encoder_files, "licence": "test", "source": "test",
                   "required": False, "description": "shared image encoder"})  # fmt: skip
    return {
        "version": 1,
        "layout": real["layout"],
        "foreign_layouts": real["foreign_layouts"],
        "families": {
            "sd15": {"label": "SD 1.5", "default": True},
            "sdxl": {"label": "SDXL", "default": False},
        },
        "addons": {"guidance": {"label": "Guidance", "description": "ControlNets, estimators, references"}},
        "models": models,
    }


@pytest.fixture
def repo(fake_repo: Path, files: dict[str, bytes], server: LoopbackServer) -> Path:
    """The fake repo with the add-on manifest, every file served."""
    manifest = fake_repo / "models" / "manifest.json"
    manifest.write_text(json.dumps(addon_manifest(files), indent=2), encoding="utf-8")
    for name, data in files.items():
        server.add(model_path(name), data)
    return fake_repo


def models_step(repo: Path, *args: str) -> int:
    return cli.main(["--skip-venv", "--skip-plugin", *args], repo=repo)


def requested(server: LoopbackServer) -> list[str]:
    return sorted(path.removeprefix(model_path("")) for path, _ in server.requests())


def test_the_default_run_fetches_no_addon_and_says_how_to_get_it(
    repo: Path, server: LoopbackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models_step(repo, "--mirror", server.url) == EXIT_OK
    out = capsys.readouterr().out
    assert requested(server) == sorted(names("sd15", addon=False))
    assert (
        "model set(s): sd15 (SD 1.5); also available: sdxl (--models sd15,sdxl or all); "
        f"add-on: guidance (Guidance, about {human_size(ADDON_SIZE)}: --models sd15,guidance)\n"
    ) in out
    assert not (repo / "models" / "clip_vision").exists() and not (repo / "models" / "annotators").exists()


@pytest.mark.parametrize("choice", ["sd15,guidance", "guidance", "GUIDANCE , sd15"])
def test_sd15_with_the_addon_gets_its_base_and_its_guidance(
    repo: Path,
    server: LoopbackServer,
    files: dict[str, bytes],
    capsys: pytest.CaptureFixture[str],
    choice: str,
) -> None:
    """`guidance` alone comes with the default family's base set: add-ons are no use without a checkpoint."""
    assert models_step(repo, "--models", choice, "--mirror", server.url) == EXIT_OK
    out = capsys.readouterr().out
    assert "model set(s): sd15 (SD 1.5) with add-on(s) guidance (Guidance); also available: sdxl " in out
    assert "(--models sd15,sdxl,guidance or all)" in out
    assert requested(server) == sorted(names("sd15"))
    models = repo / "models"
    assert (models / "annotators" / "sk_model.pth").read_bytes() == files["sk_model.pth"]
    assert (models / "ipadapter" / "ip-adapter_sd15.safetensors").is_file()
    for name, _ in ENCODER_FILES:
        assert (models / "clip_vision" / ENCODER / name).read_bytes() == files[f"{ENCODER}/{name}"]
    assert not (models / "ipadapter" / "ip-adapter_sdxl_vit-h.safetensors").exists()


def test_sdxl_with_the_addon_gets_sdxl_guidance_and_the_shared_files(
    repo: Path, server: LoopbackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models_step(repo, "--models", "sdxl,guidance", "--mirror", server.url) == EXIT_OK
    assert requested(server) == sorted(names("sdxl"))
    assert "control_v11p_sd15_canny_fp16.safetensors" not in requested(server)
    assert "models: 0 present, 4 missing" in capsys.readouterr().out  # xl-ckpt, xl-ipa, sk_model, encoder


def test_all_fetches_every_set_and_addon_and_a_shared_file_once(
    repo: Path, server: LoopbackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models_step(repo, "--models", "all", "--mirror", server.url) == EXIT_OK
    counts = Counter(requested(server))
    assert sorted(counts) == sorted(names()) and set(counts.values()) == {1}
    out = capsys.readouterr().out
    assert "model set(s): sd15 (SD 1.5), sdxl (SDXL) with add-on(s) guidance (Guidance)\n" in out
    assert "models: 0 present, 8 missing" in out  # 7 single files and 1 folder, the shared ones once
    assert models_step(repo, "--offline", "--verify", "--models", "sd15,sdxl,guidance") == EXIT_OK
    assert "models: 8 present, 0 missing" in capsys.readouterr().out


def test_the_shared_encoder_is_not_fetched_again_for_the_other_family(
    repo: Path, server: LoopbackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models_step(repo, "--models", "sd15,guidance", "--mirror", server.url) == EXIT_OK
    before = len(server.requests())
    assert models_step(repo, "--models", "sdxl,guidance", "--mirror", server.url) == EXIT_OK
    later = sorted(path.removeprefix(model_path("")) for path, _ in server.requests()[before:])
    assert later == sorted(["tiny_xl_checkpoint.safetensors", "ip-adapter_sdxl_vit-h.safetensors"])
    assert f"ok: {ENCODER} ({repo.resolve() / 'models' / 'clip_vision' / ENCODER})" in capsys.readouterr().out


def test_annotators_go_to_the_annotators_folder_of_a_comfyui_models_folder(
    repo: Path, tmp_path: Path, server: LoopbackServer
) -> None:
    """The backend reads estimators from `annotators/` of every models folder, whatever its layout
    (backend/loading/annotators.py): install.py puts them there."""
    comfy = tmp_path / "ComfyUI" / "models"
    (comfy / "clip_vision").mkdir(parents=True)
    (comfy / "unet").mkdir()
    args = ["--models", "guidance", "--models-dir", str(comfy), "--mirror", server.url]
    assert models_step(repo, *args) == EXIT_OK
    assert (comfy / "annotators" / "sk_model.pth").is_file()
    assert (comfy / "clip_vision" / ENCODER / "config.json").is_file()


def test_an_unknown_name_lists_the_families_and_the_addons(
    repo: Path, server: LoopbackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["--models", "sd15,guidence", "--skip-plugin", "--mirror", server.url], repo=repo)
    assert stop.value.code == EXIT_USAGE
    captured = capsys.readouterr()
    assert (
        "unknown model set 'guidence': choose from sd15, sdxl, all; add-ons, on top of those: guidance"
        in captured.err
    )
    assert captured.out == "" and server.requests() == []


# --- the manifest's rules -----------------------------------------------------------------------------------


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_choosing_sets_and_addons(tmp_path: Path, files: dict[str, bytes]) -> None:
    manifest = load_manifest(write(tmp_path, addon_manifest(files)))
    ids = lambda choice: [m.id for m in manifest.chosen_entries(manifest.choose(choice))]  # noqa: E731
    assert ids(None) == ["ckpt", "lcm"]
    assert ids("sd15,guidance") == ids("guidance") == ["ckpt", "lcm", "canny", "ipa", "lineart", "encoder"]
    assert ids("sdxl,guidance") == ["xl-ckpt", "xl-ipa", "lineart", "encoder"]
    assert ids("sdxl") == ["xl-ckpt"]
    assert ids("all") == ids("sdxl,sd15,guidance") == [m.id for m in manifest.models]
    assert manifest.choose("guidance").families == ("sd15",)
    assert manifest.choose_families("sdxl,guidance") == ["sdxl"]
    with pytest.raises(
        UnknownModelSetError, match="--models needs a model set: one or more of sd15, sdxl, all; "
    ):
        manifest.choose(" , ")


def test_a_manifest_without_addons_chooses_as_before(tmp_path: Path, files: dict[str, bytes]) -> None:
    data = addon_manifest(files)
    del data["addons"]
    data["models"] = [{k: v for k, v in m.items() if k != "addon"} for m in data["models"]]
    manifest = load_manifest(write(tmp_path, data))
    assert manifest.addons == {}
    assert manifest.choose(None).addons == () and manifest.choose("all").addons == ()
    everything_sd15 = [
        "ckpt",
        "lcm",
        "canny",
        "ipa",
        "lineart",
        "encoder",
    ]  # add-on entries are plain ones now
    assert [m.id for m in manifest.chosen_entries(manifest.choose(None))] == everything_sd15
    with pytest.raises(
        UnknownModelSetError, match=r"unknown model set 'guidance': choose from sd15, sdxl, all$"
    ):
        manifest.choose("guidance")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        ("addon without table", "add-on 'guidance', not one of the manifest's add-ons (it has none)"),
        ("unknown addon", "add-on 'extras', not one of the manifest's add-ons (guidance)"),
        ("addon named like a family", "add-on name 'sdxl' must be a plain identifier"),
        ("addon called all", "add-on name 'all' must be a plain identifier"),
        ("addons not a table", "`addons` must map each add-on's name"),
        ("unknown family in a list", "family 'sd3', not one of the manifest's families"),
        ("empty family list", "`family` must be a family's name or a list of them"),
        ("one file twice", "models 'ipa' and 'ipa-again' are both ipadapter/ip-adapter_sd15.safetensors"),
    ],
)
def test_invalid_addon_manifests_are_refused(
    tmp_path: Path, files: dict[str, bytes], mutate: str, message: str
) -> None:
    data = addon_manifest(files)
    models = {m["id"]: m for m in data["models"]}
    if mutate == "addon without table":
        del data["addons"]
    elif mutate == "unknown addon":
        models["ipa"]["addon"] = "extras"
    elif mutate == "addon named like a family":
        data["addons"]["sdxl"] = {"label": "x"}
    elif mutate == "addon called all":
        data["addons"]["all"] = {"label": "x"}
    elif mutate == "addons not a table":
        data["addons"] = ["guidance"]
    elif mutate == "unknown family in a list":
        models["encoder"]["family"] = ["sd15", "sd3"]
    elif mutate == "empty family list":
        models["encoder"]["family"] = []
    elif mutate == "one file twice":  # the same file again for the other family: one entry must serve both
        data["models"].append({**models["ipa"], "id": "ipa-again", "family": "sdxl"})
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_manifest(write(tmp_path, data))


# --- the real manifest --------------------------------------------------------------------------------------


def test_the_real_guidance_addon() -> None:
    manifest = load_manifest(REPO / "models" / "manifest.json")
    assert list(manifest.addons) == ["guidance"] and manifest.addons["guidance"].description
    default = manifest.chosen_entries(manifest.choose(None))
    assert default and all(m.addon is None for m in default)  # the default download has no add-on
    guidance = [m for m in manifest.models if m.addon is not None]
    assert {m.addon for m in guidance} == {"guidance"}
    for entry in guidance:
        assert entry.licence and entry.source and entry.description and not entry.required, entry.id
        for file in entry.files:
            assert file.url.startswith("https://huggingface.co/") and file.url.endswith("/" + file.name)
            assert file.sha256 is None and file.planned_size > 0, (entry.id, file.name)
    # The shared files are one entry each, for both families.
    shared = {m.id: m for m in guidance if len(m.families) > 1}
    assert {m.kind for m in shared.values()} == {"clip_vision", "annotators"}
    assert all(m.families == ("sd15", "sdxl") for m in shared.values())
    encoder = next(m for m in shared.values() if m.kind == "clip_vision")
    assert encoder.is_folder and sorted(f.name for f in encoder.files) == ["config.json", "model.safetensors"]
    depth = next(m for m in shared.values() if m.is_folder and m.kind == "annotators")
    assert depth.name == "depth-anything-small-hf"
    assert sorted(f.name for f in depth.files) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert any(m.kind == "annotators" and m.name == "sk_model.pth" for m in shared.values())
    # `guidance` alone: SD1.5's base set and its guidance; the encoder (2.5 GB) makes it the heavier part.
    chosen = manifest.chosen_entries(manifest.choose("guidance"))
    assert chosen == manifest.chosen_entries(manifest.choose("sd15,guidance"))
    assert [m for m in chosen if m.addon is None] == default
    assert 5e9 < sum(m.planned_size for m in chosen if m.addon) < 10e9
    # Every layout keeps the estimators in annotators/, where the backend reads them.
    assert manifest.layout["annotators"] == "annotators"
    assert all(kinds["annotators"] == ["annotators"] for kinds in manifest.foreign_layouts.values())


def test_each_sd15_controlnet_kind_gets_its_own_file() -> None:
    """With the base set and the guidance add-on in one folder, a control of each kind that names no model
    picks its own ControlNet 1.1 file by the protocol's model words."""
    manifest = load_manifest(REPO / "models" / "manifest.json")
    sd15 = manifest.chosen_entries(manifest.choose("sd15,guidance"))
    controlnets = sorted(m.name for m in sd15 if m.kind == "controlnet")
    expected = {
        "scribble": "control_v11p_sd15_scribble_fp16.safetensors",
        "pose": "control_v11p_sd15_openpose_fp16.safetensors",
        "canny": "control_v11p_sd15_canny_fp16.safetensors",
        "depth": "control_v11f1p_sd15_depth_fp16.safetensors",
        "lineart": "control_v11p_sd15_lineart_fp16.safetensors",
        "softedge": "control_v11p_sd15_softedge_fp16.safetensors",
        "normal": "control_v11p_sd15_normalbae_fp16.safetensors",
        "tile": "control_v11f1e_sd15_tile_fp16.safetensors",
    }
    assert set(expected) <= set(CONTROL_KINDS) and sorted(expected.values()) == controlnets
    for kind, name in expected.items():
        assert pick_controlnet(controlnets, kind) == name, kind
