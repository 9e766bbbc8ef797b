"""One plugin source for PyQt5 (Krita 5) and PyQt6 (Krita 6): the binding choice, and every module's Qt
coming through krita_plugin/qt.py."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

from krita_plugin import qt

PLUGIN = Path(__file__).resolve().parents[2] / "krita_plugin"


def test_a_binding_named_in_the_environment_wins() -> None:
    assert qt.choose_binding("pyqt6", {"PyQt5"}) == ["PyQt6"]
    assert qt.choose_binding(" PyQt5 ", set()) == ["PyQt5"]
    with pytest.raises(qt.QtBindingError, match="LIVE_DIFFUSION_QT='pyside6'"):
        qt.choose_binding("pyside6", set())


def test_otherwise_the_binding_already_loaded_then_pyqt5_first() -> None:
    assert qt.choose_binding(None, {"PyQt6", "sys"}) == ["PyQt6"]  # Krita 6 has loaded its PyQt6
    assert qt.choose_binding("", {"PyQt5"}) == ["PyQt5"]
    assert qt.choose_binding(None, {"sys"}) == ["PyQt5", "PyQt6"]


def test_the_tests_run_on_the_binding_asked_for_and_only_on_it() -> None:
    requested = os.environ.get(qt.BINDING_ENV)
    if requested:
        assert qt.BINDING.lower() == requested.lower()
    assert qt.QtCore.__name__ == f"{qt.BINDING}.QtCore"
    other = "PyQt5" if qt.QT6 else "PyQt6"
    assert f"{other}.QtCore" not in sys.modules  # two bindings in one process would crash Krita
    assert qt.QAction.__module__.endswith("QtGui" if qt.QT6 else "QtWidgets")


def imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def called_methods(tree: ast.AST) -> list[str]:
    return [
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    ]


def test_plugin_modules_take_qt_only_from_the_compat_module() -> None:
    for path in sorted(PLUGIN.rglob("*.py")):
        if "vendor" in path.parts or path.name == "qt.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert not [name for name in imported_modules(tree) if name.startswith(("PyQt5", "PyQt6"))], path.name
        assert "exec_" not in called_methods(tree), path.name  # gone in PyQt6; exec() works in both
