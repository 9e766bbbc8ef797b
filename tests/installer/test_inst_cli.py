"""install.py as a painter runs it: a subprocess of a standard-library-only interpreter (-I -S: no
site-packages at all), in a copy of the repo, with a throw-away HOME and no network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from installer_testkit import REPO

from installer import cli
from installer.report import EXIT_MODELS_MISSING, EXIT_OK


def run_install(repo: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "KRITA_LIVE_DIFFUSION"))}
    env["HOME"] = str(home)
    command = [sys.executable, "-I", "-S", str(repo / "install.py"), *args]
    return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=120)


def test_readme_command_offline_reaches_the_model_step_and_stops_with_models_missing(
    fake_repo: Path, tmp_path: Path, websockets_venv: Path
) -> None:
    home, krita, models = tmp_path / "home", tmp_path / "krita", tmp_path / "models"
    home.mkdir()
    result = run_install(
        fake_repo,
        home,
        "--skip-venv",
        "--offline",
        "--krita-dir",
        str(krita),
        "--models-dir",
        str(models),
        "--venv",
        str(websockets_venv),
    )
    out = result.stdout
    assert result.returncode == EXIT_MODELS_MISSING, out + result.stderr
    assert "venv: skipped (--skip-venv)" in out
    assert f"plugin: installed to {krita / 'pykrita' / 'krita_live_diffusion'}" in out
    assert "models: 0 present, 5 missing" in out and "5 model file(s) missing (4 required)" in out
    assert f"put it at: {models / 'checkpoints' / 'tiny_checkpoint.safetensors'}" in out
    assert f"put it at: {models / 'vae_approx' / 'taesd_decoder.pth'}" in out
    assert "from:      http://127.0.0.1:9/org/models/resolve/main/tiny_checkpoint.safetensors" in out
    python = websockets_venv / "bin" / "python"
    assert f"start the backend with: cd {fake_repo} && {python} -m backend" in out
    assert "4 required model file(s) are missing" in out
    # The Krita side is in place in the layout Krita expects.
    assert (krita / "pykrita" / "krita_live_diffusion.desktop").is_file()
    assert (krita / "pykrita" / "krita_live_diffusion" / "vendor" / "websockets" / "__init__.py").is_file()
    assert b"enable_krita_live_diffusion=true" in (home / ".config" / "kritarc").read_bytes()


def test_run_starts_the_backend_even_with_models_missing(
    fake_repo: Path, tmp_path: Path, websockets_venv: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = run_install(
        fake_repo, home, "--skip-venv", "--skip-plugin", "--offline", "--run", "--venv", str(websockets_venv)
    )
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert "model file(s) missing" in result.stdout
    assert "starting the backend" in result.stdout and "fake backend up" in result.stdout


def test_uninstall_from_the_command_line(fake_repo: Path, tmp_path: Path, websockets_venv: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    run_install(fake_repo, home, "--skip-venv", "--skip-models", "--offline", "--venv", str(websockets_venv))
    pykrita = home / ".local" / "share" / "krita" / "pykrita"
    assert (pykrita / "krita_live_diffusion").is_dir()
    result = run_install(fake_repo, home, "--uninstall")
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert list(pykrita.iterdir()) == [] and not (home / ".config" / "kritarc").exists()


def test_help_lists_every_step_flag(fake_repo: Path, tmp_path: Path) -> None:
    result = run_install(fake_repo, tmp_path, "--help")
    assert result.returncode == 0
    for flag in (
        "--krita-dir",
        "--venv",
        "--torch",
        "--models-dir",
        "--mirror",
        "--offline",
        "--skip-venv",
        "--skip-plugin",
        "--skip-models",
        "--run",
        "--uninstall",
        "--purge-models",
        "--verify",
        "--models",
    ):
        assert flag in result.stdout


def test_the_real_plugin_installs_and_imports_outside_krita(tmp_path: Path, websockets_venv: Path) -> None:
    """The repo's own plugin, installed by the repo's own install.py, imports with its protocol copy and
    vendored websockets under the system Python (the one Debian's Krita embeds), with no site-packages."""
    if (
        not (REPO / "krita_plugin" / "krita_live_diffusion.desktop").is_file()
        or not (REPO / "protocol").is_dir()
    ):
        pytest.skip("the plugin or the protocol package is not in this checkout yet")
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    home = tmp_path / "home"
    home.mkdir()
    result = run_install(
        REPO, home, "--skip-venv", "--skip-models", "--offline", "--venv", str(websockets_venv)
    )
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    pykrita = home / ".local" / "share" / "krita" / "pykrita"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])"
        "; sys.path.insert(0, sys.argv[1] + '/krita_live_diffusion/vendor')"
        "; import krita_live_diffusion, krita_live_diffusion.protocol as p, websockets"
        "; assert p.__file__.startswith(sys.argv[1]) and websockets.__file__.startswith(sys.argv[1])"
    )
    check = subprocess.run([python, "-I", "-S", "-c", code, str(pykrita)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_the_start_command_printed_on_windows_pastes_into_cmd() -> None:
    repo = r"C:\Users\Jane Doe\krita-live-diffusion"
    python = repo + r"\.venv\Scripts\python.exe"
    line = cli.start_hint(repo, [python, "-m", "backend"], windows=True)
    # cmd.exe knows only double quotes; single quotes would become part of the path.
    assert line == f'cd /d "{repo}" && "{python}" -m backend'
    assert cli.start_hint(
        "/home/jane/kld", ["/home/jane/kld/.venv/bin/python", "-m", "backend"], windows=False
    ) == ("cd /home/jane/kld && /home/jane/kld/.venv/bin/python -m backend")
