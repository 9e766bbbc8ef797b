"""The end-to-end tests' remote control of Krita: a Krita Python plugin of its own (`kld_test_channel`)
that only the tests' throw-away profile gets (tests/e2e/krita_session.py puts it beside the installed Live
Diffusion plugin); install.py never ships it, so painters' Krita has no such channel.

The test writes Python snippets as `<n>.cmd.py` into the folder KLD_TEST_CONTROL names. Once the Live
Diffusion docker exists the channel writes `ready` there, then runs each snippet on Krita's UI thread (from a
QTimer, like plugin code) with `Krita`, the docker, its `controller` and `panel` in scope, and writes
`<n>.out.json`: {"ok": true, "result": <the snippet's `result`>} or {"ok": false, "error": <traceback>}.
Every error the plugin catches (its `safe` module) is appended to `errors.log`, so the test fails on it.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from types import ModuleType
from typing import Any

CONTROL_ENV = "KLD_TEST_CONTROL"
CHANNEL_PLUGIN = "kld_test_channel"
PLUGIN_PACKAGE = "krita_live_diffusion"  # the Live Diffusion plugin as Krita imports it
DOCKER_ID = "krita_live_diffusion_docker"
READY_FILE = "ready"
ERROR_LOG = "errors.log"
POLL_MS = 50

DESKTOP_ENTRY = f"""[Desktop Entry]
Type=Service
ServiceTypes=Krita/PythonPlugin
X-KDE-Library={CHANNEL_PLUGIN}
X-Python-2-Compatible=false
Name=Live Diffusion test channel
Comment=Remote control for the end-to-end tests (test profiles only)
"""


def _qt_core() -> ModuleType:
    """QtCore of the binding already loaded (Krita's own): two bindings in one process would clash."""
    for binding in ("PyQt6", "PyQt5"):
        module = sys.modules.get(f"{binding}.QtCore")
        if module is not None:
            return module
    return importlib.import_module("PyQt5.QtCore")


class TestChannel:
    __test__ = False  # not a pytest test class

    def __init__(
        self, directory: str, app: Any, plugin_package: str = PLUGIN_PACKAGE, parent: Any = None
    ) -> None:
        self.directory = directory
        self.app = app
        self.plugin_package = plugin_package
        self.namespace: dict[str, Any] | None = None
        self.safe: ModuleType | None = None
        self.timer = _qt_core().QTimer(parent)
        self.timer.timeout.connect(self.poll)
        self.timer.start(POLL_MS)

    def poll(self) -> None:
        try:
            self._listen_for_errors()
            if self.namespace is None:
                self.namespace = self._find_docker()
                if self.namespace is None:
                    return
                with open(os.path.join(self.directory, READY_FILE), "w", encoding="utf-8") as marker:
                    marker.write("ready\n")
            for name in sorted(n for n in os.listdir(self.directory) if n.endswith(".cmd.py")):
                path = os.path.join(self.directory, name)
                with open(path, encoding="utf-8") as source:
                    code = source.read()
                os.remove(path)
                self.run(name[: -len(".cmd.py")], code)
        except Exception:  # noqa: BLE001 - a timer callback must not raise into Krita's dialog
            traceback.print_exc()

    def run(self, stem: str, code: str) -> None:
        scope = dict(self.namespace or {})
        scope["result"] = None
        try:
            exec(compile(code, f"<test command {stem}>", "exec"), scope)
            reply = {"ok": True, "result": scope.get("result")}
        except Exception:  # noqa: BLE001 - reported to the test, which fails on it
            reply = {"ok": False, "error": traceback.format_exc()}
        temporary = os.path.join(self.directory, f"{stem}.out.tmp")
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(reply, out, default=repr)
        os.replace(temporary, os.path.join(self.directory, f"{stem}.out.json"))

    def log_error(self, where: str, details: str) -> None:
        with open(os.path.join(self.directory, ERROR_LOG), "a", encoding="utf-8") as log:
            log.write(f"--- {where}\n{details}\n")

    def close(self) -> None:
        self.timer.stop()
        if self.safe is not None:
            self.safe.remove_error_listener(self.log_error)
            self.safe = None

    def _listen_for_errors(self) -> None:
        # The plugin may load after this channel: listen as soon as its error reporting exists.
        if self.safe is None:
            self.safe = sys.modules.get(f"{self.plugin_package}.safe")
            if self.safe is not None:
                self.safe.add_error_listener(self.log_error)

    def _find_docker(self) -> dict[str, Any] | None:
        for docker in self.app.dockers():
            if docker.objectName() == DOCKER_ID and hasattr(docker, "controller"):
                return {
                    "Krita": type(self.app),
                    "docker": docker,
                    "controller": docker.controller,
                    "panel": docker.panel,
                }
        return None


def _start_in_krita() -> TestChannel | None:
    try:
        import krita
    except ImportError:
        return None
    directory = os.environ.get(CONTROL_ENV)
    if not hasattr(krita, "Krita") or not directory or not os.path.isdir(directory):
        return None
    app = krita.Krita.instance()
    return TestChannel(directory, app, parent=app)


channel = _start_in_krita()
