"""What the plugin remembers about each job it sent: what made it, where its result goes, what it is for.

Pure data (no Qt, no Krita): the controller fills a record when a job leaves and reads it when its answer
comes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .placement import Rect


class Purpose(str, Enum):
    SHOW = "show"  # live frames and Generate: shown in the result view and kept in the history
    REFINE = "refine"  # the full-quality render of a fast preview the painter applied: replaces its pixels


@dataclass(frozen=True)
class SentImage:
    """One image of a job as it was sent, so the same inputs can be rendered again (Apply's refine)."""

    slot: str
    encoding: str  # a protocol encoding label
    width: int
    height: int
    payload: bytes


@dataclass
class JobRecord:
    job_id: str
    document: str  # the root node id of the document the job was captured from
    live: bool
    mode: str  # "img2img" or "inpaint"
    rect: Rect  # the document rectangle the job covers
    settings_json: str  # the panel's settings that made it (GenerationSettings.to_json)
    params: dict[str, Any]  # the request's params, as sent
    images: tuple[SentImage, ...] = ()
    purpose: Purpose = Purpose.SHOW

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0))

    @property
    def input_bytes(self) -> int:
        return sum(len(image.payload) for image in self.images)


class JobRecords:
    """The records of jobs still unanswered, oldest first; bounded so lost answers can't pile up."""

    def __init__(self, limit: int = 32) -> None:
        self.limit = limit
        self._records: OrderedDict[str, JobRecord] = OrderedDict()

    def add(self, record: JobRecord) -> None:
        self._records[record.job_id] = record
        while len(self._records) > self.limit:
            self._records.popitem(last=False)

    def get(self, job_id: str | None) -> JobRecord | None:
        return None if job_id is None else self._records.get(job_id)

    def pop(self, job_id: str | None) -> JobRecord | None:
        return None if job_id is None else self._records.pop(job_id, None)

    def pending(self, purpose: Purpose | None = None) -> list[JobRecord]:
        return [r for r in self._records.values() if purpose is None or r.purpose is purpose]

    def clear(self) -> list[JobRecord]:
        records = list(self._records.values())
        self._records.clear()
        return records

    def __len__(self) -> int:
        return len(self._records)
