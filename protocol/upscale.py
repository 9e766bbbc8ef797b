"""The `upscale` job: its parameters (params `upscale`) and the rules an upscale job keeps (pure stdlib).

An upscale job enlarges its canvas, or the bounding box of its mask's selection, by `factor` (or to `size`)
with an upscale model or Lanczos, then refines the result with img2img over tiles at the model family's
working size (backend/engine/upscale.py). Its result is one image of the enlarged size covering the region's
document rectangle: its pixels are denser than its bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ErrorCode, ProtocolError
from .registry import UPSCALE
from .validate import bad, read_bool, read_float, read_list, read_str, reject_unknown, require_object

DEFAULT_FACTOR = 2.0
# Per side. 4x is what the common upscale models do in one pass; more would refine mostly invented detail.
MIN_FACTOR, MAX_FACTOR = 1.0, 4.0
# The largest result side: an 8192 x 8192 RGBA result is 256 MiB, the most one result frame carries
# (Limits.max_upscale_side states it; the server's unread-bytes room and the plugin's incoming limit fit it).
MAX_UPSCALE_SIDE = 8192
MAX_MODEL_NAME = 500
# The tile ControlNet's strength in the refine when one of the family is installed: it holds each tile to
# its own pixels, so a refine can add detail at a higher strength without redrawing the picture.
DEFAULT_TILE_CONTROL = 0.6


@dataclass
class UpscaleParam:
    """How an upscale job enlarges its region. Exactly one of `factor` and `size` is set once read."""

    factor: float | None = DEFAULT_FACTOR  # times the region's width and height (1..4)
    size: list[int] | None = None  # [width, height] of the result's pixels instead of a factor
    model: str | None = None  # a file of the model lists' `upscale_models`; None: plain Lanczos
    refine: bool = True  # the tiled img2img pass at the new size (with the job's strength, steps, ...)
    tile_control: float = DEFAULT_TILE_CONTROL  # the tile ControlNet's strength in the refine; 0: none

    @classmethod
    def from_dict(cls, data: Any) -> UpscaleParam:
        data = require_object(data, "upscale")
        reject_unknown(data, {"factor", "size", "model", "refine", "tile_control"}, "upscale")
        factor = read_float(data, "factor", MIN_FACTOR, MAX_FACTOR, None)
        size = _read_size(data)
        if factor is not None and size is not None:
            raise bad("'upscale' takes a 'factor' or a 'size', not both.")
        return cls(
            factor=DEFAULT_FACTOR if factor is None and size is None else factor,
            size=size,
            model=read_str(data, "model", None, MAX_MODEL_NAME),
            refine=read_bool(data, "refine", True),
            tile_control=read_float(data, "tile_control", 0.0, 2.0, DEFAULT_TILE_CONTROL),
        )

    def result_size(self, width: int, height: int) -> tuple[int, int]:
        """The result's pixels for a region of width x height pixels."""
        if self.size is not None:
            return self.size[0], self.size[1]
        factor = DEFAULT_FACTOR if self.factor is None else self.factor
        return max(1, round(width * factor)), max(1, round(height * factor))

    def too_large(self, width: int, height: int, max_side: int) -> str | None:
        """Why upscaling a width x height region gives too large a result (a sentence), or None."""
        result_width, result_height = self.result_size(width, height)
        if max(result_width, result_height) <= max_side:
            return None
        return (
            f"Upscaling {width}x{height} gives {result_width}x{result_height}, over the largest upscale "
            f"result side of {max_side}: choose a smaller factor or region."
        )

    def size_problem(self, width: int, height: int) -> str | None:
        """Why `size` doesn't suit a width x height region (a sentence), or None when it does."""
        result_width, result_height = self.result_size(width, height)
        if self.size is not None:
            for side, region, axis in ((result_width, width, "width"), (result_height, height, "height")):
                if not region * MIN_FACTOR <= side <= region * MAX_FACTOR:
                    return (
                        f"The upscale 'size' {result_width}x{result_height} must be 1 to {MAX_FACTOR:g} "
                        f"times the region's {axis} ({width}x{height})."
                    )
        return None


def _read_size(data: dict[str, Any]) -> list[int] | None:
    value = read_list(data, "size", 2, None)
    if value is None:
        return None
    numbers = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    if len(value) != 2 or len(numbers) != 2 or not all(1 <= v <= 2**16 for v in numbers):
        raise bad("The upscale 'size' must be [width, height] in whole pixels.")
    return numbers


def check_upscale_job(
    mode: str,
    upscale: UpscaleParam | None,
    *,
    live: bool,
    batch: int,
    has_controls: bool,
    canvas: tuple[int, int],
    mask: tuple[str, int, int] | None,
    max_side: int,
) -> UpscaleParam | None:
    """An upscale job's parameters with their defaults (None for other modes, which must carry none).

    What can be told before the pixels arrive is refused here: a live, batch or guided upscale, a mask that
    isn't a canvas-sized gray8 image, a `size` that doesn't suit the canvas, and a result over `max_side`
    (`too_large`) for the whole canvas (with a mask, the selection's box is known only once the mask is read:
    the backend checks it then)."""
    if mode != UPSCALE:
        if upscale is not None:
            raise bad(f"'upscale' belongs to {UPSCALE} jobs; this job's mode is {mode!r}.")
        return None
    if live or batch != 1 or has_controls:
        raise bad(
            f"An {UPSCALE} job is not live and has no 'controls', 'references' or 'regions' and no 'batch' "
            "above 1."
        )
    upscale = upscale or UpscaleParam()
    if mask is not None:
        encoding, width, height = mask
        if encoding != "gray8" or (width, height) != canvas:
            raise bad("The mask must be gray8 and the same size as the canvas.")
        if upscale.size is not None and max(upscale.size) > max_side:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"The upscale 'size' {upscale.size} is over the largest upscale result side of {max_side}.",
            )
        return upscale
    problem = upscale.size_problem(*canvas)
    if problem is not None:
        raise bad(problem)
    too_large = upscale.too_large(canvas[0], canvas[1], max_side)
    if too_large is not None:
        raise ProtocolError(ErrorCode.TOO_LARGE, too_large)
    return upscale
