"""What each end-to-end module sets up the same way: its artifacts folder, its own backend on tiny models and
its own Krita, each module's logs saved under its label. The modules wrap these in their module-scoped
fixtures (`yield from`), so each keeps its own Krita and backend whatever order the modules run in."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.backend_process import BackendProcess, build_models
from tests.e2e.krita_session import KritaSession


def artifacts_folder(factory: pytest.TempPathFactory) -> Path:
    """$KLD_E2E_ARTIFACTS, or a temporary folder: logs and screenshots to look at after a run."""
    folder = Path(os.environ.get("KLD_E2E_ARTIFACTS") or factory.mktemp("e2e-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def running_backend(
    factory: pytest.TempPathFactory, artifacts: Path, label: str, references: bool = False
) -> Iterator[BackendProcess]:
    models, config = build_models(factory.mktemp("tiny-models"), references=references)
    process = BackendProcess(models, config, artifacts / f"backend{label}.log")
    process.start()
    yield process
    process.stop()


def running_krita(factory: pytest.TempPathFactory, artifacts: Path, label: str) -> Iterator[KritaSession]:
    session = KritaSession(factory.mktemp("krita"))
    try:
        session.start()
        yield session
    finally:
        session.stop()
        shutil.copy(session.log_path, artifacts / f"krita{label}.log")
        if (session.control / "errors.log").exists():
            shutil.copy(session.control / "errors.log", artifacts / f"errors{label}.log")
