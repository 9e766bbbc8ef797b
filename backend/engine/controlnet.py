"""ControlNet guidance for a job: choose the models, turn layers and keypoints into hint images, map them onto
the generation area."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from backend.model_errors import ModelError, ModelNotFoundError
from backend.model_families import SD15, SDXL, ModelFamily, describe_mismatch
from protocol.messages import ControlParam
from protocol.registry import CONTROL_KINDS, KEYPOINTS, pick_controlnet

from .images import control_to_tensor, flatten_on_white, resize_gray, resize_rgb
from .jobs import EngineInputError
from .loop import ControlUnit
from .model_choice import fitting_controlnets
from .modules import model_dtype
from .pose import parse_people, render_pose
from .region import Region
from .union_controlnet import as_kind


def choose_controlnet(store: Any, control: ControlParam, family: ModelFamily | None = None) -> str:
    """The job's ControlNet, or the store's first one whose name holds the kind's model-name words, out of
    those that may fit a checkpoint of `family` (None: any)."""
    if control.model is not None:
        return control.model
    installed = store.list_kind("controlnet")
    fitting = installed if family is None else fitting_controlnets(store, installed, family)
    chosen = pick_controlnet(fitting, control.kind)
    if chosen is not None:
        return chosen
    folder = store.folder("controlnet") if hasattr(store, "folder") else "models/controlnet"
    word = CONTROL_KINDS[control.kind].model_hints[0]
    wanted = SD15 if family is None else family
    other = pick_controlnet(installed, control.kind) if family is not None else None
    found = f" ({other} is made for another model family)" if other is not None else ""
    what = f"a ControlNet 1.1 {word}" if wanted is SD15 else f"an {wanted.label} {word} ControlNet"
    raise ModelNotFoundError(
        f"No {control.kind} ControlNet for {wanted.label} found{found}. Put {what} .safetensors file "
        f"(or its diffusers folder) in {folder}, or name one in the control's 'model'."
    )


def controlnet_model_family(model: Any) -> ModelFamily:
    """The family a loaded ControlNet serves: SDXL's embed the pooled text and size numbers as its UNet does
    (the `text_time` addition embedding); the loader serves no other family with one."""
    config = getattr(model, "config", None)
    added = config.get("addition_embed_type") if config is not None else None
    return SDXL if added == "text_time" else SD15


def check_family(name: str, model: Any, family: ModelFamily) -> None:
    """A ControlNet made for another family than the checkpoint's would fail inside the UNet call (its
    residuals and text features are of another size): refused here, naming both."""
    found = controlnet_model_family(model)
    if found is not family:
        raise ModelError(
            f"{describe_mismatch(f'ControlNet {name!r}', found, family)} Use an {family.label} ControlNet."
        )


def luminance(rgb: np.ndarray) -> np.ndarray:
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return (rgb.astype(np.float32) @ weights).round().clip(0, 255).astype(np.uint8)


def scribble_hint(image: np.ndarray) -> np.ndarray:
    """White lines on black, from a scribble drawn either way.

    A layer with transparency is strokes on an empty layer: the strokes are where the paint is (alpha),
    whatever their colour. An opaque image (or a gray one) has a background colour, the majority: when it is
    light, the lines are dark and are inverted.
    """
    if image.ndim == 3 and image.shape[2] == 4:
        alpha = image[..., 3]
        if (alpha < 128).mean() >= 0.05:
            lines = alpha
        else:
            lines = luminance(image[..., :3])
            if np.median(lines) > 127:
                lines = 255 - lines
    else:
        lines = image if image.ndim == 2 else luminance(image[..., :3])
        if np.median(lines) > 127:
            lines = 255 - lines
    return np.repeat(lines[..., None], 3, axis=2)


def drawn_hint(image: np.ndarray) -> np.ndarray:
    """A map drawn in the hint's own colours (a pose image, a depth or normal map): its colours as they are,
    transparent areas black (no guidance: for depth, the far distance)."""
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[..., 3:4].astype(np.uint32)
        return ((image[..., :3].astype(np.uint32) * alpha + 127) // 255).astype(np.uint8)
    return image[..., :3]


def tile_hint(image: np.ndarray) -> np.ndarray:
    """The tile ControlNet takes the image itself: transparent areas over white, as the canvas is."""
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        return flatten_on_white(image)
    return image[..., :3]


# How each control kind of protocol/registry.py turns its image into the ControlNet's hint (a test checks
# that every kind has one); keypoints are drawn by pose.render_pose. The ControlNet 1.1 annotators give
# line art, soft edges and canny edges as white lines on black: a painter's lines on an empty layer or dark
# lines on paper are turned into that as a scribble is (the "from image" layers of annotate.py are lines on
# an empty layer too). Depth and normal maps are taken as drawn.
HINT_MAKERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "scribble": scribble_hint,
    "pose": drawn_hint,
    "lineart": scribble_hint,
    "softedge": scribble_hint,
    "canny": scribble_hint,
    "depth": drawn_hint,
    "normal": drawn_hint,
    "tile": tile_hint,
}


def _to_canvas_size(hint: np.ndarray, width: int, height: int) -> np.ndarray:
    """Control layers of another size are stretched over the canvas."""
    if hint.ndim == 2:
        return resize_gray(hint, width, height)
    return resize_rgb(np.ascontiguousarray(hint), width, height)


def _check_image(image: np.ndarray, slot: str) -> None:
    ok = image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)))
    if not ok or min(image.shape[:2]) < 1:
        raise EngineInputError(
            f"Control image {slot!r} must be H x W x 4 RGBA or H x W gray uint8, "
            f"got {image.dtype} {image.shape}."
        )


def hint_image(
    control: ControlParam, images: Mapping[str, np.ndarray], canvas_size: tuple[int, int], region: Region
) -> np.ndarray:
    """The control's hint as a generation-sized RGB image (region.gen_height x region.gen_width x 3)."""
    width, height = canvas_size
    if CONTROL_KINDS[control.kind].input == KEYPOINTS and control.pose is not None:
        try:
            people = parse_people(control.pose)
        except ValueError as error:
            raise EngineInputError(str(error)) from None
        content = render_pose(
            people, canvas_size, (region.content_width, region.content_height), region.to_generation_point
        )
        pad = ((0, region.gen_height - content.shape[0]), (0, region.gen_width - content.shape[1]), (0, 0))
        return np.pad(content, pad)
    if control.image is None or control.image not in images:
        raise EngineInputError(
            f"The {control.kind} control's image {control.image!r} was not sent with the job."
        )
    image = images[control.image]
    _check_image(image, control.image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    hint = HINT_MAKERS[control.kind](image)
    hint = _to_canvas_size(hint, width, height)
    return region.rgb_to_generation(region.crop(hint), fill="zero")


def acts(control: ControlParam, steps: int) -> bool:
    """Whether the control changes anything over `steps` steps (strength 0 or an empty range: it doesn't)."""
    if control.strength == 0 or steps == 0:
        return False
    unit = ControlUnit(None, torch.empty(0), control.strength, control.start, control.end)
    return any(unit.scale_at(i, steps) != 0 for i in range(steps))


def build_controls(
    models: Any,
    controls: Sequence[ControlParam],
    images: Mapping[str, np.ndarray],
    canvas_size: tuple[int, int],
    region: Region,
    steps: int,
    device: torch.device,
    family: ModelFamily,
    chosen: Sequence[str | None] = (),
) -> tuple[list[ControlUnit], list[str | None]]:
    """ControlUnits for the controls that act, and the ControlNet names used (in order); `family` is the
    checkpoint's, which every ControlNet must be made for (ModelError otherwise).

    `chosen` holds each control's ControlNet as resolved when the job arrived (None: none fits; asked
    again here, which says what to install). A skipped control is never loaded, so its name is the one the
    job gave: None when it named none.
    """
    units: list[ControlUnit] = []
    names: list[str | None] = []
    for index, control in enumerate(controls):
        if control.kind not in CONTROL_KINDS or control.kind not in HINT_MAKERS:
            raise EngineInputError(f"Unknown control kind {control.kind!r}; known: {', '.join(HINT_MAKERS)}.")
        if not acts(control, steps):
            names.append(control.model)  # skipped, never loaded: it would only add zeros
            continue
        resolved = chosen[index] if index < len(chosen) else None
        name = resolved if resolved is not None else choose_controlnet(models.store, control, family)
        model = models.controlnet(name)
        check_family(name, model, family)
        model = as_kind(model, control.kind, name)
        hint = control_to_tensor(hint_image(control, images, canvas_size, region), device, model_dtype(model))
        units.append(ControlUnit(model, hint, control.strength, control.start, control.end))
        names.append(name)
    return units, names
