"""Tests of the Krita plugin without Krita: PyQt5 offscreen and tests/plugin/fake_krita.py."""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# The pure-logic tests run anywhere; these need PyQt5 (a dev dependency) and are left out without it.
NEEDS_QT = [
    "test_capture.py", "test_controller.py", "test_fingerprint.py", "test_layers.py", "test_panel.py",
    "test_pose.py", "test_registration.py",
]  # fmt: skip
collect_ignore = [] if importlib.util.find_spec("PyQt5") else NEEDS_QT


@pytest.fixture(scope="session")
def qapp():
    from PyQt5.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    yield app


@pytest.fixture
def krita_app(qapp):
    from tests.plugin import fake_krita

    fake_krita.Krita._instance = None
    app = fake_krita.Krita.instance()
    doc = app.createDocument(16, 12, "test", "RGBA", "U8", "", 72.0)
    app.setActiveDocument(doc)
    return app
