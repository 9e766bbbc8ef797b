"""Small helpers over Krita's node API that every Krita-facing module needs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def node_id(node: Any) -> str:
    """Krita's stable node id (a QUuid) as text; survives renames and reordering."""
    return node.uniqueId().toString()


def top_level(doc: Any) -> list[Any]:
    return list(doc.rootNode().childNodes())


def walk(node: Any) -> Iterator[Any]:
    for child in node.childNodes():
        yield child
        yield from walk(child)


def find_node(doc: Any, wanted: str) -> Any | None:
    if not wanted:
        return None
    for node in walk(doc.rootNode()):
        if node_id(node) == wanted:
            return node
    return None


def top_level_ancestor(doc: Any, node: Any) -> Any | None:
    """The root child that contains `node` (or the node itself when it is one)."""
    root_id = node_id(doc.rootNode())
    current = node
    while current is not None:
        parent = current.parentNode()
        if parent is None:
            return None
        if node_id(parent) == root_id:
            return current
        current = parent
    return None


def is_layer(node: Any) -> bool:
    """Layers take part in the image; masks (including the global selection mask) do not here."""
    return str(node.type()).endswith("layer")
