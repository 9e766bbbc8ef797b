"""Set up Krita Live Diffusion: `python install.py --run` (see `python install.py --help`).

Runs before any dependency exists, so it and the `installer` package use the standard library only.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info < (3, 10):  # noqa: UP036  (this check is the point: it runs on any Python)
    sys.exit(f"install.py needs Python 3.10 or newer; this is {sys.version.split()[0]}")

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from installer.cli import main  # noqa: E402  (the path must be set first)

if __name__ == "__main__":
    sys.exit(main(repo=REPO))
