"""Control images made from the canvas: `control_image` jobs (protocol/registry.py's CONTROL_IMAGE).

The painter presses "from image" on a guidance row and gets a layer of that kind to guide with, computed here
so that Krita stays light. The layer is what the kind's hint maker (controlnet.HINT_MAKERS) turns back into
exactly the hint the ControlNet 1.1 annotator gives:

- line kinds (canny, line art) come back as lines on an empty layer (alpha = the line's strength, RGB
  black), as a painter draws them: the scribble hint maker reads the alpha as white lines on black;
- depth comes back opaque, gray, near = white (as the depth annotators give it); tile as the image itself.

Canny is computed here (numpy, OpenCV's algorithm: Sobel gradients, non-maximum suppression, hysteresis);
depth and line art run their estimator models (backend/loading/annotators.py finds and loads them; a missing
one is a ModelNotFoundError naming the file). The transparent canvas is composited over white first, as
generations see it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from protocol.registry import CONTROL_IMAGE, CONTROL_KINDS

from .images import flatten_on_white, with_alpha
from .jobs import EngineInputError, EngineJob, EngineResult

# ControlNet 1.1's canny annotator runs OpenCV's Canny with these thresholds (on the L1 gradient norm).
CANNY_LOW, CANNY_HIGH = 100, 200
# The line-art annotator sees the image at this short side (the annotators' "detect resolution").
LINEART_SIDE = 512
TAN_22_5 = math.tan(math.radians(22.5))
TAN_67_5 = math.tan(math.radians(67.5))


# --- canny --------------------------------------------------------------------------------------------------


def canny_edges(image: np.ndarray, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> np.ndarray:
    """Canny edges of an H x W x 3 (or H x W) uint8 image: H x W uint8, 255 on edges, 0 elsewhere.

    As OpenCV computes it (and so ControlNet's canny annotator): 3x3 Sobel gradients without smoothing,
    borders replicated; for a colour image each pixel takes the channel with the largest |dx| + |dy|;
    non-maximum suppression along the gradient's direction (horizontal, vertical or diagonal, split at
    22.5 and 67.5 degrees); pixels above `high` are edges, and pixels above `low` are edges when connected
    (8-neighbourhood) to one.
    """
    channels = image[..., None] if image.ndim == 2 else image[..., :3]
    dx, dy = _sobel(channels.astype(np.int32))
    magnitude = np.abs(dx) + np.abs(dy)
    if magnitude.shape[2] > 1:
        best = magnitude.argmax(axis=2)[..., None]
        dx, dy, magnitude = (np.take_along_axis(a, best, axis=2) for a in (dx, dy, magnitude))
    dx, dy, magnitude = dx[..., 0], dy[..., 0], magnitude[..., 0]
    peaks = _local_maxima(dx, dy, magnitude) & (magnitude > low)
    edges = _hysteresis(peaks & (magnitude > high), peaks)
    return edges.astype(np.uint8) * 255


def _sobel(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = image.shape[:2]

    def at(row: int, col: int) -> np.ndarray:
        return padded[row : row + height, col : col + width]

    dx = (at(0, 2) + 2 * at(1, 2) + at(2, 2)) - (at(0, 0) + 2 * at(1, 0) + at(2, 0))
    dy = (at(2, 0) + 2 * at(2, 1) + at(2, 2)) - (at(0, 0) + 2 * at(0, 1) + at(0, 2))
    return dx, dy


def _local_maxima(dx: np.ndarray, dy: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """Where the magnitude peaks across the edge: larger than the neighbour on one side and at least the
    other's (the tie rule keeps one pixel of a two-pixel ridge); zero beyond the image's border."""
    height, width = magnitude.shape
    padded = np.pad(magnitude, 1)

    def neighbour(row: int, col: int) -> np.ndarray:
        return padded[1 + row : 1 + row + height, 1 + col : 1 + col + width]

    ax, ay = np.abs(dx).astype(np.float64), np.abs(dy).astype(np.float64)
    horizontal = ay < ax * TAN_22_5
    vertical = ay > ax * TAN_67_5
    diagonal = ~(horizontal | vertical)
    same_sign = (dx > 0) == (dy > 0)  # the gradient points down-right or up-left (rows grow downwards)
    peak_h = (magnitude > neighbour(0, -1)) & (magnitude >= neighbour(0, 1))
    peak_v = (magnitude > neighbour(-1, 0)) & (magnitude >= neighbour(1, 0))
    peak_main = (magnitude > neighbour(-1, -1)) & (magnitude > neighbour(1, 1))
    peak_anti = (magnitude > neighbour(-1, 1)) & (magnitude > neighbour(1, -1))
    peak_d = np.where(same_sign, peak_main, peak_anti)
    return (horizontal & peak_h) | (vertical & peak_v) | (diagonal & peak_d)


def _hysteresis(strong: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """`strong` grown through `candidates` (8-connected). A search from the weak pixels touching strong
    ones: it visits only the weak pixels that become edges, however long their chains."""
    edges = np.pad(strong, 1)
    weak = np.pad(candidates & ~strong, 1)
    width = edges.shape[1]
    touching = np.zeros_like(edges)
    for row in (-1, 0, 1):
        for col in (-1, 0, 1):
            touching |= np.roll(edges, (row, col), axis=(0, 1))
    flat_edges, flat_weak = edges.reshape(-1), weak.reshape(-1)
    stack = np.flatnonzero(touching.reshape(-1) & flat_weak).tolist()
    flat_edges[stack] = True
    flat_weak[stack] = False
    steps = (-width - 1, -width, -width + 1, -1, 1, width - 1, width, width + 1)
    while stack:
        index = stack.pop()
        for step in steps:
            neighbour = index + step
            if flat_weak[neighbour]:  # the padding is never weak: no index leaves the array
                flat_weak[neighbour] = False
                flat_edges[neighbour] = True
                stack.append(neighbour)
    return edges[1:-1, 1:-1]


# --- estimator models ---------------------------------------------------------------------------------------


def _image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x H x W float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0


def _resized(tensor: torch.Tensor, height: int, width: int, mode: str = "bicubic") -> torch.Tensor:
    if tuple(tensor.shape[-2:]) == (height, width):
        return tensor
    return F.interpolate(tensor, size=(height, width), mode=mode, align_corners=False, antialias=True)


def _to_gray8(unit: torch.Tensor) -> np.ndarray:
    """H x W floats in [0, 1] -> uint8."""
    return (unit.float() * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def estimate_depth(estimator: Any, rgb: np.ndarray, device: torch.device, dtype: torch.dtype) -> np.ndarray:
    """Relative depth, near = white, at the image's size (H x W uint8), as the depth annotators give it:
    the model's output scaled back up, then stretched over 0..255."""
    height, width = rgb.shape[:2]
    in_height, in_width = estimator.input_size(height, width)
    pixels = _resized(_image_tensor(rgb), in_height, in_width).clamp(0, 1)
    mean = torch.tensor(estimator.mean).view(1, 3, 1, 1)
    std = torch.tensor(estimator.std).view(1, 3, 1, 1)
    pixels = ((pixels - mean) / std).to(device=device, dtype=dtype)
    predicted = estimator.model(pixel_values=pixels).predicted_depth  # 1 x h x w, larger = nearer
    depth = F.interpolate(
        predicted[:, None].float(), size=(height, width), mode="bicubic", align_corners=False
    )
    depth = depth[0, 0]
    low, high = depth.min(), depth.max()
    unit = (depth - low) / (high - low) if float(high - low) > 0 else torch.zeros_like(depth)
    return _to_gray8(unit)


