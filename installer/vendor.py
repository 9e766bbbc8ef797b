"""Find a pure-Python copy of `websockets` to vendor into the Krita plugin.

Krita embeds its own Python, which has no `websockets` (and Qt's WebSockets module is not always
built), so the plugin ships the package next to itself. The compiled `speedups` extension is left out:
it is built for the backend's interpreter, not Krita's, and websockets falls back to pure Python without it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from installer.venv import venv_python

PACKAGE = "websockets"
PINNED_VERSION = "17.4"
_COMPILED_SUFFIXES = (".so", ".pyd", ".dylib", ".c")


class VendorError(RuntimeError):
    pass


@dataclass(frozen=True)
class VendorSource:
    """Files to vendor: relative path under vendor/ -> the bytes to write there."""

    files: dict[str, bytes]
    version: str
    origin: str


def is_vendored_file(rel: str) -> bool:
    """Keep pure-Python sources and data; drop caches and the compiled speedups."""
    parts = rel.split("/")
    if "__pycache__" in parts:
        return False
    name = parts[-1]
    return not (name.startswith("speedups") and name.endswith(_COMPILED_SUFFIXES)) and not name.endswith(
        ".pyc"
    )


def site_packages_dirs(venv: Path) -> list[Path]:
    """The site-packages folders of a virtual environment (POSIX and Windows layouts)."""
    found = [*sorted(venv.glob("lib/python3*/site-packages")), venv / "Lib" / "site-packages"]
    return [p for p in found if p.is_dir()]


def from_site_packages(site: Path) -> VendorSource | None:
    package = site / PACKAGE
    if not (package / "__init__.py").is_file():
        return None
    files = {}
    for path in sorted(package.rglob("*")):
        rel = f"{PACKAGE}/{path.relative_to(package).as_posix()}"
        if path.is_file() and is_vendored_file(rel):
            files[rel] = path.read_bytes()
    dist = sorted(site.glob(f"{PACKAGE}-*.dist-info"))
    version = dist[-1].name[len(PACKAGE) + 1 : -len(".dist-info")] if dist else "unknown"
    if dist:
        licence = next((p for p in dist[-1].rglob("LICENSE*") if p.is_file()), None)
        if licence is not None:
            files[f"{PACKAGE}.LICENSE"] = licence.read_bytes()
    return VendorSource(files, version, str(package))


def from_wheel(wheel: Path) -> VendorSource:
    files = {}
    version = wheel.name.split("-")[1] if wheel.name.count("-") >= 2 else "unknown"
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith("/"):
                continue
            if name.startswith(f"{PACKAGE}/") and is_vendored_file(name):
                files[name] = archive.read(name)
            elif ".dist-info/" in name and name.rsplit("/", 1)[-1].startswith("LICENSE"):
                files[f"{PACKAGE}.LICENSE"] = archive.read(name)
    if f"{PACKAGE}/__init__.py" not in files:
        raise VendorError(f"{wheel.name} does not contain the {PACKAGE} package")
    return VendorSource(files, version, str(wheel))


def download_wheel(python: Path) -> VendorSource:
    """`pip download` the pinned wheel with the given interpreter's pip (needs the network)."""
    with tempfile.TemporaryDirectory(prefix="kld-websockets-") as tmp:
        command = [
            str(python),
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
            tmp,
            f"{PACKAGE}=={PINNED_VERSION}",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob(f"{PACKAGE}-*.whl"))
        if result.returncode != 0 or not wheels:
            raise VendorError(
                f"pip download {PACKAGE}=={PINNED_VERSION} failed: {result.stderr.strip()[-500:]}"
            )
        return from_wheel(wheels[0])


def find_websockets(venv: Path | None, offline: bool) -> VendorSource:
    """The backend venv's copy first (same pinned version, no network); else download the wheel."""
    if venv is not None:
        for site in site_packages_dirs(venv):
            source = from_site_packages(site)
            if source is not None:
                return source
    if offline:
        where = f"the virtual environment {venv}" if venv else "no virtual environment"
        raise VendorError(
            f"{PACKAGE} not found in {where} and --offline forbids downloading it: "
            "create the backend venv first (run without --skip-venv) or point --venv at one that has it"
        )
    python = venv_python(venv) if venv else None
    return download_wheel(python if python and python.exists() else Path(sys.executable))
