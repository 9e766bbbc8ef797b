"""Change detection for live mode: a cheap fingerprint of everything that shapes the next job.

Reading and hashing every layer ten times a second would be too slow on big documents, so each tick hashes the
layer being painted on (the active node's top-level ancestor) and the layers' visible properties; the other
layers' pixels are re-hashed every `full_scan_every` ticks (edits to non-active layers are rare: filters,
transforms, scripts), so any change is seen within about a second.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

from .nodes import is_layer, node_id, top_level, top_level_ancestor


def content_hash(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}{len(data):x}"


class CanvasWatcher:
    def __init__(self, full_scan_every: int = 10) -> None:
        self.full_scan_every = max(1, full_scan_every)
        self._tick = 0
        self._pixels: dict[str, str] = {}

    def invalidate(self) -> None:
        self._pixels.clear()

    def fingerprint(self, doc: Any, *, exclude: set[str], extra: str = "") -> str:
        self._tick += 1
        full_scan = self._tick % self.full_scan_every == 0
        width, height = doc.width(), doc.height()
        active = doc.activeNode()
        active_top = top_level_ancestor(doc, active) if active is not None else None
        active_top_id = node_id(active_top) if active_top is not None else ""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{width}x{height}|{extra}".encode())
        seen: set[str] = set()
        for node in top_level(doc):
            uid = node_id(node)
            if uid in exclude or not is_layer(node):
                continue
            seen.add(uid)
            visible = node.visible()
            bounds = node.bounds()
            structure = (
                f"{uid}|{node.type()}|{visible}|{node.opacity()}|{node.blendingMode()}|"
                f"{bounds.x()},{bounds.y()},{bounds.width()},{bounds.height()}"
            )
            if visible and (full_scan or uid == active_top_id or uid not in self._pixels):
                self._pixels[uid] = content_hash(bytes(node.projectionPixelData(0, 0, width, height)))
            digest.update(structure.encode())
            digest.update(self._pixels.get(uid, "").encode())
        for gone in set(self._pixels) - seen:
            del self._pixels[gone]
        return digest.hexdigest()
