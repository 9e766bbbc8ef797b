"""Regions: params `regions` of a generating job, a prompt for part of the image (pure stdlib).

A region is a gray8 mask slot the size of the canvas (255 = inside; soft edges blend) and a prompt. Inside a
region the image follows the region's prompt joined with the document's (`region_prompt`); where no region
covers the canvas, the document's prompt alone; where regions overlap, their predictions blend by coverage.
The negative prompt is the document's everywhere. A job whose one region covers the whole canvas gives what a
plain job with `region_prompt(...)` as its prompt gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .validate import read_slot, read_str, reject_unknown, require_object

MAX_REGIONS = 8  # regions of one job: each costs one more prediction per step
MAX_REGION_PROMPT = 4000


@dataclass
class RegionParam:
    mask: str  # the slot of its gray8 coverage, the canvas's size
    prompt: str = ""

    @classmethod
    def from_dict(cls, data: Any) -> RegionParam:
        data = require_object(data, "a region entry")
        reject_unknown(data, {"mask", "prompt"}, "a region entry")
        return cls(mask=read_slot(data, "mask"), prompt=read_str(data, "prompt", "", MAX_REGION_PROMPT))


def region_prompt(region: str, document: str) -> str:
    """The prompt that applies inside a region: its own words first, then the document's."""
    parts = [part.strip() for part in (region, document) if part.strip()]
    return ", ".join(parts)
