"""Waiting for Krita to finish the stroke that just ended, without blocking its UI thread.

Krita renders a stroke's last dabs and the projection on its worker threads after the pointer is released.
`Document.waitForDone()` would block the UI thread until then, which also stops the canvas from showing the
stroke; instead the image is asked whether it is idle (`tryBarrierLock`) and, while it is not, asked again a
few milliseconds later from the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .qt import QObject, QTimer
from .safe import guarded

RETRY_MS = 4
MAX_RETRIES = 500  # 2 s: a longer busy spell (a filter running) is left to the input watch's later checks


def krita_idle(doc: Any) -> bool:
    """True when no stroke or update of the image is pending (nothing is left locked)."""
    if doc.tryBarrierLock():
        doc.unlock()
        return True
    return False


class IdleWait(QObject):
    """`ready(doc)` is True when Krita is idle; otherwise it arranges one `on_idle()` call for when it is."""

    def __init__(self, on_idle: Callable[[], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.on_idle = on_idle
        self.retries = 0
        self.pending = False

    def ready(self, doc: Any) -> bool:
        if krita_idle(doc):
            self.retries = 0
            return True
        if not self.pending:
            if self.retries >= MAX_RETRIES:
                self.retries = 0  # the next poke of the input watch starts a new wait
                return False
            self.retries += 1
            self.pending = True
            QTimer.singleShot(RETRY_MS, guarded(self._retry))
        return False

    def _retry(self) -> None:
        self.pending = False
        self.on_idle()
