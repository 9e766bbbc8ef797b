"""The model step end to end (in-process): download through a mirror on loopback, offline reuse,
ComfyUI and A1111 folders, verification, disk space, purge."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path

import pytest
from installer_testkit import TEST_MODELS, LoopbackServer, model_path, write_test_manifest

from installer import cli
from installer.manifest import detect_layout, load_manifest
from installer.report import EXIT_FAILED, EXIT_MODELS_MISSING, EXIT_OK

Usage = namedtuple("Usage", "total used free")
NATIVE_FOLDERS = {
    "checkpoints": "checkpoints",
    "loras": "loras",
    "controlnet": "controlnet",
    "taesd": "vae_approx",
}
COMFY_FOLDERS = NATIVE_FOLDERS
A1111_FOLDERS = {
    "checkpoints": "Stable-diffusion",
    "loras": "Lora",
    "controlnet": "ControlNet",
    "taesd": "VAE-approx",
}


def serve_all(server: LoopbackServer, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        server.add(model_path(name), data)


def place(root: Path, folders: dict[str, str], files: dict[str, bytes], skip: tuple[str, ...] = ()) -> None:
    for _, kind, name, _, _ in TEST_MODELS:
        if name in skip:
            continue
        folder = root / folders[kind]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(files[name])


def models_step(repo: Path, *args: str) -> int:
    return cli.main(["--skip-venv", "--skip-plugin", *args], repo=repo)


def mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_downloads_every_model_then_second_run_changes_nothing(
    fake_repo: Path, server: LoopbackServer, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    serve_all(server, model_files)
    assert models_step(fake_repo, "--mirror", server.url) == EXIT_OK
    out = capsys.readouterr().out
    assert "models: 0 present, 5 missing" in out and "(sha256 verified)" in out
    models = fake_repo / "models"
    for _, kind, name, _, _ in TEST_MODELS:
        assert (models / NATIVE_FOLDERS[kind] / name).read_bytes() == model_files[name]
    assert not list(models.rglob("*.part"))
    assert not (models / "extra_paths.json").exists()  # the repo's own folder needs no extra path
    requests = len(server.requests())
    before = mtimes(models)
    assert models_step(fake_repo, "--mirror", server.url) == EXIT_OK
    assert "models: 5 present, 0 missing" in capsys.readouterr().out
    assert len(server.requests()) == requests and mtimes(models) == before


def test_unverified_downloads_are_reported_loudly(
    fake_repo: Path, server: LoopbackServer, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    write_test_manifest(fake_repo, model_files, with_sha=False)
    serve_all(server, model_files)
    assert models_step(fake_repo, "--mirror", server.url) == EXIT_OK
    out = capsys.readouterr().out
    assert out.count("UNVERIFIED") == len(TEST_MODELS)


def test_mirror_from_environment(
    fake_repo: Path, server: LoopbackServer, model_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_all(server, model_files)
    monkeypatch.setenv("KRITA_LIVE_DIFFUSION_MIRROR", server.url)
    assert models_step(fake_repo) == EXIT_OK
    assert len(server.requests()) == len(TEST_MODELS)


def test_offline_reuses_files_already_in_place_without_any_request(
    fake_repo: Path, server: LoopbackServer, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    place(fake_repo / "models", NATIVE_FOLDERS, model_files)
    assert models_step(fake_repo, "--offline", "--verify", "--mirror", server.url) == EXIT_OK
    assert "models: 5 present, 0 missing" in capsys.readouterr().out
    assert server.requests() == []


def test_offline_with_missing_models_says_what_where_and_from_where(
    fake_repo: Path, server: LoopbackServer, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    place(fake_repo / "models", NATIVE_FOLDERS, model_files, skip=("tiny_checkpoint.safetensors",))
    assert models_step(fake_repo, "--offline", "--mirror", server.url) == EXIT_MODELS_MISSING
    out = capsys.readouterr().out
    target = (fake_repo / "models" / "checkpoints" / "tiny_checkpoint.safetensors").resolve()
    assert "models: 4 present, 1 missing" in out and "offline: downloading nothing" in out
    assert "1 model file(s) missing (1 required)" in out
    assert f"put it at: {target}" in out
    assert "from:      http://127.0.0.1:9/org/models/resolve/main/tiny_checkpoint.safetensors" in out
    assert server.requests() == []


def test_only_optional_models_missing_is_not_an_error(
    fake_repo: Path, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    skip = ("control_v11p_sd15_scribble_fp16.safetensors",)
    place(fake_repo / "models", NATIVE_FOLDERS, model_files, skip=skip)
    assert models_step(fake_repo, "--offline") == EXIT_OK
    assert "(optional;" in capsys.readouterr().out


def test_reuses_a_comfyui_models_folder(
    fake_repo: Path,
    tmp_path: Path,
    server: LoopbackServer,
    model_files: dict[str, bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    comfy = tmp_path / "ComfyUI" / "models"
    place(comfy, COMFY_FOLDERS, model_files)
    (comfy / "clip_vision").mkdir()
    (comfy / "upscale_models").mkdir()
    assert (
        models_step(fake_repo, "--offline", "--verify", "--models-dir", str(comfy), "--mirror", server.url)
        == 0
    )
    out = capsys.readouterr().out
    assert "(ComfyUI layout)" in out and "models: 5 present, 0 missing" in out
    extra = json.loads((fake_repo / "models" / "extra_paths.json").read_text())
    assert extra == {"paths": [str(comfy.resolve())]}
    assert server.requests() == []
    # Later runs without --models-dir still find the files through extra_paths.json.
    assert models_step(fake_repo, "--offline") == EXIT_OK
    assert "models: 5 present, 0 missing" in capsys.readouterr().out


def test_reuses_an_a1111_folder_and_downloads_the_rest_into_its_layout(
    fake_repo: Path,
    tmp_path: Path,
    server: LoopbackServer,
    model_files: dict[str, bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    a1111 = tmp_path / "stable-diffusion-webui" / "models"
    place(a1111, A1111_FOLDERS, model_files, skip=("taesd_decoder.pth",))
    serve_all(server, model_files)
    assert models_step(fake_repo, "--models-dir", str(a1111), "--mirror", server.url) == EXIT_OK
    out = capsys.readouterr().out
    assert "(AUTOMATIC1111 layout)" in out and "models: 4 present, 1 missing" in out
    assert (a1111 / "VAE-approx" / "taesd_decoder.pth").read_bytes() == model_files["taesd_decoder.pth"]
    assert [path for path, _ in server.requests()] == [model_path("taesd_decoder.pth")]
    extra = json.loads((fake_repo / "models" / "extra_paths.json").read_text())
    assert extra == {"paths": [str(a1111.resolve())]}


def test_extra_paths_keeps_entries_already_there(fake_repo: Path, tmp_path: Path, model_files: dict) -> None:
    (fake_repo / "models" / "extra_paths.json").write_text(json.dumps({"paths": ["/elsewhere"]}))
    comfy = tmp_path / "comfy"
    place(comfy, COMFY_FOLDERS, model_files)
    models_step(fake_repo, "--offline", "--models-dir", str(comfy))
    extra = json.loads((fake_repo / "models" / "extra_paths.json").read_text())
    assert extra == {"paths": ["/elsewhere", str(comfy.resolve())]}


def test_layout_detection(tmp_path: Path) -> None:
    from installer_testkit import REPO

    manifest = load_manifest(REPO / "models" / "manifest.json")
    for name, folders in (
        ("a1111", ["Stable-diffusion", "Lora", "VAE-approx"]),
        ("comfyui", ["checkpoints", "clip_vision"]),
        ("native", ["checkpoints", "loras"]),
    ):
        root = tmp_path / name
        for folder in folders:
            (root / folder).mkdir(parents=True)
        assert detect_layout(root, manifest) == name
    assert detect_layout(tmp_path / "does-not-exist", manifest) == "native"


def test_verify_flags_a_corrupt_file_and_does_not_overwrite_it(
    fake_repo: Path, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    place(fake_repo / "models", NATIVE_FOLDERS, model_files)
    bad = fake_repo / "models" / "loras" / "lcm-lora-sdv1-5.safetensors"
    bad.write_bytes(b"x" * len(model_files[bad.name]))  # same size, wrong content
    assert models_step(fake_repo, "--offline") == EXIT_OK  # without --verify only sizes are compared
    assert models_step(fake_repo, "--offline", "--verify") == EXIT_MODELS_MISSING
    out = capsys.readouterr().out
    assert "sha256 mismatch" in out and "replace it or delete it" in out
    assert bad.read_bytes() == b"x" * len(model_files[bad.name])


def test_not_enough_disk_space_stops_before_downloading(
    fake_repo: Path,
    server: LoopbackServer,
    model_files: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    serve_all(server, model_files)
    monkeypatch.setattr("shutil.disk_usage", lambda path: Usage(10**12, 10**12 - 10_000, 10_000))
    assert models_step(fake_repo, "--mirror", server.url) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "not enough disk space" in out and "put it at:" in out
    assert server.requests() == []


def test_a_failed_download_is_listed_as_missing(
    fake_repo: Path, server: LoopbackServer, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    serve_all(server, {k: v for k, v in model_files.items() if k != "tiny_checkpoint.safetensors"})
    assert models_step(fake_repo, "--mirror", server.url) == EXIT_MODELS_MISSING
    out = capsys.readouterr().out
    assert "not found (HTTP 404)" in out and "1 model file(s) missing (1 required)" in out
    assert not list((fake_repo / "models").rglob("tiny_checkpoint*"))


def test_purge_deletes_downloads_but_never_reused_files(
    fake_repo: Path, tmp_path: Path, server: LoopbackServer, model_files: dict[str, bytes]
) -> None:
    a1111 = tmp_path / "a1111"
    place(a1111, A1111_FOLDERS, model_files, skip=("taesd_decoder.pth",))
    serve_all(server, model_files)
    models_step(fake_repo, "--models-dir", str(a1111), "--mirror", server.url)
    assert (
        cli.main(["--uninstall", "--purge-models", "--krita-dir", str(tmp_path / "k")], repo=fake_repo) == 0
    )
    assert not (a1111 / "VAE-approx" / "taesd_decoder.pth").exists()
    assert (a1111 / "VAE-approx" / "taesd_encoder.pth").exists()
    assert (a1111 / "Stable-diffusion" / "tiny_checkpoint.safetensors").exists()


def test_the_real_manifest_is_complete_and_consistent() -> None:
    from installer_testkit import REPO

    manifest = load_manifest(REPO / "models" / "manifest.json")
    kinds_of_files = {"checkpoints", "loras", "controlnet", "vae", "taesd", "embeddings", "upscale_models",
                      "ipadapter", "clip_vision", "annotators"}  # fmt: skip
    assert set(manifest.layout) == kinds_of_files
    assert set(manifest.foreign_layouts) == {"comfyui", "a1111"}
    assert manifest.default_families == ["sd15"]
    default = manifest.entries(manifest.default_families)
    kinds = {m.kind for m in default}
    assert {"checkpoints", "loras", "controlnet", "taesd"} <= kinds
    files = {m.name for m in default}
    assert {"lcm-lora-sdv1-5.safetensors", "taesd_encoder.pth", "taesd_decoder.pth"} <= files
    assert any("scribble" in f for f in files) and any("openpose" in f for f in files)
    for model in manifest.models:
        assert model.licence and model.description and model.source, model.id
        for part in model.files:
            assert part.url.startswith("https://"), part.url
            assert part.sha256 is None or len(part.sha256) == 64
            assert part.size is not None or part.approx_size, (model.id, part.name)


def test_files_in_subfolders_and_an_application_folder_are_found(
    fake_repo: Path, tmp_path: Path, model_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "ComfyUI"
    comfy = app / "models"
    place(comfy, COMFY_FOLDERS, model_files, skip=("tiny_checkpoint.safetensors",))
    nested = comfy / "checkpoints" / "SD1.5"
    nested.mkdir(parents=True)
    (nested / "tiny_checkpoint.safetensors").write_bytes(model_files["tiny_checkpoint.safetensors"])
    # --models-dir names the application folder; its models/ subfolder is what gets used and recorded.
    assert models_step(fake_repo, "--offline", "--verify", "--models-dir", str(app)) == EXIT_OK
    out = capsys.readouterr().out
    assert "models: 5 present, 0 missing" in out and str(nested / "tiny_checkpoint.safetensors") in out
    assert json.loads((fake_repo / "models" / "extra_paths.json").read_text()) == {"paths": [str(comfy)]}


def test_an_unresolvable_host_is_tried_once_then_skipped(fake_repo: Path) -> None:
    """Offline machines must reach the 'models missing' message at once, not after minutes of retries."""
    import http.client
    import io
    import socket
    import urllib.error

    from installer.download import Downloader
    from installer.models import ModelOptions, run_models_step
    from installer.report import Reporter

    attempts: list[str] = []

    def offline_opener(request: object, timeout: float | None = None) -> http.client.HTTPResponse:
        attempts.append(getattr(request, "full_url", str(request)))
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    out = io.StringIO()
    manifest = load_manifest(fake_repo / "models" / "manifest.json")
    downloader = Downloader(opener=offline_opener, sleep=lambda _: None, stream=out)
    statuses = run_models_step(fake_repo, manifest, ModelOptions(), downloader, Reporter(stream=out))
    assert len(attempts) == 1
    missing = [s for s in statuses if s.problem]
    assert len(missing) == len(TEST_MODELS)
    assert "is this machine offline?" in out.getvalue()
    assert all("cannot" in s.problem for s in missing)
