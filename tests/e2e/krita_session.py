"""Runs real Krita under Xvfb with the plugin installed into a throw-away profile, and drives it.

The profile gets, beside the plugin as install.py installs it, the tests' own control channel (a second
Krita plugin, tests/e2e/e2e_channel.py): snippets written to the folder KLD_TEST_CONTROL names run on Krita's
UI thread and answer with a JSON file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from installer import kritarc
from tests.e2e import e2e_channel

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "krita_live_diffusion"


class KritaError(AssertionError):
    pass


def tools_available() -> str | None:
    """None when Krita can run here; otherwise why not."""
    for tool in ("krita", "Xvfb"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install krita xvfb)"
    return None


def install_plugin(home: Path) -> None:
    """Installs like a painter would (install.py), into the throw-away profile."""
    krita_dir = home / ".local" / "share" / "krita"
    krita_dir.mkdir(parents=True)
    kritarc = home / ".config" / "kritarc"
    kritarc.parent.mkdir(parents=True)
    command = [
        sys.executable, str(REPO / "install.py"), "--skip-venv", "--skip-models", "--offline",
        "--krita-dir", str(krita_dir), "--kritarc", str(kritarc),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not (krita_dir / "pykrita" / PLUGIN / "__init__.py").is_file():
        raise KritaError(f"install.py failed:\n{done.stdout}\n{done.stderr}")
    install_test_channel(krita_dir / "pykrita", kritarc)


def install_test_channel(pykrita: Path, kritarc_path: Path) -> None:
    """The tests' control channel, as a Krita plugin of its own: painters' installs never have it."""
    shipped = [p.name for p in (pykrita / PLUGIN).rglob("*.py") if "e2e" in p.name or "channel" in p.name]
    if shipped:
        raise KritaError(f"install.py shipped test-only files to painters: {shipped}")
    package = pykrita / e2e_channel.CHANNEL_PLUGIN
    package.mkdir()
    shutil.copyfile(e2e_channel.__file__, package / "__init__.py")
    desktop = pykrita / f"{e2e_channel.CHANNEL_PLUGIN}.desktop"
    desktop.write_text(e2e_channel.DESKTOP_ENTRY, encoding="utf-8")
    kritarc.enable(kritarc_path, e2e_channel.CHANNEL_PLUGIN)


_USED_DISPLAYS: set[int] = set()


def free_display() -> int:
    """A display number no X server holds and none of this process's sessions had: an Xvfb that is still
    exiting removes its socket file on the way out, which would take away a new server's socket on the same
    number (Krita then "could not connect to display")."""
    for number in range(90, 190):
        if number in _USED_DISPLAYS:
            continue
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            _USED_DISPLAYS.add(number)
            return number
    raise KritaError("no free X display number")


class KritaSession:
    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.home = workdir / "home"
        self.control = workdir / "control"
        self.log_path = workdir / "krita.log"
        self.extra_env = env or {}
        self.xvfb: subprocess.Popen[bytes] | None = None
        self.krita: subprocess.Popen[bytes] | None = None
        self.display = ""
        self._counter = 0

    # --- life cycle -----------------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        self.home.mkdir(parents=True)
        self.control.mkdir()
        runtime = self.home / "xdg"
        runtime.mkdir(mode=0o700)
        install_plugin(self.home)
        number = free_display()
        self.display = f":{number}"
        self.xvfb = subprocess.Popen(
            ["Xvfb", self.display, "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            if time.monotonic() > deadline or self.xvfb.poll() is not None:
                raise KritaError("Xvfb did not start")
            time.sleep(0.1)
        env = {
            **os.environ,
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(runtime),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
            "DISPLAY": self.display,
            e2e_channel.CONTROL_ENV: str(self.control),
            **self.extra_env,
        }
        env.pop("QT_QPA_PLATFORM", None)
        env.pop("PYTHONPATH", None)  # Krita's Python must find only what the installer put in the profile
        with open(self.log_path, "wb") as log:
            self.krita = subprocess.Popen(
                ["krita", "--nosplash"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not (self.control / "ready").exists():
            if self.krita.poll() is not None:
                raise KritaError(f"Krita exited ({self.krita.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise KritaError(
                    f"the plugin's test channel did not open in {timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        if self.krita is not None and self.krita.poll() is None:
            try:
                self.run(
                    "for d in Krita.instance().documents(): d.setModified(False)\n"
                    "from PyQt5.QtCore import QTimer\n"
                    "QTimer.singleShot(100, Krita.instance().action('file_quit').trigger)",
                    timeout=10,
                )
                self.krita.wait(20)
            except (KritaError, subprocess.TimeoutExpired):
                pass
            if self.krita.poll() is None:
                self.krita.send_signal(signal.SIGKILL)
                self.krita.wait(10)
        if self.xvfb is not None and self.xvfb.poll() is None:
            self.xvfb.terminate()
            try:
                self.xvfb.wait(5)
            except subprocess.TimeoutExpired:
                self.xvfb.kill()

    # --- driving --------------------------------------------------------------------------------------------

    def run(self, code: str, timeout: float = 30.0) -> Any:
        """Runs a snippet on Krita's UI thread; returns its `result` variable (JSON-able)."""
        self._counter += 1
        stem = f"{self._counter:05d}-{uuid.uuid4().hex[:6]}"
        source = self.control / f"{stem}.cmd.tmp"
        source.write_text(code, encoding="utf-8")
        source.rename(self.control / f"{stem}.cmd.py")
        answer = self.control / f"{stem}.out.json"
        deadline = time.monotonic() + timeout
        while not answer.exists():
            if self.krita is None or self.krita.poll() is not None:
                raise KritaError(f"Krita is gone:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise KritaError(f"Krita did not answer within {timeout}s (frozen?):\n{code}")
            time.sleep(0.05)
        reply = json.loads(answer.read_text(encoding="utf-8"))
        if not reply["ok"]:
            raise KritaError(f"snippet failed in Krita:\n{code}\n{reply['error']}")
        return reply["result"]

    def wait_until(self, expression: str, timeout: float, setup: str = "", every: float = 0.3) -> Any:
        """Polls a Python expression in Krita until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.run(f"{setup}\nresult = {expression}")
            if value:
                return value
            time.sleep(every)
        raise KritaError(f"timed out after {timeout}s waiting for: {expression} (last value: {value!r})")

    def errors(self) -> str:
        path = self.control / "errors.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def alive(self) -> bool:
        return self.krita is not None and self.krita.poll() is None

    def screenshot(self, path: Path) -> bool:
        """The whole screen, as a painter would see it (ImageMagick's import)."""
        if shutil.which("import") is None:
            return False
        done = subprocess.run(
            ["import", "-display", self.display, "-window", "root", str(path)],
            capture_output=True,
            timeout=30,
        )
        return done.returncode == 0 and path.exists()

    def xdotool(self, *args: str, timeout: float = 60.0) -> str:
        """Real pointer and keyboard input on this session's display, as a painter's hand makes it."""
        done = subprocess.run(
            ["xdotool", *args],
            env={**os.environ, "DISPLAY": self.display},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise KritaError(f"xdotool {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
