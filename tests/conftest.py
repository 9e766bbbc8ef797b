"""Shared test setup: no hub access ever, and the tiny real-architecture models written once per session."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

# Set before anything imports huggingface_hub: without it, loaders still try the network and retry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

if TYPE_CHECKING:
    from tests.fixtures.tiny_models import TinyModels


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    # Imported here so test runs that need no models don't pay for importing torch and diffusers.
    from tests.fixtures.tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny") / "models")


_KEPT: list[object] = []


@pytest.fixture(scope="session")
def qapp():
    """One QApplication for the whole run: one that a test let go would take Qt objects that modules made at
    import (the plugin's result hub) with it. Imported here so runs without Qt need none."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from krita_plugin.qt import QApplication

    app = QApplication.instance() or QApplication([])
    # Kept to the end of the process: were the fixture's cache its last reference, the session's teardown
    # would delete the application under widgets still alive (a crash in PyQt6's teardown, now and then).
    _KEPT.append(app)
    return app


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Building the tiny models alone takes a good part of the quick subset's minute, so every test that needs
    # them, directly or through another fixture, is slow, including ones in files not marked yet.
    for item in items:
        if "tiny_models" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
