"""Real processes for the pool tests: HAProxy run from the shipped deploy/haproxy.cfg (only its ports
changed), backend workers (`python -m backend`) on the tiny models, and the pool launcher."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CFG = REPO / "deploy" / "haproxy.cfg"
# The addresses in the shipped file (as the deploy guide describes them): the painters' frontend, two workers.
FRONTEND = "127.0.0.1:9631"
WORKER_ADDRESSES = ("127.0.0.1:9101", "127.0.0.1:9102")
WORKER_NAMES = ("gpu0", "gpu1")  # the shipped file's `server` names, which the balancer's answer carries


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_port_pair() -> int:
    """A port p with p and p + 1 both free (the pool gives workers consecutive ports)."""
    for _ in range(50):
        base = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two consecutive free ports")


def config_with_ports(frontend: int, workers: tuple[int, int]) -> str:
    """The shipped configuration with only its loopback ports replaced; each address must appear exactly once,
    so a change to the shipped file's layout fails here instead of testing something else."""
    text = SHIPPED_CFG.read_text()
    for address, port in zip((FRONTEND, *WORKER_ADDRESSES), (frontend, *workers), strict=True):
        found = len(re.findall(rf"(?<![\d.]){re.escape(address)}(?!\d)", text))
        assert found == 1, f"{address} appears {found} times in deploy/haproxy.cfg (expected once)"
        text = re.sub(rf"(?<![\d.]){re.escape(address)}(?!\d)", f"127.0.0.1:{port}", text)
    return text


# The shipped file's commented TLS example, which with_tls_example turns on.
TLS_EXAMPLE = re.compile(r"^(\s*)# (bind :443 ssl crt \S+ alpn http/1\.1)$", re.MULTILINE)


def with_tls_example(text: str, port: int, pem: Path) -> str:
    """The configuration with its TLS example uncommented, on a loopback port, with the test's certificate."""
    found = TLS_EXAMPLE.findall(text)
    assert len(found) == 1, f"deploy/haproxy.cfg should carry one TLS example line, has {found}"
    return TLS_EXAMPLE.sub(lambda m: f"{m[1]}bind 127.0.0.1:{port} ssl crt {pem} alpn http/1.1", text)


def healthz(port: int, timeout: float = 1.0) -> tuple[int, dict[str, object]]:
    """(HTTP status, JSON body) of a worker's health check; (0, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read())
        except ValueError:
            return error.code, {}
    except (OSError, ValueError):
        return 0, {}


def wait_ready(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the worker on {port} exited ({process.returncode})")
        if healthz(port)[0] == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the worker on {port} was not ready within {timeout} s: {healthz(port)}")


def worker_env() -> dict[str, str]:
    # One thread per worker: two workers share the CI machine's two cores without oversubscribing them.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass
class WorkerProcess:
    """`python -m backend` on the tiny models, as a deployment would run one worker."""

    models: Path
    config: Path
    port: int
    log_path: Path
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> WorkerProcess:
        command = [
            sys.executable, "-m", "backend", "--models-dir", str(self.models),
            "--model-config", str(self.config), "--port", str(self.port), "--device", "cpu", *self.extra,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=worker_env()
            )
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        wait_ready(self.port, timeout, self.process)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class HAProxy:
    binary: str
    config: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> HAProxy:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
