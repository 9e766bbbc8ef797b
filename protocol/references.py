"""Reference images (IP-Adapter): params `references` of a generating job (pure stdlib).

A reference is an image slot of the job whose CLIP vision embedding steers the result through an IP-Adapter:
its look and subject ("reference"), its style only ("style") or its layout only ("composition"). The two
narrower kinds feed the embedding to fewer of the UNet's attention blocks; which blocks is the backend's
per-family table, and a family without such a table refuses the kind with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .validate import bad, read_choice, read_float, read_slot, read_str, reject_unknown, require_object

MAX_REFERENCES = 4  # reference images guiding one job
REFERENCE_KINDS = ("reference", "style", "composition")
DEFAULT_REFERENCE_STRENGTH = 0.6  # the IP-Adapter scale painters start from: the prompt still counts


@dataclass
class ReferenceParam:
    """One reference image: its slot, the IP-Adapter file (None: the server's pick for the model's family),
    its strength (the IP-Adapter scale) and the part of the schedule it acts in."""

    image: str
    kind: str = "reference"
    model: str | None = None
    strength: float = DEFAULT_REFERENCE_STRENGTH
    start: float = 0.0
    end: float = 1.0

    @classmethod
    def from_dict(cls, data: Any) -> ReferenceParam:
        data = require_object(data, "a reference entry")
        reject_unknown(data, {"image", "kind", "model", "strength", "start", "end"}, "a reference entry")
        reference = cls(
            image=read_slot(data, "image"),
            kind=read_choice(data, "kind", REFERENCE_KINDS, "reference"),
            model=read_str(data, "model", None, max_length=500),
            strength=read_float(data, "strength", 0.0, 2.0, DEFAULT_REFERENCE_STRENGTH),
            start=read_float(data, "start", 0.0, 1.0, 0.0),
            end=read_float(data, "end", 0.0, 1.0, 1.0),
        )
        if reference.start > reference.end:
            raise bad(f"Reference 'start' ({reference.start}) is after 'end' ({reference.end}).")
        return reference
