"""Shared helpers and fixtures for the installer tests: a loopback HTTP file server with Range support and
failure modes, a throw-away copy of the repo with a fake plugin, a throw-away HOME. (A uniquely named module:
other conftest.py files may exist in this repo, so tests import from here, never from conftest.)"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from installer.vendor import VendorSource, from_site_packages, site_packages_dirs  # noqa: E402


@dataclass
class ServedFiles:
    """What the server serves and how it misbehaves; every request is logged."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_once: set[str] = field(default_factory=set)  # send half the body, then drop the connection, once
    statuses: dict[str, list[int]] = field(default_factory=dict)  # answer these codes first, one per request
    ignore_range: set[str] = field(default_factory=set)
    log: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(http.server.BaseHTTPRequestHandler):
    served: ServedFiles  # set on the per-server subclass

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        served = self.served
        range_header = self.headers.get("Range")
        with served.lock:
            served.log.append((self.path, range_header))
            queued = served.statuses.get(self.path)
            status = queued.pop(0) if queued else None
            cut = self.path in served.cut_once
            served.cut_once.discard(self.path)
        if status is not None:
            self.send_error(status)
            return
        data = served.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if range_header and self.path not in served.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if cut:
            # Announce the full length but stop halfway, as a dropped connection does.
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@dataclass
class LoopbackServer:
    url: str
    served: ServedFiles

    def add(self, path: str, data: bytes) -> str:
        self.served.files[path] = data
        return self.url + path

    def requests(self, path: str | None = None) -> list[tuple[str, str | None]]:
        return [entry for entry in self.served.log if path is None or entry[0] == path]


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    served = ServedFiles()
    handler = type("Handler", (_Handler,), {"served": served})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield LoopbackServer(f"http://127.0.0.1:{httpd.server_address[1]}", served)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fixture_bytes(name: str, size: int) -> bytes:
    """Deterministic, incompressible-looking content, different per name."""
    out = bytearray()
    seed = name.encode()
    while len(out) < size:
        seed = hashlib.sha256(seed).digest()
        out += seed
    return bytes(out[:size])


# The test manifest: the real layout part, small fixture files as models. TEST_MODELS is the default set
# (SD1.5); the SDXL set, chosen with --models sdxl, has single files and a folder entry (a diffusers
# ControlNet).
TEST_MODELS = [
    ("ckpt", "checkpoints", "tiny_checkpoint.safetensors", 300_000, True),
    ("lcm", "loras", "lcm-lora-sdv1-5.safetensors", 120_000, True),
    ("scribble", "controlnet", "control_v11p_sd15_scribble_fp16.safetensors", 90_000, False),
    ("taesd-enc", "taesd", "taesd_encoder.pth", 20_000, True),
    ("taesd-dec", "taesd", "taesd_decoder.pth", 20_000, True),
]
TEST_SDXL_MODELS = [
    ("xl-ckpt", "checkpoints", "tiny_xl_checkpoint.safetensors", 400_000, True),
    ("xl-lcm", "loras", "lcm-lora-sdxl.safetensors", 150_000, True),
    ("xl-taesd-enc", "taesd", "taesdxl_encoder.pth", 10_000, True),
]
SDXL_CONTROLNET = "controlnet-scribble-sdxl-1.0"  # a folder entry of kind controlnet
SDXL_CONTROLNET_FILES = [("diffusion_pytorch_model.safetensors", 200_000), ("config.json", 700)]
# Where the manifest says files come from: a closed loopback port, so a missed mirror fails fast, locally.
UPSTREAM = "http://127.0.0.1:9"


def model_path(name: str) -> str:
    """The URL path a test file is served under; `name` is a file name, or folder/file for a folder's file."""
    return f"/org/models/resolve/main/{name}"


def sdxl_names() -> list[str]:
    """The SDXL set's keys in `model_files`: file names, and folder/file for the folder entry's files."""
    singles = [name for _, _, name, _, _ in TEST_SDXL_MODELS]
    return singles + [f"{SDXL_CONTROLNET}/{name}" for name, _ in SDXL_CONTROLNET_FILES]


@pytest.fixture
def model_files() -> dict[str, bytes]:
    files = {name: fixture_bytes(name, size) for _, _, name, size, _ in TEST_MODELS + TEST_SDXL_MODELS}
    for name, size in SDXL_CONTROLNET_FILES:
        files[f"{SDXL_CONTROLNET}/{name}"] = fixture_bytes(f"{SDXL_CONTROLNET}/{name}", size)
    return files


def _single(model_id: str, kind: str, name: str, data: bytes, required: bool, family: str, sha: bool) -> dict:
    return {
        "id": model_id,
        "family": family,
        "kind": kind,
        "file": name,
        "url": UPSTREAM + model_path(name),
        "size": len(data),
        "sha256": sha256(data) if sha else None,
        "licence": "test",
        "required": required,
        "description": f"test {family} {kind}",
    }


