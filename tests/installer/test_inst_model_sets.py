"""`install.py --models`: which model sets are fetched (SD1.5 by default, SDXL, both), the disk-space plan of
the chosen set, and folder entries (a diffusers ControlNet: weights + config.json) fetched file by file."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path

import pytest
from installer_testkit import (
    SDXL_CONTROLNET,
    SDXL_CONTROLNET_FILES,
    TEST_MODELS,
    TEST_SDXL_MODELS,
    LoopbackServer,
    model_path,
    sdxl_names,
    write_test_manifest,
)

from installer import cli
from installer.download import DISK_MARGIN
from installer.report import EXIT_FAILED, EXIT_MODELS_MISSING, EXIT_OK, EXIT_USAGE

Usage = namedtuple("Usage", "total used free")
FOLDERS = {"checkpoints": "checkpoints", "loras": "loras", "controlnet": "controlnet", "taesd": "vae_approx"}
SD15_NAMES = [name for _, _, name, _, _ in TEST_MODELS]
CONTROLNET_WEIGHTS = f"{SDXL_CONTROLNET}/diffusion_pytorch_model.safetensors"
CONTROLNET_CONFIG = f"{SDXL_CONTROLNET}/config.json"


def models_step(repo: Path, *args: str) -> int:
    return cli.main(["--skip-venv", "--skip-plugin", *args], repo=repo)


def serve(server: LoopbackServer, files: dict[str, bytes], names: list[str]) -> None:
    for name in names:
        server.add(model_path(name), files[name])


def requested(server: LoopbackServer) -> list[str]:
    return sorted(path.removeprefix(model_path("")) for path, _ in server.requests())


def place_sdxl(root: Path, files: dict[str, bytes], controlnet_parent: str = "controlnet") -> None:
    """The SDXL set as a painter's ComfyUI folder holds it: the ControlNet as its diffusers folder."""
    for _, kind, name, _, _ in TEST_SDXL_MODELS:
        (root / FOLDERS[kind]).mkdir(parents=True, exist_ok=True)
        (root / FOLDERS[kind] / name).write_bytes(files[name])
    folder = root / controlnet_parent / SDXL_CONTROLNET
    folder.mkdir(parents=True, exist_ok=True)
    for name, _ in SDXL_CONTROLNET_FILES:
        (folder / name).write_bytes(files[f"{SDXL_CONTROLNET}/{name}"])


