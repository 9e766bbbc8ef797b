"""Apply as the painter meets it: the shown result goes into the document at once, and a fast preview is
rendered again at full quality by the backend, whose pixels then replace it in place (apply.py does the
document side; this module sends the render and routes its answer)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ._compat import protocol
from .apply import AppliedLayer, ApplyError, apply_as_layer, apply_onto_active, finish_merge, replace_pixels
from .history import ResultEntry
from .job_records import JobRecords, Purpose
from .job_tracking import JobIds
from .request_builder import assemble

Say = Callable[[str, bool], None]  # a message for the panel, and whether it is an error


class ApplyFlow:
    def __init__(
        self,
        network: Any,
        ids: JobIds,
        records: JobRecords,
        find_document: Callable[[str], Any | None],
        say: Say,
    ) -> None:
        self.network = network
        self.ids = ids
        self.records = records
        self.find_document = find_document
        self.say = say
        self.pending: dict[str, tuple[AppliedLayer, ResultEntry]] = {}  # refine job id -> where it goes

    def apply(self, doc: Any, entry: ResultEntry, *, onto: bool, connected: bool) -> None:
        refine = entry.fast_decoder and connected and bool(entry.record.images)
        try:
            if onto:
                applied = apply_onto_active(doc, entry, merge_now=not refine)
            else:
                applied = apply_as_layer(doc, entry)
        except ApplyError as problem:
            self.say(str(problem), True)
            return
        where = "onto the active layer" if onto else "as a new layer"
        if refine and self._send_refine(entry, applied):
            self.say(f"Applied {where}; the full-quality render replaces it in a moment.", False)
        else:
            if refine:  # the render could not be sent: what the painter saw stays, merged if asked
                self.finish(applied)
            self.say(f"Applied {where}.", False)

    def _send_refine(self, entry: ResultEntry, applied: AppliedLayer) -> bool:
        """The same inputs and parameters that made the preview, as a final (full-VAE) job."""
        record = entry.record
        job_id = self.ids.next("refine")
        params = protocol.JobParams.from_dict(record.params, protocol.Limits().max_steps)
        job = assemble(job_id, record.mode, False, params, record.images, protocol.Bounds(*record.rect))
        if not self.network.send(job.request, *job.frames):
            return False
        self.records.add(replace(record, job_id=job_id, live=False, purpose=Purpose.REFINE))
        self.pending[job_id] = (applied, entry)
        return True

    def refined(self, result: protocol.Result, frame: protocol.ImageFrame) -> Any | None:
        """The render arrived: into the history entry and the applied layer. Returns the document changed."""
        target = self.pending.pop(result.job_id, None)
        if target is None or frame.encoding is not protocol.ImageEncoding.BGRA8:
            return None
        applied, entry = target
        entry.refined(bytes(frame.payload), frame.width, frame.height, result.params)
        doc = self.find_document(applied.document)
        if doc is None:
            return None
        if not replace_pixels(doc, applied, entry):
            self.say("The full-quality render is in the history (the applied layer changed).", False)
        if applied.merge_into:
            finish_merge(doc, applied)
        return doc

    def ended(self, job_id: str) -> None:
        """A render that will never come (failed, cancelled, disconnected): keep what the painter saw."""
        target = self.pending.pop(job_id, None)
        if target is not None:
            self.finish(target[0])

    def finish(self, applied: AppliedLayer) -> None:
        doc = self.find_document(applied.document)
        if doc is not None and applied.merge_into:
            finish_merge(doc, applied)
