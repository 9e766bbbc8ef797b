"""The Qt classes the plugin uses, from PyQt5 (Krita 5) or PyQt6 (Krita 6): every plugin module imports Qt
from here, so one source runs on both.

The code that uses them keeps to what both bindings accept: fully scoped enums (`Qt.AlignmentFlag.AlignLeft`,
which PyQt5 5.15 knows too), `exec()` rather than `exec_()`, `horizontalAdvance()` rather than `width()`.
What moved between the two (QAction: QtWidgets in Qt5, QtGui in Qt6) is settled here.

Which binding: the one named by LIVE_DIFFUSION_QT ("pyqt5" or "pyqt6", for running the tests under either);
otherwise the one already loaded (inside Krita, Krita's own: two bindings in one process would crash);
otherwise PyQt5, then PyQt6.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING

BINDING_ENV = "LIVE_DIFFUSION_QT"
BINDINGS = ("PyQt5", "PyQt6")


class QtBindingError(ImportError):
    pass


def choose_binding(requested: str | None, loaded: set[str]) -> list[str]:
    """The bindings to try, in order."""
    if requested:
        wanted = [name for name in BINDINGS if name.lower() == requested.strip().lower()]
        if not wanted:
            raise QtBindingError(f"{BINDING_ENV}={requested!r}: expected one of {', '.join(BINDINGS)}")
        return wanted
    already = [name for name in BINDINGS if name in loaded]
    return already[:1] or list(BINDINGS)


def _import_binding() -> tuple[str, ModuleType, ModuleType, ModuleType]:
    failures = []
    for name in choose_binding(os.environ.get(BINDING_ENV), set(sys.modules)):
        try:
            core = importlib.import_module(f"{name}.QtCore")
            gui = importlib.import_module(f"{name}.QtGui")
            widgets = importlib.import_module(f"{name}.QtWidgets")
        except ImportError as error:
            failures.append(f"{name}: {error}")
            continue
        return name, core, gui, widgets
    raise QtBindingError("no usable Qt binding (" + "; ".join(failures) + ")")


if TYPE_CHECKING:  # type-checked against PyQt5, like Krita 5's own API (typings/krita)
    from PyQt5 import QtCore, QtGui, QtWidgets

    BINDING = "PyQt5"
else:
    BINDING, QtCore, QtGui, QtWidgets = _import_binding()
QT6 = BINDING == "PyQt6"

# QtCore
Qt = QtCore.Qt
QEvent = QtCore.QEvent
QObject = QtCore.QObject
QPoint = QtCore.QPoint
QPointF = QtCore.QPointF
QRect = QtCore.QRect
QRectF = QtCore.QRectF
QSize = QtCore.QSize
QTimer = QtCore.QTimer
pyqtSignal = QtCore.pyqtSignal

# QtGui
QAction = QtGui.QAction if QT6 else QtWidgets.QAction  # pyright: ignore[reportAttributeAccessIssue]
QColor = QtGui.QColor
QIcon = QtGui.QIcon
QImage = QtGui.QImage
QKeyEvent = QtGui.QKeyEvent
QMouseEvent = QtGui.QMouseEvent
QPainter = QtGui.QPainter
QPixmap = QtGui.QPixmap
QStandardItemModel = QtGui.QStandardItemModel
QTransform = QtGui.QTransform

# QtWidgets
QAbstractSpinBox = QtWidgets.QAbstractSpinBox
QApplication = QtWidgets.QApplication
QCheckBox = QtWidgets.QCheckBox
QComboBox = QtWidgets.QComboBox
QDockWidget = QtWidgets.QDockWidget
QDoubleSpinBox = QtWidgets.QDoubleSpinBox
QFileDialog = QtWidgets.QFileDialog
QFormLayout = QtWidgets.QFormLayout
QHBoxLayout = QtWidgets.QHBoxLayout
QLabel = QtWidgets.QLabel
QLineEdit = QtWidgets.QLineEdit
QListView = QtWidgets.QListView
QListWidget = QtWidgets.QListWidget
QListWidgetItem = QtWidgets.QListWidgetItem
QPlainTextEdit = QtWidgets.QPlainTextEdit
QProgressBar = QtWidgets.QProgressBar
QPushButton = QtWidgets.QPushButton
QScrollArea = QtWidgets.QScrollArea
QSizePolicy = QtWidgets.QSizePolicy
QSlider = QtWidgets.QSlider
QSpinBox = QtWidgets.QSpinBox
QStyle = QtWidgets.QStyle
QTextEdit = QtWidgets.QTextEdit
QToolButton = QtWidgets.QToolButton
QVBoxLayout = QtWidgets.QVBoxLayout
QWidget = QtWidgets.QWidget
