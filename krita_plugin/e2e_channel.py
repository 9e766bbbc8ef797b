"""A test-only remote control, opened only when the environment variable KLD_TEST_CONTROL names a folder.

The end-to-end test writes Python snippets as `<n>.cmd.py` into that folder; the plugin runs each one on
Krita's UI thread (from a QTimer, like any other plugin code) with `Krita`, the docker and its controller in
scope, and writes `<n>.out.json`: {"ok": true, "result": <the snippet's `result`>} or
{"ok": false, "error": <traceback>}.
Painters never have the variable set, so the channel does not exist for them.
"""

from __future__ import annotations

import json
import os
import traceback
from typing import Any

from PyQt5.QtCore import QObject, QTimer

from .safe import TEST_CONTROL_ENV, guarded


def control_dir() -> str | None:
    directory = os.environ.get(TEST_CONTROL_ENV)
    return directory if directory and os.path.isdir(directory) else None


class TestControl(QObject):
    def __init__(self, directory: str, namespace: dict[str, Any], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.directory = directory
        self.namespace = namespace
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.poll)
        self.timer.start(50)
        with open(os.path.join(directory, "ready"), "w", encoding="utf-8") as marker:
            marker.write("ready\n")

    @guarded
    def poll(self) -> None:
        names = sorted(n for n in os.listdir(self.directory) if n.endswith(".cmd.py"))
        for name in names:
            path = os.path.join(self.directory, name)
            with open(path, encoding="utf-8") as source:
                code = source.read()
            os.remove(path)
            self.run(name[: -len(".cmd.py")], code)

    def run(self, stem: str, code: str) -> None:
        scope = dict(self.namespace)
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
