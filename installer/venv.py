"""The backend's virtual environment: pick the torch build for this machine, create the venv, install.

Torch comes first, from the index that carries the right build, so that `pip install -e .` of the
backend then finds torch already satisfied instead of pulling the default build.
"""

from __future__ import annotations

import hashlib
import json
import platform as platform_module
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from installer.report import Reporter

TORCH_VERSION = "2.13.0"
FLAVOURS = ("cpu", "cuda", "rocm", "mps")
# Where each build of torch comes from. CPU and Apple (MPS) builds are the default ones on PyPI; the
# CUDA and ROCm builds live on PyTorch's own package index (one index per CUDA/ROCm release; override
# with --torch-index-url when your driver needs another one).
TORCH_INDEX_URLS: dict[str, str | None] = {
    "cpu": None,
    "mps": None,
    "cuda": "https://download.pytorch.org/whl/cu128",
    "rocm": "https://download.pytorch.org/whl/rocm6.4",
}
STATE_FILE = "krita-live-diffusion-venv.json"
NO_DEPS_REQUIREMENTS = "requirements-nodeps.txt"
STEP = "venv"

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def default_runner(command: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True)


@dataclass(frozen=True)
class FlavourChoice:
    flavour: str
    reason: str


def detect_flavour(
    system: str | None = None,
    machine: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    run: Runner = default_runner,
) -> FlavourChoice:
    """CUDA if nvidia-smi lists a GPU, ROCm if rocminfo lists a gfx agent, MPS on Apple silicon, else CPU."""
    system = system or platform_module.system()
    machine = (machine or platform_module.machine()).lower()
    if system == "Darwin":
        if machine in ("arm64", "aarch64"):
            return FlavourChoice("mps", "Apple silicon (Metal)")
        return FlavourChoice("cpu", "Intel Mac: no GPU build of torch")
    if which("nvidia-smi") and _succeeds(run, ["nvidia-smi", "-L"], "GPU"):
        return FlavourChoice("cuda", "nvidia-smi lists an NVIDIA GPU")
    if system == "Linux" and which("rocminfo") and _succeeds(run, ["rocminfo"], "gfx"):
        return FlavourChoice("rocm", "rocminfo lists an AMD GPU")
    return FlavourChoice("cpu", "no NVIDIA/AMD GPU found")


def _succeeds(run: Runner, command: list[str], marker: str) -> bool:
    try:
        result = run(command)
    except OSError:
        return False
    return result.returncode == 0 and marker in (result.stdout or "")


def venv_python(venv: Path) -> Path:
    windows = venv / "Scripts" / "python.exe"
    return windows if sys.platform.startswith("win") or windows.exists() else venv / "bin" / "python"


def torch_install_command(python: Path, flavour: str, index_url: str | None = None) -> list[str]:
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", f"torch=={TORCH_VERSION}"]
    index = index_url or TORCH_INDEX_URLS[flavour]
    if index:
        # PyTorch's index also carries torch's own dependencies, so it replaces PyPI for this one command.
        command += ["--index-url", index]
    return command