def detect_lineart(model: Any, rgb: np.ndarray, device: torch.device, dtype: torch.dtype) -> np.ndarray:
    """Line art, white lines on black (H x W uint8), as ControlNet 1.1's line-art annotator gives it: the
    model sees the image at LINEART_SIDE on its short side and draws dark lines on white, inverted here."""
    height, width = rgb.shape[:2]
    scale = LINEART_SIDE / min(height, width)
    in_height, in_width = (max(8, round(side * scale / 8) * 8) for side in (height, width))
    pixels = _resized(_image_tensor(rgb), in_height, in_width).clamp(0, 1).to(device=device, dtype=dtype)
    paper = model(pixels).float()
    paper = F.interpolate(paper, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    return _to_gray8(1 - paper.clamp(0, 1))


# --- the layers ---------------------------------------------------------------------------------------------


def line_layer(lines: np.ndarray) -> np.ndarray:
    """White-on-black lines as a layer of black lines on an empty layer: alpha = the lines."""
    return with_alpha(np.zeros((*lines.shape, 3), dtype=np.uint8), lines)


def gray_layer(gray: np.ndarray) -> np.ndarray:
    return with_alpha(np.repeat(gray[..., None], 3, axis=2))


class Annotator:
    """Runs `control_image` jobs on the engine's device. The estimator models come from the model source's
    `annotators` when it has them, else from the store's `annotators/` folders (loaded on first use)."""

    def __init__(self, models: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.models = models
        self.device = device
        self.dtype = dtype
        self._estimators: Any = getattr(models, "annotators", None)

    @property
    def estimators(self) -> Any:
        if self._estimators is None:
            # The only place the engine meets a loader: on first use, when the model source brings none.
            from backend.loading.annotators import AnnotatorModels

            self._estimators = AnnotatorModels(self.models.store, self.device, self.dtype)
        return self._estimators

    def run(self, job: EngineJob) -> EngineResult:
        kind = job.params.control_kind
        make = ANNOTATORS.get(kind or "")
        if make is None or kind not in CONTROL_KINDS:
            known = ", ".join(ANNOTATORS)
            raise EngineInputError(
                f"No control image of kind {kind!r} is made from the image; known: {known}."
            )
        started = time.perf_counter()
        height, width = job.canvas.shape[:2]
        rgb = flatten_on_white(job.canvas)
        with torch.inference_mode():
            layer, source = make(self, rgb)
        seconds = time.perf_counter() - started
        params = job.params.to_dict()
        params.update(
            mode=CONTROL_IMAGE, annotator=source, generation_size=[width, height], seeds=[job.params.seed]
        )
        return EngineResult(layer, (0, 0, width, height), params, {"annotate": seconds, "total": seconds})

    def canny(self, rgb: np.ndarray) -> tuple[np.ndarray, str]:
        return line_layer(canny_edges(rgb)), f"canny ({CANNY_LOW}, {CANNY_HIGH})"

    def depth(self, rgb: np.ndarray) -> tuple[np.ndarray, str]:
        estimator, name = self.estimators.depth()
        return gray_layer(estimate_depth(estimator, rgb, self.device, self.dtype)), name

    def lineart(self, rgb: np.ndarray) -> tuple[np.ndarray, str]:
        model, name = self.estimators.lineart()
        return line_layer(detect_lineart(model, rgb, self.device, self.dtype)), name

    def tile(self, rgb: np.ndarray) -> tuple[np.ndarray, str]:
        return with_alpha(rgb), "the image"


# How each `from_image` kind of protocol/registry.py is made from the canvas (a test checks that every such
# kind has one): the layer (H x W x 4 RGBA at the canvas's size) and what made it, for the result's params.
ANNOTATORS: dict[str, Callable[[Annotator, np.ndarray], tuple[np.ndarray, str]]] = {
    "canny": Annotator.canny,
    "depth": Annotator.depth,
    "lineart": Annotator.lineart,
    "tile": Annotator.tile,
}