def write_test_manifest(repo: Path, files: dict[str, bytes], with_sha: bool = True) -> None:
    real = json.loads((REPO / "models" / "manifest.json").read_text(encoding="utf-8"))
    models = [
        _single(model_id, kind, name, files[name], required, "sd15", with_sha)
        for model_id, kind, name, _, required in TEST_MODELS
    ]
    models += [
        _single(model_id, kind, name, files[name], required, "sdxl", with_sha)
        for model_id, kind, name, _, required in TEST_SDXL_MODELS
    ]
    folder_files = []
    for name, _ in SDXL_CONTROLNET_FILES:
        data = files[f"{SDXL_CONTROLNET}/{name}"]
        folder_files.append(
            {
                "file": name,
                "url": UPSTREAM + model_path(f"{SDXL_CONTROLNET}/{name}"),
                "size": len(data),
                "sha256": sha256(data) if with_sha else None,
            }
        )
    models.append(
        {
            "id": "xl-scribble",
            "family": "sdxl",
            "kind": "controlnet",
            "folder": SDXL_CONTROLNET,
            "files": folder_files,
            "licence": "test",
            "required": False,
            "description": "test sdxl controlnet folder",
        }
    )
    manifest = {
        "version": 1,
        "layout": real["layout"],
        "foreign_layouts": real["foreign_layouts"],
        "families": {
            "sd15": {"label": "SD 1.5", "default": True},
            "sdxl": {"label": "SDXL", "default": False},
        },
        "models": models,
    }
    (repo / "models").mkdir(parents=True, exist_ok=True)
    (repo / "models" / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


# A kritarc as Krita leaves it: several sections, other plugins enabled, escaped and non-UTF-8 bytes.
USER_KRITARC = (
    b"[General]\n"
    b"ColorSpaceModel=RGBA\n"
    b"  odd spacing = kept \n"
    b"\n"
    b"[python]\n"
    b"enable_comics_project_management_tools=false\n"
    b"enable_other_plugin=true\n"
    b"\n"
    b"[MainWindow]\n"
    b"State=@ByteArray(\\0\\0\\0\\xff\\0\\0\\0\\0\\xfd)\n"
    b"caf\xe9=latin-1 bytes stay\n"
)


DESKTOP = """[Desktop Entry]
Type=Service
ServiceTypes=Krita/PythonPlugin
X-KDE-Library=krita_live_diffusion
X-Python-2-Compatible=false
Name=Krita Live Diffusion
"""


@pytest.fixture
def fake_repo(tmp_path: Path, model_files: dict[str, bytes]) -> Path:
    """A copy of install.py + installer/ with a fake plugin, protocol and backend (with the real layout
    reader), and the test manifest."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(REPO / "install.py", repo / "install.py")
    shutil.copytree(REPO / "installer", repo / "installer", ignore=shutil.ignore_patterns("__pycache__"))
    plugin = repo / "krita_plugin"
    (plugin / "ui").mkdir(parents=True)
    (plugin / "__init__.py").write_text("from .extension import NAME\n", encoding="utf-8")
    (plugin / "extension.py").write_text("NAME = 'krita_live_diffusion'\n", encoding="utf-8")
    (plugin / "ui" / "__init__.py").write_text("", encoding="utf-8")
    (plugin / "krita_live_diffusion.desktop").write_text(DESKTOP, encoding="utf-8")
    (plugin / "__pycache__").mkdir()
    (plugin / "__pycache__" / "junk.cpython-311.pyc").write_bytes(b"not ours to ship")
    (repo / "protocol").mkdir()
    (repo / "protocol" / "__init__.py").write_text("VERSION = 1\n", encoding="utf-8")
    (repo / "protocol" / "messages.py").write_text("HELLO = 'hello'\n", encoding="utf-8")
    (repo / "backend").mkdir()
    (repo / "backend" / "__init__.py").write_text("", encoding="utf-8")
    (repo / "backend" / "__main__.py").write_text("print('fake backend up')\n", encoding="utf-8")
    # The real layout reader: install.py reads the manifest's layouts with it.
    shutil.copy2(REPO / "backend" / "model_layouts.py", repo / "backend" / "model_layouts.py")
    (repo / "pyproject.toml").write_text("[project]\nname = 'fake'\nversion = '0'\n", encoding="utf-8")
    write_test_manifest(repo, model_files)
    return repo


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throw-away HOME, with the XDG variables pointing inside it (Krita's Linux profile)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("KRITA_LIVE_DIFFUSION_MIRROR", raising=False)
    return home


@pytest.fixture(scope="session")
def websockets_venv() -> Path:
    """A virtual environment that has websockets installed: the one running the tests."""
    venv = Path(sys.prefix)
    if not any(from_site_packages(site) for site in site_packages_dirs(venv)):
        pytest.skip("the test interpreter's environment has no websockets to vendor")
    return venv


@pytest.fixture(scope="session")
def websockets_source(websockets_venv: Path) -> VendorSource:
    for site in site_packages_dirs(websockets_venv):
        source = from_site_packages(site)
        if source is not None:
            return source
    raise AssertionError("unreachable")