def backend_install_command(python: Path, repo: Path) -> list[str]:
    return [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-e", str(repo)]


def no_deps_install_command(python: Path, repo: Path) -> list[str] | None:
    """The packages installed without their declared dependencies (the file says why); None without one."""
    requirements = repo / NO_DEPS_REQUIREMENTS
    if not requirements.is_file():
        return None
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    return [*pip, "--no-deps", "-r", str(requirements)]


def _wanted_state(repo: Path, flavour: str, index_url: str | None) -> dict:
    pyproject, no_deps = repo / "pyproject.toml", repo / NO_DEPS_REQUIREMENTS
    digest = hashlib.sha256(pyproject.read_bytes()).hexdigest() if pyproject.is_file() else None
    state = {"torch": TORCH_VERSION, "flavour": flavour, "index_url": index_url, "pyproject_sha256": digest}
    if no_deps.is_file():
        state["no_deps_sha256"] = hashlib.sha256(no_deps.read_bytes()).hexdigest()
    return state


def required_python(repo: Path) -> tuple[int, int] | None:
    """The minimum from pyproject's `requires-python = ">=X.Y"` (tomllib is not in Python 3.10)."""
    try:
        text = (repo / "pyproject.toml").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    match = re.search(r'^requires-python\s*=\s*["\']>=\s*(\d+)\.(\d+)', text, re.MULTILINE)
    return (int(match.group(1)), int(match.group(2))) if match else None


def python_version(run: Runner, python: Path) -> tuple[int, int] | None:
    try:
        result = run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    except OSError:
        return None
    major, _, minor = (result.stdout or "").strip().partition(".")
    if result.returncode != 0 or not (major.isdigit() and minor.isdigit()):
        return None
    return int(major), int(minor)


def _read_state(venv: Path) -> dict | None:
    try:
        return json.loads((venv / STATE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def ensure_venv(
    venv: Path,
    repo: Path,
    flavour: FlavourChoice,
    reporter: Reporter,
    *,
    index_url: str | None = None,
    offline: bool = False,
    base_python: Path | None = None,
    run: Runner = default_runner,
) -> bool:
    """Create or update the venv. Returns True when it is ready; reports a failure otherwise.

    `base_python` creates the venv (default: the interpreter running install.py)."""
    python = venv_python(venv)
    wanted = _wanted_state(repo, flavour.flavour, index_url)
    if wanted["pyproject_sha256"] is None:
        reporter.fail(STEP, f"{repo / 'pyproject.toml'} not found: nothing to install")
        return False
    if python.exists() and _read_state(venv) == wanted and _imports_work(run, python):
        reporter.info(STEP, f"up to date ({venv}, torch {TORCH_VERSION} {flavour.flavour})")
        return True
    if offline:
        reporter.fail(STEP, f"{venv} needs installing or updating, which needs the network (--offline given)")
        return False
    base = base_python or Path(sys.executable)
    interpreter = python if python.exists() else base
    needed, have = required_python(repo), python_version(run, interpreter)
    if needed and have and have < needed:
        reporter.fail(
            STEP,
            f"the backend needs Python {needed[0]}.{needed[1]} or newer, but {interpreter} is "
            f"{have[0]}.{have[1]}: run install.py with a newer Python or pass --python "
            + ("(and delete the old venv)" if python.exists() else ""),
        )
        return False
    if not python.exists():
        result = run([str(base), "-m", "venv", str(venv)])
        if result.returncode != 0 or not python.exists():
            reporter.fail(STEP, f"creating {venv} with {base} failed: {(result.stderr or '').strip()[-800:]}")
            return False
        reporter.info(STEP, f"created {venv} with {base}")
    reporter.info(
        STEP, f"torch {TORCH_VERSION} for {flavour.flavour} ({flavour.reason}): installing, may take a while"
    )
    steps = [
        (f"torch {TORCH_VERSION}", torch_install_command(python, flavour.flavour, index_url)),
        ("backend dependencies", backend_install_command(python, repo)),
        ("packages without their dependencies", no_deps_install_command(python, repo)),
    ]
    for label, command in [(label, command) for label, command in steps if command is not None]:
        result = run(command)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout or "").strip()[-1500:]
            reporter.fail(STEP, f"installing {label} failed:\n{tail}\n    command: {' '.join(command)}")
            return False
        reporter.info(STEP, f"installed {label}")
    (venv / STATE_FILE).write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return True


def _imports_work(run: Runner, python: Path) -> bool:
    """A cheap health check that the venv still holds what we installed."""
    result = run(
        [
            str(python),
            "-I",
            "-c",
            "import importlib.util as u, sys; sys.exit(0 if u.find_spec('torch') "
            "and u.find_spec('backend') and u.find_spec('websockets') else 1)",
        ]
    )
    return result.returncode == 0
