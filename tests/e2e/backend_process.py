"""The real backend (`python -m backend`) on tiny fixture models, as a subprocess to kill and restart."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build_models(directory: Path, references: bool = False) -> tuple[Path, Path]:
    """Tiny SD1.5-shaped models (tests/fixtures/tiny_models.py): the models folder and its config folder;
    with `references`, the tiny IP-Adapters and CLIP vision encoders too (tiny_ip_adapter.py)."""
    from tests.fixtures.tiny_models import build_tiny_models

    tiny = build_tiny_models(directory / "models")
    if references:
        from tests.fixtures.tiny_ip_adapter import write_tiny_references

        write_tiny_references(tiny.root)
    return tiny.root, tiny.config_dir


class BackendProcess:
    def __init__(
        self,
        models: Path,
        config: Path,
        log_path: Path,
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.models = models
        self.config = config
        self.log_path = log_path
        self.port = port or free_port()
        self.extra_args = list(extra_args)  # further command-line options (python -m backend --help)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        command = [
            sys.executable, "-m", "backend", "--models-dir", str(self.models),
            "--model-config", str(self.config), "--port", str(self.port), "--device", "cpu",
            "--log-level", "DEBUG", *self.extra_args,
        ]  # fmt: skip
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the backend exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the backend did not listen within {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """Gone without a goodbye, as when it crashes."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