def test_models_sdxl_fetches_the_sdxl_set_only_and_the_controlnet_as_a_folder(
    fake_repo: Path, server: LoopbackServer, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    serve(server, model_files, SD15_NAMES + sdxl_names())
    assert models_step(fake_repo, "--models", "sdxl", "--mirror", server.url) == EXIT_OK
    out = capsys.readouterr().out
    assert "models: model set(s): sdxl (SDXL); also available: sd15" in out
    assert "models: 0 present, 4 missing" in out  # 3 files and 1 folder
    assert requested(server) == sorted(sdxl_names())
    models = fake_repo / "models"
    for _, kind, name, _, _ in TEST_SDXL_MODELS:
        assert (models / FOLDERS[kind] / name).read_bytes() == model_files[name]
    folder = models / "controlnet" / SDXL_CONTROLNET
    assert sorted(p.name for p in folder.iterdir()) == sorted(name for name, _ in SDXL_CONTROLNET_FILES)
    for name, _ in SDXL_CONTROLNET_FILES:
        assert (folder / name).read_bytes() == model_files[f"{SDXL_CONTROLNET}/{name}"]
    assert f"downloaded {CONTROLNET_CONFIG} to {folder / 'config.json'} (sha256 verified)" in out
    assert not (models / "checkpoints" / "tiny_checkpoint.safetensors").exists()
    # Everything is in place: a second run asks for nothing.
    before = len(server.requests())
    assert models_step(fake_repo, "--models", "sdxl", "--mirror", server.url) == EXIT_OK
    out = capsys.readouterr().out
    assert "models: 4 present, 0 missing" in out and f"ok: {SDXL_CONTROLNET} ({folder})" in out
    assert len(server.requests()) == before


def test_the_default_set_is_unchanged_and_does_not_touch_sdxl(
    fake_repo: Path, server: LoopbackServer, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    serve(server, model_files, SD15_NAMES + sdxl_names())
    assert models_step(fake_repo, "--mirror", server.url) == EXIT_OK
    out = capsys.readouterr().out
    assert "model set(s): sd15 (SD 1.5); also available: sdxl (--models sd15,sdxl or all)" in out
    assert requested(server) == sorted(SD15_NAMES)
    assert not (fake_repo / "models" / "controlnet" / SDXL_CONTROLNET).exists()


@pytest.mark.parametrize("choice", ["sd15,sdxl", "all", "SDXL, sd15", "sdxl,all"])
def test_both_sets(
    fake_repo: Path, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str], choice: str
) -> None:
    models = fake_repo / "models"
    for _, kind, name, _, _ in TEST_MODELS:
        (models / FOLDERS[kind]).mkdir(parents=True, exist_ok=True)
        (models / FOLDERS[kind] / name).write_bytes(model_files[name])
    place_sdxl(models, model_files)
    assert models_step(fake_repo, "--offline", "--verify", "--models", choice) == EXIT_OK
    out = capsys.readouterr().out
    assert "model set(s): sd15 (SD 1.5), sdxl (SDXL)\n" in out and "models: 9 present, 0 missing" in out


def test_an_unknown_set_stops_before_any_step(
    fake_repo: Path, server: LoopbackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["--models", "sdxxl", "--skip-plugin", "--mirror", server.url], repo=fake_repo)
    assert stop.value.code == EXIT_USAGE
    captured = capsys.readouterr()
    assert "unknown model set 'sdxxl': choose from sd15, sdxl, all" in captured.err
    assert captured.out == "" and server.requests() == []  # not even the venv step ran
    with pytest.raises(SystemExit):
        cli.main(["--models", ",", "--skip-venv", "--skip-plugin"], repo=fake_repo)
    assert "--models needs a model set" in capsys.readouterr().err


def test_the_disk_space_plan_covers_the_chosen_set_across_folders(
    fake_repo: Path,
    server: LoopbackServer,
    model_files: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    serve(server, model_files, SD15_NAMES + sdxl_names())
    sdxl_total = sum(len(model_files[name]) for name in sdxl_names())
    sd15_total = sum(len(model_files[name]) for name in SD15_NAMES)
    biggest_folder = len(model_files["tiny_xl_checkpoint.safetensors"])
    assert biggest_folder < sd15_total < sdxl_total  # one byte short of the SDXL set, room for each folder
    free = DISK_MARGIN + sdxl_total - 1
    monkeypatch.setattr("shutil.disk_usage", lambda path: Usage(10**12, 10**12 - free, free))
    assert models_step(fake_repo, "--models", "sdxl", "--mirror", server.url) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "not enough disk space" in out and server.requests() == []
    assert f"put it at: {fake_repo / 'models' / 'controlnet' / SDXL_CONTROLNET} (a folder of 2 files)" in out
    # The same disk holds the default set, which is smaller.
    assert models_step(fake_repo, "--mirror", server.url) == EXIT_OK
    assert requested(server) == sorted(SD15_NAMES)


def test_a_half_fetched_folder_gets_only_what_it_lacks(
    fake_repo: Path, server: LoopbackServer, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    serve(server, model_files, [n for n in sdxl_names() if n != CONTROLNET_CONFIG])
    # The config is missing upstream: the weights arrive, the folder entry stays missing (optional: exit 0).
    assert models_step(fake_repo, "--models", "sdxl", "--mirror", server.url) == EXIT_OK
    out = capsys.readouterr().out
    folder = fake_repo / "models" / "controlnet" / SDXL_CONTROLNET
    assert "1 model file(s) missing (0 required)" in out and "not found (HTTP 404)" in out
    assert f"file:      config.json from http://127.0.0.1:9{model_path(CONTROLNET_CONFIG)}" in out
    assert (folder / "diffusion_pytorch_model.safetensors").is_file() and not (
        folder / "config.json"
    ).exists()
    # Next run: only the config is fetched; the weights already in the folder are kept.
    server.add(model_path(CONTROLNET_CONFIG), model_files[CONTROLNET_CONFIG])
    before = len(server.requests())
    assert models_step(fake_repo, "--models", "sdxl", "--mirror", server.url) == EXIT_OK
    assert "models: 3 present, 1 missing" in capsys.readouterr().out
    assert [path for path, _ in server.requests()[before:]] == [model_path(CONTROLNET_CONFIG)]
    assert (folder / "config.json").read_bytes() == model_files[CONTROLNET_CONFIG]


def test_a_folder_entry_is_found_in_a_comfyui_folder_and_an_incomplete_one_is_not(
    fake_repo: Path, tmp_path: Path, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    comfy = tmp_path / "ComfyUI" / "models"
    place_sdxl(comfy, model_files, controlnet_parent="controlnet/SDXL")  # sorted into a subfolder
    (comfy / "clip_vision").mkdir()
    assert (
        models_step(fake_repo, "--offline", "--verify", "--models", "sdxl", "--models-dir", str(comfy)) == 0
    )
    out = capsys.readouterr().out
    assert "(ComfyUI layout)" in out and "models: 4 present, 0 missing" in out
    assert f"ok: {SDXL_CONTROLNET} ({comfy / 'controlnet' / 'SDXL' / SDXL_CONTROLNET})" in out
    (comfy / "controlnet" / "SDXL" / SDXL_CONTROLNET / "config.json").unlink()
    # Found through extra_paths.json from now on; what is missing goes to the repo's own models folder.
    assert models_step(fake_repo, "--offline", "--models", "sdxl") == EXIT_OK  # optional
    out = capsys.readouterr().out
    assert "models: 3 present, 1 missing" in out
    target = fake_repo.resolve() / "models" / "controlnet" / SDXL_CONTROLNET
    assert f"put it at: {target} (a folder of 2 files)" in out


def test_verify_checks_every_file_of_a_folder(
    fake_repo: Path, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    models = fake_repo / "models"
    place_sdxl(models, model_files)
    config = models / "controlnet" / SDXL_CONTROLNET / "config.json"
    config.write_bytes(b"x" * len(model_files[CONTROLNET_CONFIG]))
    assert models_step(fake_repo, "--offline", "--models", "sdxl") == EXIT_OK
    assert "models: 4 present, 0 missing" in capsys.readouterr().out  # same size: only --verify can tell
    assert models_step(fake_repo, "--offline", "--verify", "--models", "sdxl") == EXIT_OK
    assert "config.json: sha256 mismatch" in capsys.readouterr().out


def test_unverified_files_of_the_sdxl_set_are_reported_each(
    fake_repo: Path, server: LoopbackServer, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    write_test_manifest(fake_repo, model_files, with_sha=False)
    serve(server, model_files, sdxl_names())
    assert models_step(fake_repo, "--models", "sdxl", "--mirror", server.url) == EXIT_OK
    assert capsys.readouterr().out.count("UNVERIFIED") == len(sdxl_names())


def test_a_required_sdxl_file_missing_offline_exits_3(
    fake_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models_step(fake_repo, "--offline", "--models", "sdxl") == EXIT_MODELS_MISSING
    out = capsys.readouterr().out
    assert "4 model file(s) missing (3 required)" in out
    assert (
        f"file:      diffusion_pytorch_model.safetensors from http://127.0.0.1:9{model_path(CONTROLNET_WEIGHTS)}"
        in out
    )


def test_purge_deletes_the_downloaded_folder_too(
    fake_repo: Path, tmp_path: Path, server: LoopbackServer, model_files: dict[str, bytes]
) -> None:
    serve(server, model_files, sdxl_names())
    models_step(fake_repo, "--models", "sdxl", "--mirror", server.url)
    record = json.loads((fake_repo / "models" / ".downloads.json").read_text())
    folder = fake_repo / "models" / "controlnet" / SDXL_CONTROLNET
    assert record["folders"] == [str(folder)] and len(record["files"]) == len(sdxl_names())
    assert (
        cli.main(["--uninstall", "--purge-models", "--krita-dir", str(tmp_path / "k")], repo=fake_repo) == 0
    )
    assert not folder.exists() and (fake_repo / "models" / "controlnet").is_dir()
    assert not [p for p in (fake_repo / "models").rglob("*") if p.is_file() and p.name != "manifest.json"]
