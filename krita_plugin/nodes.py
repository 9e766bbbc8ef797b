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


def is_layer(node: Any) -> bool:
    """Layers take part in the image; masks (including the global selection mask) do not here."""
    return str(node.type()).endswith("layer")
