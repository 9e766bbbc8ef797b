"""Waiting for Krita to finish the stroke that just ended, without blocking its UI thread.

Krita renders a stroke's last dabs and the projection on its worker threads after the pointer is released.
`Document.waitForDone()` would block the UI thread until then, which also stops the canvas from showing the
stroke (and, during a long filter, freezes Krita); instead the image is asked whether it is idle
(`tryBarrierLock`) and, while it is not, asked again from the event loop every few milliseconds, for a
second at most.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .qt import QObject, QTimer
from .safe import guarded

RETRY_MS = 4
# 1 s of quick looks (a stroke's last dabs take tens of milliseconds). Then the wait blocks in waitForDone,
# as it did before: in real Krita the image can report busy for longer than its work lasts (seen in the
# end-to-end tests after an Apply with undo and redo), and the stroke that ended must still be sent.
FAST_RETRIES = 250


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
        if self.retries >= FAST_RETRIES:
            doc.waitForDone()
            self.retries = 0
            return True
        if not self.pending:
            self.retries += 1
            self.pending = True
            QTimer.singleShot(RETRY_MS, guarded(self._retry))
        return False

    def _retry(self) -> None:
        self.pending = False
        self.on_idle()
