"""Makes the repo root importable and exposes the installer tests' fixtures (defined in installer_testkit)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from installer_testkit import (  # noqa: E402,F401  (pytest finds fixtures by name here)
    fake_repo,
    home,
    model_files,
    server,
    websockets_source,
    websockets_venv,
)
