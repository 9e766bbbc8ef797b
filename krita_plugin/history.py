"""The document's recent results: every Generate and the live frames the painter paused on.

Pure bookkeeping (no Qt, no Krita): entries hold the result's pixels as the backend sent them (which may be
smaller than the document rectangle they cover: the view and Apply scale them), the recipe that made them and,
for fast previews, the inputs to render them again at full quality.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .job_records import JobRecord
from .placement import Rect

HISTORY_LIMIT = 30  # per document; the issue asks for at least 20
HISTORY_BYTES = 512 * 1024 * 1024  # all documents together: pixels and kept inputs
LIVE_PAUSE_SECONDS = 1.5  # a live frame shown this long before the next one is kept in the history


@dataclass
class ResultEntry:
    job_id: str
    document: str
    rect: Rect  # where the result goes in the document
    width: int  # the pixels' own size (may be smaller than rect: scaled on show and Apply)
    height: int
    pixels: bytes  # BGRA8
    recipe: dict[str, Any]  # what the backend says made it (resolved models, seed...) plus the prompt
    record: JobRecord  # what the plugin sent: settings, inputs (for Apply's full-quality render)
    live: bool
    fast_decoder: bool  # decoded with the approximate live decoder: Apply renders it again
    created: float = field(default_factory=time.monotonic)

    @property
    def size_bytes(self) -> int:
        return len(self.pixels) + (self.record.input_bytes if self.fast_decoder else 0)

    @property
    def label(self) -> str:
        prompt = " ".join(str(self.recipe.get("prompt", "")).split()) or "untitled"
        kind = "live" if self.live else "generate"
        return f"{prompt} · seed {self.recipe.get('seed', '?')} · {kind}"

    def refined(self, pixels: bytes, width: int, height: int, recipe: dict[str, Any]) -> None:
        """The full-quality render arrived: it replaces the fast preview's pixels."""
        self.pixels, self.width, self.height = pixels, width, height
        self.recipe = {**self.recipe, **recipe}
        self.fast_decoder = False


class ResultHistory:
    def __init__(
        self,
        limit: int = HISTORY_LIMIT,
        max_bytes: int = HISTORY_BYTES,
        pause_seconds: float = LIVE_PAUSE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.pause_seconds = pause_seconds
        self.clock = clock
        self._entries: dict[str, list[ResultEntry]] = {}  # document id -> oldest first
        self._selected: dict[str, str] = {}  # document id -> job id shown

    def add(self, entry: ResultEntry) -> ResultEntry:
        """Adds a result and shows it. A live frame replaces the previous live frame unless the painter had it
        in front of them long enough to count as a pause."""
        entry.created = self.clock()
        entries = self._entries.setdefault(entry.document, [])
        if entry.live and entries:
            last = entries[-1]
            if last.live and entry.created - last.created < self.pause_seconds:
                entries.pop()
        entries.append(entry)
        del entries[: max(0, len(entries) - self.limit)]
        self._selected[entry.document] = entry.job_id
        self._trim_bytes()
        return entry

    def entries(self, document: str) -> list[ResultEntry]:
        """Newest first."""
        return list(reversed(self._entries.get(document, [])))

    def find(self, job_id: str) -> ResultEntry | None:
        for entries in self._entries.values():
            for entry in entries:
                if entry.job_id == job_id:
                    return entry
        return None

    def select(self, document: str, job_id: str) -> ResultEntry | None:
        entry = self.find(job_id)
        if entry is None or entry.document != document:
            return None
        self._selected[document] = job_id
        return entry

    def selected(self, document: str) -> ResultEntry | None:
        job_id = self._selected.get(document)
        entry = self.find(job_id) if job_id else None
        return entry if entry is not None and entry.document == document else None

    def total_bytes(self) -> int:
        return sum(e.size_bytes for entries in self._entries.values() for e in entries)

    def _trim_bytes(self) -> None:
        """Drops the oldest entries of any document until all fits the byte budget (the newest stays)."""
        total = self.total_bytes()
        while total > self.max_bytes:
            candidates = [entries for entries in self._entries.values() if entries]
            oldest = min(candidates, key=lambda entries: entries[0].created)
            if sum(len(e) for e in candidates) <= 1:
                return
            total -= oldest.pop(0).size_bytes
