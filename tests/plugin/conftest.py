"""Tests of the Krita plugin without Krita: Qt offscreen and tests/plugin/fake_krita.py.

They run under PyQt5 (Krita 5) or PyQt6 (Krita 6): LIVE_DIFFUSION_QT=pyqt6 picks the binding (see
krita_plugin/qt.py).
"""

from __future__ import annotations

import importlib
import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# The pure-logic tests run anywhere; these need a Qt binding (a dev dependency) and are left out without one,
# unless a binding was asked for by name: then its absence is an error, not a reason to skip.
NEEDS_QT = [
    "test_capture.py", "test_controller.py", "test_e2e_channel.py", "test_fingerprint.py",
    "test_guidance_kinds.py", "test_input_watch.py", "test_panel.py", "test_pose.py", "test_qt.py",
    "test_registration.py", "test_scaling.py", "test_idle_wait.py", "test_failover_live.py",
    "test_control_from_image.py", "test_references.py", "test_regions.py",
]  # fmt: skip


def _qt_available() -> bool:
    if os.environ.get("LIVE_DIFFUSION_QT"):
        return True
    try:
        importlib.import_module("krita_plugin.qt")
    except ImportError:
        return False
    return True


collect_ignore = [] if _qt_available() else NEEDS_QT


@pytest.fixture
def krita_app(qapp):
    from tests.plugin import fake_krita

    fake_krita.Krita._instance = None
    app = fake_krita.Krita.instance()
    doc = app.createDocument(16, 12, "test", "RGBA", "U8", "", 72.0)
    app.setActiveDocument(doc)
    return app
