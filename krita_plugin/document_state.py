"""What the plugin keeps in the painter's document, and only after the painter asked for it: the recipe of
each applied layer, which layer guides each control kind (scribble, pose, ...) and which of them the plugin
created, the reference images (references.py) and the regions (regions.py).

Stored as one document annotation (saved in the .kra, invisible in the image). Nothing is written while the
painter merely paints with Live on, so a live session leaves the saved file exactly as the plugin-off one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

ANNOTATION_TYPE = "krita-live-diffusion"
ANNOTATION_DESCRIPTION = "Live Diffusion: applied layers' recipes and the guidance layers (by layer id)"
# 4: reference images and regions (older plugins read version 4 as 3: they ignore the new fields);
# 3: guidance by control kind; 2 had "scribble" and "pose" fields
STATE_VERSION = 4


@dataclass
class DocumentState:
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)  # layer id -> the recipe that made it
    guidance: dict[str, str] = field(default_factory=dict)  # control kind name -> the chosen layer's id
    guidance_layers: list[str] = field(default_factory=list)  # layers created with the panel's "+" buttons
    # Reference images, in the panel's order: {"layer": id} or {"file": path} plus kind, strength, start, end
    # (references.py reads them).
    references: list[dict[str, Any]] = field(default_factory=list)
    # Regions in adding order: {"layer": the region layer's id, "prompt": its prompt} (regions.py reads them).
    regions: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Any) -> DocumentState:
        if not isinstance(data, dict):
            return cls()
        if "version" not in data:  # the first format: layer id -> recipe, nothing else
            return cls(applied={k: v for k, v in data.items() if isinstance(v, dict)})
        applied = data.get("applied")
        layers = data.get("guidance_layers")
        return cls(
            applied={k: v for k, v in applied.items() if isinstance(v, dict)}
            if isinstance(applied, dict)
            else {},
            guidance=_guidance(data),
            guidance_layers=[x for x in layers if isinstance(x, str)] if isinstance(layers, list) else [],
            references=_list_of_dicts(data.get("references")),
            regions=_list_of_dicts(data.get("regions")),
        )

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **asdict(self)}


def _guidance(data: dict[str, Any]) -> dict[str, str]:
    saved = data.get("guidance")
    guidance = {k: v for k, v in saved.items() if isinstance(v, str) and v} if isinstance(saved, dict) else {}
    for old in ("scribble", "pose"):  # version 2's fields
        value = data.get(old)
        if isinstance(value, str) and value and old not in guidance:
            guidance[old] = value
    return guidance


def _list_of_dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def read_state(doc: Any) -> DocumentState:
    if ANNOTATION_TYPE not in list(doc.annotationTypes()):
        return DocumentState()
    try:
        data = json.loads(bytes(doc.annotation(ANNOTATION_TYPE)).decode("utf-8"))
    except ValueError:
        return DocumentState()
    return DocumentState.from_json(data)


def write_state(doc: Any, state: DocumentState) -> None:
    text = json.dumps(state.to_json(), indent=1, sort_keys=True)
    doc.setAnnotation(ANNOTATION_TYPE, ANNOTATION_DESCRIPTION, text.encode("utf-8"))


def record_applied(doc: Any, layer_id: str, recipe: dict[str, Any]) -> None:
    state = read_state(doc)
    clean = {k: v for k, v in recipe.items() if not k.startswith("_")}
    clean["applied_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    state.applied[layer_id] = clean
    write_state(doc, state)


def remember_guidance(doc: Any, choices: Mapping[str, str], *, created: str = "") -> None:
    """Stores the painter's guidance choices, kind name -> layer id ("" for none; a kind not in `choices`
    stays as it is); writes only on a change."""
    state = read_state(doc)
    before = state.to_json()
    for kind, layer_id in choices.items():
        if layer_id:
            state.guidance[kind] = layer_id
        else:
            state.guidance.pop(kind, None)
    if created and created not in state.guidance_layers:
        state.guidance_layers.append(created)
    if state.to_json() != before:
        write_state(doc, state)


def update_state(doc: Any, change: Callable[[DocumentState], None]) -> bool:
    """Applies `change` to the document's state and writes it only when something changed (a write marks the
    document modified); returns whether it wrote."""
    state = read_state(doc)
    before = state.to_json()
    change(state)
    if state.to_json() == before:
        return False
    write_state(doc, state)
    return True
