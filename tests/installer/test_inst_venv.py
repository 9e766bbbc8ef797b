"""Torch flavour detection and the venv step, with the commands recorded instead of run."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from installer.report import Reporter
from installer.venv import (
    TORCH_VERSION,
    FlavourChoice,
    backend_install_command,
    detect_flavour,
    ensure_venv,
    required_python,
    torch_install_command,
)


def completed(returncode: int = 0, stdout: str = "", stderr: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], returncode, stdout, stderr)


def fake_system(tools: dict[str, subprocess.CompletedProcess]):
    def which(name: str) -> str | None:
        return f"/usr/bin/{name}" if name in tools else None

    def run(command: Sequence[str]) -> subprocess.CompletedProcess:
        return tools[command[0]]

    return which, run


@pytest.mark.parametrize(
    ("system", "machine", "tools", "expected"),
    [
        ("Linux", "x86_64", {"nvidia-smi": completed(0, "GPU 0: NVIDIA H100 (UUID: x)\n")}, "cuda"),
        ("Linux", "x86_64", {"nvidia-smi": completed(9, "", "NVIDIA-SMI has failed")}, "cpu"),
        ("Linux", "x86_64", {"rocminfo": completed(0, "  Name:                    gfx1100\n")}, "rocm"),
        ("Linux", "x86_64", {"rocminfo": completed(0, "  Name:                    CPU\n")}, "cpu"),
        ("Windows", "AMD64", {"nvidia-smi": completed(0, "GPU 0: NVIDIA GeForce RTX 4090\n")}, "cuda"),
        ("Windows", "AMD64", {}, "cpu"),
        ("Darwin", "arm64", {}, "mps"),
        ("Darwin", "x86_64", {}, "cpu"),
        ("Linux", "x86_64", {}, "cpu"),
    ],
)
def test_detect_flavour(system: str, machine: str, tools: dict, expected: str) -> None:
    which, run = fake_system(tools)
    assert detect_flavour(system, machine, which, run).flavour == expected


def test_torch_commands_pin_the_version_and_pick_the_index() -> None:
    python = Path("/v/bin/python")
    cpu = torch_install_command(python, "cpu")
    assert cpu[-1] == f"torch=={TORCH_VERSION}" and "--index-url" not in cpu  # PyPI's default index
    assert "--index-url" not in torch_install_command(python, "mps")
    cuda = torch_install_command(python, "cuda")
    assert cuda[cuda.index("--index-url") + 1].startswith("https://download.pytorch.org/whl/cu")
    rocm = torch_install_command(python, "rocm")
    assert "rocm" in rocm[rocm.index("--index-url") + 1]
    custom = torch_install_command(python, "cpu", "https://mirror.invalid/simple")
    assert custom[custom.index("--index-url") + 1] == "https://mirror.invalid/simple"


class Recorder:
    """Stands in for subprocess: records pip and venv commands, answers the version and health checks."""

    def __init__(self, healthy: bool = True, fail_on: str | None = None, version: str = "3.11") -> None:
        self.commands: list[list[str]] = []
        self.healthy = healthy
        self.fail_on = fail_on
        self.version = version

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess:
        command = list(command)
        if "-c" in command:
            if "version_info" in command[-1]:
                return completed(0, self.version + "\n")
            return completed(0 if self.healthy else 1)  # the import health check
        self.commands.append(command)
        if command[1:3] == ["-m", "venv"]:
            venv = Path(command[3])
            (venv / "bin").mkdir(parents=True)
            (venv / "bin" / "python").write_text("")
        if self.fail_on and self.fail_on in " ".join(command):
            return completed(1, "", "ERROR: No matching distribution found for torch==9")
        return completed(0)


def make_repo(tmp_path: Path, requires: str = ">=3.11") -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text(f'[project]\nname = "x"\nrequires-python = "{requires}"\n')
    return repo


BASE = Path("/usr/bin/python3.11")


def test_creates_the_venv_installs_torch_first_then_the_backend(tmp_path: Path) -> None:
    repo, venv = make_repo(tmp_path), tmp_path / "venv"
    out = io.StringIO()
    runner = Recorder()
    choice = FlavourChoice("cpu", "test")
    assert ensure_venv(venv, repo, choice, Reporter(out), base_python=BASE, run=runner)
    python = venv / "bin" / "python"
    assert runner.commands == [
        [str(BASE), "-m", "venv", str(venv)],
        torch_install_command(python, "cpu"),
        backend_install_command(python, repo),
    ]
    assert f"venv: created {venv} with {BASE}" in out.getvalue()
    # Second run: nothing to install.
    runner.commands.clear()
    out = io.StringIO()
    assert ensure_venv(venv, repo, choice, Reporter(out), base_python=BASE, run=runner)
    assert runner.commands == [] and "venv: up to date" in out.getvalue()
    # A changed pyproject re-installs (into the same venv), and so does another flavour.
    (repo / "pyproject.toml").write_text((repo / "pyproject.toml").read_text() + "version = '2'\n")
    assert ensure_venv(venv, repo, choice, Reporter(io.StringIO()), base_python=BASE, run=runner)
    assert len(runner.commands) == 2
    assert ensure_venv(venv, repo, FlavourChoice("cuda", "t"), Reporter(io.StringIO()), run=runner)
    assert len(runner.commands) == 4 and "--index-url" in runner.commands[2]


def test_a_broken_venv_is_repaired(tmp_path: Path) -> None:
    repo, venv = make_repo(tmp_path), tmp_path / "venv"
    choice = FlavourChoice("cpu", "test")
    ensure_venv(venv, repo, choice, Reporter(io.StringIO()), run=Recorder())
    runner = Recorder(healthy=False)
    assert ensure_venv(venv, repo, choice, Reporter(io.StringIO()), run=runner)
    assert len(runner.commands) == 2  # torch and the backend again; the venv itself is kept


def test_pip_failure_is_reported_with_its_output(tmp_path: Path) -> None:
    repo, venv = make_repo(tmp_path), tmp_path / "venv"
    reporter = Reporter(io.StringIO())
    runner = Recorder(fail_on="torch==")
    assert not ensure_venv(venv, repo, FlavourChoice("cuda", "t"), reporter, run=runner)
    assert "No matching distribution" in reporter.failures[0]
    assert len(runner.commands) == 2  # venv, torch: the backend is not installed on top of a missing torch


def test_too_old_python_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    repo, venv = make_repo(tmp_path), tmp_path / "venv"
    reporter = Reporter(io.StringIO())
    runner = Recorder(version="3.10")
    assert not ensure_venv(venv, repo, FlavourChoice("cpu", "t"), reporter, base_python=BASE, run=runner)
    assert "needs Python 3.11 or newer" in reporter.failures[0] and "is 3.10" in reporter.failures[0]
    assert runner.commands == [] and not venv.exists()


def test_required_python_is_read_from_pyproject(tmp_path: Path) -> None:
    assert required_python(make_repo(tmp_path, ">=3.12")) == (3, 12)
    assert required_python(tmp_path) is None


def test_offline_cannot_install(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    reporter = Reporter(io.StringIO())
    runner = Recorder()
    assert not ensure_venv(
        tmp_path / "v", repo, FlavourChoice("cpu", "t"), reporter, offline=True, run=runner
    )
    assert "--offline" in reporter.failures[0] and runner.commands == []


def test_missing_pyproject_is_an_error(tmp_path: Path) -> None:
    reporter = Reporter(io.StringIO())
    assert not ensure_venv(tmp_path / "v", tmp_path, FlavourChoice("cpu", "t"), reporter, run=Recorder())
    assert "pyproject.toml not found" in reporter.failures[0]


def test_packages_without_their_dependencies_are_installed_after_the_backend(tmp_path: Path) -> None:
    """requirements-nodeps.txt (spandrel: its torchvision would replace a CPU torch) goes in with --no-deps,
    last; changing it re-installs."""
    from installer.venv import NO_DEPS_REQUIREMENTS, no_deps_install_command

    repo, venv = make_repo(tmp_path), tmp_path / "venv"
    (repo / NO_DEPS_REQUIREMENTS).write_text("spandrel==0.4.2\n")
    runner = Recorder()
    choice = FlavourChoice("cpu", "test")
    assert ensure_venv(venv, repo, choice, Reporter(io.StringIO()), base_python=BASE, run=runner)
    python = venv / "bin" / "python"
    command = no_deps_install_command(python, repo)
    assert command is not None and "--no-deps" in command
    assert runner.commands[-2:] == [backend_install_command(python, repo), command]
    runner.commands.clear()
    (repo / NO_DEPS_REQUIREMENTS).write_text("spandrel==0.4.3\n")
    assert ensure_venv(venv, repo, choice, Reporter(io.StringIO()), base_python=BASE, run=runner)
    assert runner.commands[-1] == command


def test_the_repositorys_no_deps_file_holds_only_pinned_packages() -> None:
    from installer.venv import NO_DEPS_REQUIREMENTS

    lines = (Path(__file__).resolve().parents[2] / NO_DEPS_REQUIREMENTS).read_text().splitlines()
    pins = [line for line in lines if line.strip() and not line.startswith("#")]
    assert pins and all("==" in pin for pin in pins)
