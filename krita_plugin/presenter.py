"""Shows a document's selected result and its history in the panel and in every result docker."""

from __future__ import annotations

from typing import Any

from .history import ResultHistory
from .panel import Panel
from .result_view import entry_image, result_hub


def present(panel: Panel, history: ResultHistory, document: str) -> None:
    entry = history.selected(document)
    if entry is None:
        image, caption, aspect = None, "", 0.0
    else:
        image = entry_image(entry.pixels, entry.width, entry.height)
        caption = entry.label + (" · fast preview" if entry.fast_decoder else "")
        # Results at the working size are shown in the shape of the document rectangle they cover.
        aspect = entry.rect[2] / max(1, entry.rect[3])
    panel.result_view.set_image(image, caption, aspect)
    result_hub.shown.emit(image, caption, aspect)
    panel.history.set_entries(
        [(e.job_id, e.label) for e in history.entries(document)],
        lambda job_id: _image(history, job_id),
        entry.job_id if entry is not None else "",
    )
    panel.set_can_apply(entry is not None)


def _image(history: ResultHistory, job_id: str) -> Any:
    entry = history.find(job_id)
    return None if entry is None else entry_image(entry.pixels, entry.width, entry.height)
