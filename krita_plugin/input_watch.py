"""Notices when the painter has just done something (a stroke ended, a key or a click was released), so live
mode checks the canvas right then instead of on a fixed tick, and a document nobody touches costs nothing.

Every change a painter makes ends with an input release (a brush stroke, a filter's OK button, Ctrl+Z).
Some changes finish after their release (filters and transforms run in the background), so each release is
followed by a few later checks; after those the plugin is quiet until the next input.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .qt import QAbstractSpinBox, QApplication, QEvent, QLineEdit, QObject, QPlainTextEdit, QTextEdit, QTimer

RELEASE_EVENTS = frozenset(
    {QEvent.Type.MouseButtonRelease, QEvent.Type.TabletRelease, QEvent.Type.KeyRelease}
)
RECHECK_AFTER_MS = (350, 1500)  # for work that completes after the release (filters, transforms, fills)


class InputWatch(QObject):
    """An application-wide event filter that calls `on_release` once per release, at the next event-loop turn
    (so Krita has handled the release itself first), then again after each of RECHECK_AFTER_MS."""

    def __init__(self, on_release: Callable[[], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.on_release = on_release
        self.last_release = 0.0  # time.perf_counter() of the latest release: where stroke-to-send time starts
        self._pending = False  # a check is posted and has not run yet
        self._later: list[QTimer] = []
        for delay in RECHECK_AFTER_MS:
            timer = QTimer(self)
            timer.setSingleShot(True)
            timer.setInterval(delay)
            timer.timeout.connect(self._fire)
            self._later.append(timer)

    def install(self, application: QObject) -> None:
        application.installEventFilter(self)

    def remove(self, application: QObject) -> None:
        application.removeEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # One release reaches several objects (the window, then widgets up the parent chain): the timers
        # collapse them into one check.
        if event.type() in RELEASE_EVENTS and not self._pending:
            if event.type() == QEvent.Type.KeyRelease and _typing():
                self.poke_later()  # a prompt being typed: one check when the typing pauses
            else:
                self.last_release = time.perf_counter()
                self.poke()
        return False

    def poke_later(self) -> None:
        """Check once things have settled (typing, dragging a slider): restarts the later checks only."""
        for timer in self._later:
            timer.start()

    def poke(self) -> None:
        """Check now and a little later (also used for panel changes, job ends and document switches).

        "Now" is a posted call (QTimer.singleShot(0) posts one): it runs right after Krita has handled the
        event being delivered (the release that ends the stroke), before the repaints that follow it; a zero
        interval QTimer would wait behind them."""
        if not self._pending:
            self._pending = True
            QTimer.singleShot(0, self._fire_now)
        for timer in self._later:
            timer.start()

    def _fire_now(self) -> None:
        self._pending = False
        self.on_release()

    def _fire(self) -> None:
        self.on_release()


def _typing() -> bool:
    return isinstance(QApplication.focusWidget(), (QLineEdit, QPlainTextEdit, QTextEdit, QAbstractSpinBox))
