"""A download progress display: a redrawn bar on a terminal, sparse plain lines otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # unreachable, keeps type checkers calm


@dataclass
class Progress:
    label: str
    total: int | None
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    clock: Callable[[], float] = time.monotonic
    width: int = 30
    done: int = 0
    _started: float = 0.0
    _start_bytes: int = 0
    _last_draw: float = -1.0
    _last_decile: int = -1
    _last_width: int = 0

    def __post_init__(self) -> None:
        self._started = self.clock()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def start(self, already: int) -> None:
        """Begin (or resume) at `already` bytes; speed counts only what this run transfers."""
        self.done = already
        self._start_bytes = already
        self._started = self.clock()
        self._draw(force=True)

    def advance(self, n: int) -> None:
        self.done += n
        self._draw()

    def finish(self) -> None:
        self._draw(force=True)
        if self._tty:
            self.stream.write("\n")
        self.stream.flush()

    def speed(self) -> float:
        elapsed = self.clock() - self._started
        return (self.done - self._start_bytes) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        speed = f"{human_size(self.speed())}/s"
        if self.total:
            fraction = min(1.0, self.done / self.total)
            filled = int(fraction * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            sizes = f"{human_size(self.done)} / {human_size(self.total)}"
            return f"{self.label} [{bar}] {fraction * 100:5.1f}% {sizes} {speed}"
        return f"{self.label} {human_size(self.done)} {speed}"

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if self._tty:
            if force or now - self._last_draw >= 0.2:
                self._last_draw = now
                line = self.line()
                # Pad over the rest of a longer previous line (speeds shrink as well as grow).
                self.stream.write("\r" + line.ljust(self._last_width))
                self._last_width = len(line)
                self.stream.flush()
            return
        # Not a terminal: one plain line per 10 % (or per 10 s without a known total), no carriage returns.
        if self.total:
            decile = int(min(1.0, self.done / self.total) * 10)
            if force or decile > self._last_decile:
                self._last_decile = decile
                self.stream.write(self.line() + "\n")
        elif force or now - self._last_draw >= 10:
            self._last_draw = now
            self.stream.write(self.line() + "\n")
