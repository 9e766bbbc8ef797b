"""Live checks follow the painter's input: one check right after a release, none while nothing happens."""

from __future__ import annotations

import time

from krita_plugin import input_watch
from krita_plugin.input_watch import InputWatch
from krita_plugin.qt import (
    QApplication,
    QEvent,
    QKeyEvent,
    QLineEdit,
    QMouseEvent,
    QPoint,
    QPointF,
    Qt,
    QWidget,
)


def release(widget: QWidget) -> None:
    event = QMouseEvent(
        QEvent.Type.MouseButtonRelease,
        QPointF(QPoint(2, 2)),
        Qt.MouseButton.LeftButton,
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(widget, event)


def settle(app: QApplication, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)


def test_a_release_checks_once_at_once_then_a_little_later(qapp, monkeypatch) -> None:
    monkeypatch.setattr(input_watch, "RECHECK_AFTER_MS", (250,))
    calls: list[float] = []
    watch = InputWatch(lambda: calls.append(time.perf_counter()))
    watch.install(qapp)
    canvas = QWidget()
    settle(qapp, 0.05)  # what earlier tests left in the event queue (repaints, deletions) runs first
    try:
        release(canvas)
        release(canvas)  # one release reaches several objects: still one check
        assert calls == []  # not inside the event: Krita handles the release (ends the stroke) first
        qapp.processEvents()
        assert len(calls) == 1 and watch.last_release > 0
        settle(qapp, 0.5)
        assert len(calls) == 2  # the later check, for work that finishes after the release
        settle(qapp, 0.5)
        assert len(calls) == 2  # then nothing until the next input
    finally:
        watch.remove(qapp)


def test_typing_in_a_field_waits_for_a_pause(qapp, monkeypatch) -> None:
    monkeypatch.setattr(input_watch, "RECHECK_AFTER_MS", (80,))
    calls: list[int] = []
    watch = InputWatch(lambda: calls.append(1))
    watch.install(qapp)
    field = QLineEdit()
    field.show()
    field.setFocus()
    qapp.processEvents()
    try:
        field.activateWindow()
        qapp.processEvents()
        assert QApplication.focusWidget() is field
        for _ in range(3):
            QApplication.sendEvent(
                field, QKeyEvent(QEvent.Type.KeyRelease, Qt.Key.Key_A, Qt.KeyboardModifier.NoModifier, "a")
            )
            qapp.processEvents()
        assert calls == []  # no check per keystroke
        settle(qapp, 0.3)
        assert len(calls) == 1
    finally:
        watch.remove(qapp)
        field.close()
