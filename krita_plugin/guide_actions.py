"""What the panel's References and Regions sections do: the painter's clicks and edits become the active
document's state (references.py, regions.py), and the document's state is shown in the rows.

Kept out of the controller, which only builds this, refreshes it with the layer lists and asks for a live
check after each change (`changed`). Nothing here touches the painter's layers or the undo history: adding a
reference or a region writes the document's annotation only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .document_state import DocumentState, read_state
from .reference_rows import ReferenceRows
from .references import (
    FileImages,
    ReferenceEntry,
    ReferenceError,
    add_layer_reference,
    add_reference,
    layer_choices,
    references,
    store_references,
)
from .region_rows import RegionRows
from .regions import RegionError, add_region, regions, remove_region, set_region_prompt
from .safe import guarded


class GuideActions:
    def __init__(
        self,
        reference_rows: ReferenceRows,
        region_rows: RegionRows,
        files: FileImages,
        document: Callable[[], Any | None],
        tell: Callable[[str, bool], None],
        changed: Callable[[bool], None],
    ) -> None:
        """`document`: the active document (None without one); `tell(text, error)`: the panel's message;
        `changed(typing)`: the inputs of the next job changed (typing: wait until the typing pauses)."""
        self.reference_rows = reference_rows
        self.region_rows = region_rows
        self.files = files
        self.document = document
        self.tell = tell
        self.changed = changed
        reference_rows.add_layer_clicked.connect(self.on_add_layer_reference)
        reference_rows.file_chosen.connect(self.on_add_file_reference)
        reference_rows.changed.connect(self.on_references_edited)
        reference_rows.remove_clicked.connect(self.on_remove_reference)
        region_rows.add_clicked.connect(self.on_add_region)
        region_rows.prompt_edited.connect(self.on_region_prompt)
        region_rows.remove_clicked.connect(self.on_remove_region)

    def show(self, doc: Any, state: DocumentState | None = None) -> None:
        """The rows show this document's references and regions (after a switch, and with the layer lists)."""
        state = state or read_state(doc)
        entries = references(doc, state)
        missing = {e.path for e in entries if e.path and self.files.get(e.path) is None}
        self.reference_rows.set_references(entries, layer_choices(doc), missing)
        self.region_rows.set_regions(regions(doc, state))

    # --- references -----------------------------------------------------------------------------------------

    @guarded
    def on_add_layer_reference(self) -> None:
        doc = self._doc()
        if doc is None:
            return
        try:
            add_layer_reference(doc)
        except ReferenceError as problem:
            self.tell(str(problem), True)
            return
        self.show(doc)
        self.tell(f"Reference added: layer “{doc.activeNode().name()}”.", False)
        self.changed(False)

    @guarded
    def on_add_file_reference(self, path: str) -> None:
        doc = self._doc()
        if doc is None:
            return
        if self.files.get(path) is None:
            self.tell(f"Can't read {os.path.basename(path)} as a picture.", True)
            return
        try:
            add_reference(doc, ReferenceEntry(path=path))
        except ReferenceError as problem:
            self.tell(str(problem), True)
            return
        self.show(doc)
        self.tell(f"Reference added: {os.path.basename(path)}.", False)
        self.changed(False)

    @guarded
    def on_references_edited(self) -> None:
        doc = self.document()
        if doc is not None and store_references(doc, self.reference_rows.entries()):
            self.changed(True)  # a slider being dragged: one job once it settles

    @guarded
    def on_remove_reference(self, index: int) -> None:
        doc = self.document()
        if doc is None:
            return
        entries = self.reference_rows.entries()
        if 0 <= index < len(entries):
            del entries[index]
            store_references(doc, entries)
        self.show(doc)
        self.changed(False)

    # --- regions --------------------------------------------------------------------------------------------

    @guarded
    def on_add_region(self) -> None:
        doc = self._doc()
        if doc is None:
            return
        try:
            region = add_region(doc)
        except RegionError as problem:
            self.tell(str(problem), True)
            return
        self.show(doc)
        box = self.region_rows.prompt_box(region.layer_id)
        if box is not None:
            box.setFocus()
        self.tell(f"Region “{region.name}”: type what it shows; it applies where the layer has paint.", False)
        self.changed(False)

    @guarded
    def on_region_prompt(self, layer_id: str, prompt: str) -> None:
        doc = self.document()
        if doc is not None and set_region_prompt(doc, layer_id, prompt):
            self.changed(True)

    @guarded
    def on_remove_region(self, layer_id: str) -> None:
        doc = self.document()
        if doc is None:
            return
        remove_region(doc, layer_id)
        self.show(doc)
        self.changed(False)

    def _doc(self) -> Any | None:
        doc = self.document()
        if doc is None:
            self.tell("Open or create an image first.", True)
        return doc
