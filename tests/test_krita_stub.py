"""typings/krita (what pyright knows of Krita's API) and tests/plugin/fake_krita.py (what the unit tests run
against) describe the same API: every method the fake offers exists in the stub with a call shape that fits,
so the fake never grows an API that real Krita lacks."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUB = REPO / "typings" / "krita" / "__init__.pyi"
FAKE = REPO / "tests" / "plugin" / "fake_krita.py"

# The fake's Node stands for every node type; real Krita hands out GroupLayer objects for groups.
STUB_CLASSES_FOR = {"Node": ("Node", "GroupLayer")}
# Classes a plugin constructs itself: only their constructors are API (the others are made by Krita).
CONSTRUCTED = {"Selection", "DockWidget", "DockWidgetFactory", "Extension"}
# Test helpers of the fake, not Krita API.
FAKE_ONLY = {("Document", "find"), ("Document", "names")}


@dataclass(frozen=True)
class Signature:
    required: int
    total: int

    def accepts(self, count: int) -> bool:
        return self.required <= count <= self.total


def _positional(function: ast.FunctionDef) -> list[ast.arg]:
    args = function.args.posonlyargs + function.args.args
    is_static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in function.decorator_list)
    return args if is_static else args[1:]  # self or cls


def _classes(path: Path) -> dict[str, ast.ClassDef]:
    """Every class in the file by name, nested ones too (the fake defines some inside install_module)."""
    return {
        node.name: node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)
    }


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in cls.body if isinstance(node, ast.FunctionDef)}


def _stub_methods(stub: dict[str, ast.ClassDef], name: str) -> dict[str, ast.FunctionDef]:
    """A stub class's methods with those it inherits from other stub classes."""
    cls = stub[name]
    methods: dict[str, ast.FunctionDef] = {}
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in stub:
            methods.update(_stub_methods(stub, base.id))
    methods.update(_methods(cls))
    return methods


def _signature(function: ast.FunctionDef) -> Signature:
    args = _positional(function)
    return Signature(len(args) - len(function.args.defaults), len(args))


def test_every_method_of_the_fake_is_in_the_stub_with_a_fitting_signature() -> None:
    stub, fake = _classes(STUB), _classes(FAKE)
    shared = sorted(set(stub) & set(fake))
    assert {"Krita", "Document", "Node", "Selection", "VectorLayer", "Shape", "DockWidget"} <= set(shared)
    problems = []
    for name in shared:
        offered: dict[str, ast.FunctionDef] = {}
        for stub_name in STUB_CLASSES_FOR.get(name, (name,)):
            offered.update(_stub_methods(stub, stub_name))
        for method, function in _methods(fake[name]).items():
            if (name, method) in FAKE_ONLY or (method.startswith("_") and method != "__init__"):
                continue
            if method == "__init__" and name not in CONSTRUCTED:
                continue
            if method not in offered:
                problems.append(f"{name}.{method} is not Krita API (not in the stub)")
                continue
            count = len(_positional(function))
            if not _signature(offered[method]).accepts(count):
                problems.append(f"{name}.{method} takes {count} arguments in the fake, not what Krita takes")
    assert not problems, "\n".join(problems)


def test_the_stub_types_what_the_plugin_imports_from_krita() -> None:
    stub = _classes(STUB)
    imported: set[str] = set()
    for path in (REPO / "krita_plugin").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "krita":
                imported.update(alias.name for alias in node.names)
    assert imported, "the plugin imports nothing from krita: the scan is broken"
    assert imported <= set(stub), f"missing from typings/krita: {sorted(imported - set(stub))}"
