"""Step-by-step reporting: every step says what it did, and the exit code sums up what went wrong."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

EXIT_OK = 0
EXIT_FAILED = 1  # a step failed (plugin source missing, venv not created, a download broke, ...)
EXIT_USAGE = 2  # argparse's own code for a bad command line
EXIT_MODELS_MISSING = 3  # everything else worked, but required model files are missing


@dataclass
class Reporter:
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    failures: list[str] = field(default_factory=list)
    missing_required: list[str] = field(default_factory=list)

    def info(self, step: str, message: str) -> None:
        self._write(f"{step}: {message}")

    def detail(self, message: str) -> None:
        """An indented continuation line under the previous step line."""
        self._write(f"    {message}")

    def warn(self, step: str, message: str) -> None:
        self._write(f"{step}: WARNING: {message}")

    def fail(self, step: str, message: str) -> None:
        self.failures.append(f"{step}: {message}")
        self._write(f"{step}: ERROR: {message}")

    def exit_code(self) -> int:
        if self.failures:
            return EXIT_FAILED
        if self.missing_required:
            return EXIT_MODELS_MISSING
        return EXIT_OK

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
