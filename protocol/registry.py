"""The tables both sides read: control kinds, samplers and job modes (pure stdlib).

A new control kind or sampler starts here. The protocol validates jobs against these tables, the server's
welcome lists them and the plugin offers them; the backend keeps the implementations, keyed by these names
(a sampler's scheduler in backend/engine/samplers.py, a kind's hint image in backend/engine/controlnet.py,
the control image a `from_image` kind makes of the canvas in backend/engine/annotate.py), and tests check
that every name here has one. The plugin builds a guidance row per kind from here (its label, a layer of the
kind's input, the ControlNet its model words pick, a "from image" button for a `from_image` kind) and
sends each chosen layer as that kind. Tests add throw-away entries with `monkeypatch.setitem`: everything
reads these dictionaries when it runs, never a copy taken at import.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# How a control is guided: an image slot of the job, or pose keypoints (the backend draws the skeleton; a
# keypoints kind takes a ready-made hint image too).
IMAGE = "image"
KEYPOINTS = "keypoints"
CONTROL_INPUTS = (IMAGE, KEYPOINTS)


@dataclass(frozen=True)
class ControlKind:
    name: str  # the wire name: a control's `kind`
    input: str  # IMAGE or KEYPOINTS
    # Words in a ControlNet file's name that suit this kind, best first: a control that names no model gets
    # the first file holding the first word that any file holds (backend and plugin pick alike).
    model_hints: tuple[str, ...]
    label: str  # what the plugin's panel calls it
    # The backend can make this kind's control image from the canvas (a `control_image` job): an edge
    # detector, an estimator model or the image itself.
    from_image: bool = False
    # Its mode in a union ControlNet (one file for many kinds: xinsir's controlnet-union-sdxl and its
    # "promax" variant number them 0 openpose, 1 depth, 2 hed/pidi/scribble, 3 canny/lineart/mlsd,
    # 4 normal, 5 segment, 6 tile, 7 repaint); None: no union ControlNet serves it.
    union_mode: int | None = None


@dataclass(frozen=True)
class Sampler:
    name: str  # the wire name: a job's `sampler`
    label: str  # what the plugin's panel calls it


CONTROL_KINDS: dict[str, ControlKind] = {
    kind.name: kind
    for kind in (
        ControlKind("scribble", IMAGE, ("scribble", "sketch", "lineart"), "Scribble", union_mode=2),
        ControlKind("pose", KEYPOINTS, ("openpose", "pose"), "Pose", union_mode=0),
        # The ControlNet 1.1 kinds (control_v11p_sd15_lineart, ..._softedge, ..._canny,
        # control_v11f1p_sd15_depth, control_v11p_sd15_normalbae, control_v11f1e_sd15_tile) and their common
        # SDXL counterparts (controlnet-canny-sdxl-1.0, controlnet-depth-sdxl-1.0, MistoLine,
        # controlnet-tile-sdxl-1.0, ...).
        ControlKind(
            "lineart", IMAGE, ("lineart", "line_art", "line-art", "mistoline"), "Line art", True, union_mode=3
        ),
        ControlKind(
            "softedge",
            IMAGE,
            ("softedge", "soft_edge", "soft-edge", "_hed", "-hed", "pidi"),
            "Soft edge",
            union_mode=2,
        ),
        ControlKind("canny", IMAGE, ("canny",), "Canny", True, union_mode=3),
        ControlKind("depth", IMAGE, ("depth",), "Depth", True, union_mode=1),
        ControlKind("normal", IMAGE, ("normalbae", "normal"), "Normal map", union_mode=4),
        ControlKind("tile", IMAGE, ("tile",), "Tile", True, union_mode=6),
    )
}

UNION_WORD = "union"  # in a union ControlNet's name (controlnet-union-sdxl-1.0, ...)

# Distilled few-step LoRAs each need the sampler they were trained with: the label names the LoRA.
SAMPLERS: dict[str, Sampler] = {
    sampler.name: sampler
    for sampler in (
        Sampler("lcm", "LCM"),
        Sampler("euler", "Euler"),
        Sampler("euler_a", "Euler a"),
        Sampler("euler_trailing", "Euler, trailing (SDXL Lightning)"),
        Sampler("tcd", "TCD (Hyper-SD, TCD-LoRA)"),
        Sampler("ddim_trailing", "DDIM, trailing (Hyper-SD)"),
        Sampler("lcm_trailing", "LCM, trailing (DMD2)"),
        Sampler("euler_a_trailing", "Euler a, trailing (SDXL-Turbo)"),
    )
}

# A `control_image` job makes the control image of its params' `control_kind` (a `from_image` kind) from its
# canvas, and answers with it as the result: the layer a painter then guides that kind with.
CONTROL_IMAGE = "control_image"
# An `upscale` job enlarges its canvas (or its mask's box) with an upscale model or Lanczos, then refines it
# with img2img over tiles at the model family's working size (params `upscale`; backend/engine/upscale.py).
UPSCALE = "upscale"
MODES = ("img2img", "inpaint", CONTROL_IMAGE, UPSCALE)


@dataclass(frozen=True)
class FamilyInfo:
    """What a client needs to know of a model family (the backend's rows: backend/model_families.py)."""

    name: str  # as the model lists' `families` name it
    label: str  # for painters
    native_side: int  # pixels per side the base model was trained at: the working size at resolution 1
    # The reference-image kinds (protocol/references.py) its checkpoints take: "style" and "composition" need
    # the family's style blocks (backend/engine/references.py's STYLE_BLOCKS).
    reference_kinds: tuple[str, ...] = ("reference",)


MODEL_FAMILIES: dict[str, FamilyInfo] = {
    info.name: info
    for info in (
        FamilyInfo("sd15", "SD 1.5", 512),
        FamilyInfo("sdxl", "SDXL", 1024, ("reference", "style", "composition")),
    )
}


def family_label(name: str) -> str:
    info = MODEL_FAMILIES.get(name)
    return info.label if info else name.upper()


def family_native_side(name: str | None, default: int = 512) -> int:
    info = MODEL_FAMILIES.get(name or "")
    return info.native_side if info else default


def family_reference_kinds(name: str | None) -> tuple[str, ...] | None:
    """The reference kinds a checkpoint of family `name` takes; None for a family this side doesn't know (the
    server then says what it takes)."""
    info = MODEL_FAMILIES.get(name or "")
    return info.reference_kinds if info else None


def pick_controlnet(names: Iterable[str], kind: str) -> str | None:
    """The ControlNet (out of `names`, in their order) that a control of `kind` uses when it names none:
    by the kind's model-name words, best word first, case-insensitive; failing those, a union ControlNet
    (`UNION_WORD` in its name) for a kind with a `union_mode`; None when no name fits."""
    names = list(names)
    control_kind = CONTROL_KINDS[kind]
    for word in control_kind.model_hints:
        for name in names:
            if word in name.lower() and UNION_WORD not in name.lower():
                return name
    if control_kind.union_mode is not None:
        return next((name for name in names if UNION_WORD in name.lower()), None)
    return None


def keypoint_kinds() -> list[str]:
    """The control kinds that can carry pose keypoints."""
    return [kind.name for kind in CONTROL_KINDS.values() if kind.input == KEYPOINTS]


def from_image_kinds() -> list[str]:
    """The control kinds a `control_image` job can make from the canvas."""
    return [kind.name for kind in CONTROL_KINDS.values() if kind.from_image]


def sampler_label(name: str) -> str:
    """What the panel shows for a sampler: its label, or the name itself for one this table doesn't know
    (a newer server may offer it)."""
    sampler = SAMPLERS.get(name)
    return sampler.label if sampler is not None else name
