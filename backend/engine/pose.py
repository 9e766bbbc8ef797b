"""Renders OpenPose body-18 keypoints as the colour skeleton the openpose ControlNet was trained on.

Keypoints arrive as data (canvas pixels), so a pose stays editable and is drawn sharp at whatever size the
generation runs. Layout (COCO-18 as OpenPose orders it): 0 nose, 1 neck, 2-4 right shoulder/elbow/wrist, 5-7
left shoulder/elbow/wrist, 8-10 right hip/knee/ankle, 11-13 left hip/knee/ankle, 14/15 right/left eye, 16/17
right/left ear. Right-side parts are drawn in warm colours, left-side in cool ones, as OpenPose does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

KEYPOINTS = 18
# The 17 limbs the body renderer draws (pairs of keypoint indices); limb i takes colour i.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
# OpenPose's palette: one hue per keypoint, stepping around the colour wheel.
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
LIMB_DIM = 0.6  # limbs are darker than joints, as in the training renders
REFERENCE_SIZE = 512  # at this size sticks are 4 px half-wide and joints have radius 4
STICK_HALF_WIDTH = 4
JOINT_RADIUS = 4

Point = tuple[float, float]


def parse_people(people: Any) -> list[list[Point | None]]:
    """Validate pose data: a list of people, each a list of at most 18 keypoints [x, y] or None.

    Malformed structure raises ValueError with a clear message; a keypoint that is missing (None), not finite
    or far out of range is simply treated as missing, as OpenPose tools emit such points.
    """
    if not isinstance(people, (list, tuple)):
        raise ValueError("Pose data must be a list of people, each a list of 18 [x, y] keypoints.")
    parsed: list[list[Point | None]] = []
    for number, person in enumerate(people):
        if not isinstance(person, (list, tuple)) or len(person) > KEYPOINTS:
            raise ValueError(f"Person {number} in the pose must be a list of at most {KEYPOINTS} keypoints.")
        points: list[Point | None] = []
        for point in person:
            if point is None:
                points.append(None)
                continue
            if (
                not isinstance(point, (list, tuple))
                or len(point) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)
            ):
                raise ValueError(f"Person {number}: each keypoint must be [x, y] in canvas pixels, or null.")
            x, y = float(point[0]), float(point[1])
            points.append((x, y) if math.isfinite(x) and math.isfinite(y) else None)
        points.extend([None] * (KEYPOINTS - len(points)))
        parsed.append(points)
    return parsed


def _limb_polygon(a: Point, b: Point, half_width: float) -> list[Point]:
    """An ellipse around segment a-b, as a polygon (the shape OpenPose draws limbs with)."""
    cx, cy = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
    half_length = math.hypot(b[0] - a[0], b[1] - a[1]) / 2
    angle = math.atan2(b[1] - a[1], b[0] - a[0])
    cos, sin = math.cos(angle), math.sin(angle)
    points = []
    for k in range(36):
        t = 2 * math.pi * k / 36
        ex, ey = half_length * math.cos(t), half_width * math.sin(t)
        points.append((cx + ex * cos - ey * sin, cy + ex * sin + ey * cos))
    return points


def render_pose(
    people: Sequence[Sequence[Point | None]],
    canvas_size: tuple[int, int],
    out_size: tuple[int, int],
    to_out: Callable[[float, float], Point] | None = None,
) -> np.ndarray:
    """Draw the skeletons into an out_size (width, height) RGB image on black.

    Keypoints are in canvas pixels; those outside the canvas (canvas_size) are skipped with their limbs.
    `to_out` maps canvas to output pixels (default: scale canvas to output), so a crop of the canvas can be
    rendered directly at the generation size.
    """
    width, height = canvas_size
    out_w, out_h = out_size

    def scale_to_out(x: float, y: float) -> Point:
        return x * out_w / width, y * out_h / height

    map_point = scale_to_out if to_out is None else to_out

    # The model saw 4 px sticks on ~512 px images: keep that proportion at the size the generation runs.
    scale = max(out_w, out_h) / REFERENCE_SIZE
    half_width = max(1.0, STICK_HALF_WIDTH * scale)
    radius = max(1.0, JOINT_RADIUS * scale)

    def visible(point: Point | None) -> Point | None:
        if point is None or not (0 <= point[0] < width and 0 <= point[1] < height):
            return None
        return map_point(*point)

    mapped = [[visible(p) for p in person] for person in people]
    limbs = Image.new("RGB", (out_w, out_h))
    draw = ImageDraw.Draw(limbs)
    for index, (i, j) in enumerate(LIMBS):
        for person in mapped:
            a, b = person[i], person[j]
            if a is not None and b is not None:
                draw.polygon(_limb_polygon(a, b, half_width), fill=COLORS[index])
    image = (np.asarray(limbs, dtype=np.float32) * LIMB_DIM).astype(np.uint8)
    joints = Image.fromarray(image)
    draw = ImageDraw.Draw(joints)
    for index in range(KEYPOINTS):
        for person in mapped:
            point = person[index]
            if point is not None:
                x, y = point
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=COLORS[index])
    return np.asarray(joints)
