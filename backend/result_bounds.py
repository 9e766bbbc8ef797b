"""Where a result lands in the document: the engine reports rectangles in canvas-image pixels; the job's
`bounds` say which document rectangle that image covers (the client may send the canvas scaled down)."""

from __future__ import annotations

from protocol import JobRequest

Rect = tuple[int, int, int, int]  # x, y, width, height


def document_bounds(canvas_rect: Rect, request: JobRequest) -> Rect:
    """A rectangle of the canvas image -> document coordinates.

    A canvas sent at its bounds' size just moves by the bounds' offset. A smaller one scales by bounds.w /
    image.w and bounds.h / image.h, rounded outward (the whole rectangle stays covered) in exact integer
    arithmetic, and never past the bounds' edge (the rectangle stays inside the document)."""
    x, y, width, height = canvas_rect
    bounds = request.bounds
    if bounds is None:
        return canvas_rect
    canvas = next(image for image in request.images if image.slot == "canvas")
    left, right = _scale_span(x, x + width, bounds.width, canvas.width)
    top, bottom = _scale_span(y, y + height, bounds.height, canvas.height)
    return bounds.x + left, bounds.y + top, right - left, bottom - top


def _scale_span(start: int, end: int, document: int, image: int) -> tuple[int, int]:
    if document == image:
        return start, end
    return start * document // image, min(document, -(-end * document // image))
