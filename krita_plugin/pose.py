"""The OpenPose body-18 skeleton: keypoint order, limbs, colours, a default figure, and the SVG that puts it
on a Krita vector layer (pure geometry, no Krita).

Krita keeps vector shapes in points (1/72 inch): the SVG is written in points so shape coordinates are plain
points, and positions are converted to canvas pixels with the document's resolution.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

Point = tuple[float, float]
Keypoint = Point | None

KEYPOINT_NAMES = (
    "nose", "neck", "right shoulder", "right elbow", "right wrist", "left shoulder", "left elbow",
    "left wrist", "right hip", "right knee", "right ankle", "left hip", "left knee", "left ankle",
    "right eye", "left eye", "right ear", "left ear",
)  # fmt: skip
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
# The conventional OpenPose colour per keypoint (a limb takes the colour of its first index's slot order).
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
# A standing figure facing the viewer, in a unit box (x right, y down); the painter's right is image left.
DEFAULT_FIGURE: tuple[Point, ...] = (
    (0.50, 0.10), (0.50, 0.20), (0.40, 0.20), (0.36, 0.36), (0.34, 0.50), (0.60, 0.20), (0.64, 0.36),
    (0.66, 0.50), (0.44, 0.52), (0.43, 0.73), (0.42, 0.94), (0.56, 0.52), (0.57, 0.73), (0.58, 0.94),
    (0.48, 0.08), (0.52, 0.08), (0.46, 0.09), (0.54, 0.09),
)  # fmt: skip

BONE_LENGTH = 100.0  # bones are drawn as a horizontal line of this length (pt), then transformed into place
JOINT_NAME = re.compile(r"^kld-joint-(\d+)-(\d+)$")
BONE_NAME = re.compile(r"^kld-bone-(\d+)-(\d+)-(\d+)$")


def joint_name(person: int, index: int) -> str:
    return f"kld-joint-{person}-{index}"


def bone_name(person: int, a: int, b: int) -> str:
    return f"kld-bone-{person}-{a}-{b}"


def default_pose(width: float, height: float) -> list[Keypoint]:
    """The default figure fitted into the canvas (80% of its height, centred), in pixels."""
    size = 0.8 * min(height, width * 1.6)
    left = (width - size) / 2
    top = (height - size) / 2
    return [(left + x * size, top + y * size) for x, y in DEFAULT_FIGURE]


def px_to_pt(value: float, dpi: float) -> float:
    return value * 72.0 / dpi


def pt_to_px(value: float, dpi: float) -> float:
    return value * dpi / 72.0


@dataclass(frozen=True)
class Matrix:
    """An affine transform in SVG/Qt terms: x' = m11 x + m21 y + dx, y' = m12 x + m22 y + dy."""

    m11: float
    m12: float
    m21: float
    m22: float
    dx: float
    dy: float

    def svg(self) -> str:
        values = (self.m11, self.m12, self.m21, self.m22, self.dx, self.dy)
        return "matrix(" + " ".join(f"{v:.6g}" for v in values) + ")"

    def map(self, x: float, y: float) -> Point:
        return (self.m11 * x + self.m21 * y + self.dx, self.m12 * x + self.m22 * y + self.dy)


def bone_matrix(start: Point, end: Point) -> Matrix:
    """Maps the base bone (0,0)-(BONE_LENGTH,0) onto start-end: stretched along its length only, so the stroke
    keeps its width whatever the bone's length."""
    dx, dy = end[0] - start[0], end[1] - start[1]
    length = math.hypot(dx, dy)
    scale = max(length, 1e-3) / BONE_LENGTH
    angle = math.atan2(dy, dx)
    cos, sin = math.cos(angle), math.sin(angle)
    return Matrix(scale * cos, scale * sin, -sin, cos, start[0], start[1])


def _hex(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def pose_svg(people: list[list[Keypoint]], width: int, height: int, dpi: float) -> str:
    """An SVG (in points) with bones first (so joints sit on top and are easy to grab), then joints."""
    w_pt, h_pt = px_to_pt(width, dpi), px_to_pt(height, dpi)
    radius = px_to_pt(max(3.0, min(width, height) / 80), dpi)
    stroke = px_to_pt(max(2.0, min(width, height) / 160), dpi)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w_pt:.4f}pt" height="{h_pt:.4f}pt" '
        f'viewBox="0 0 {w_pt:.4f} {h_pt:.4f}">'
    ]
    for person, points in enumerate(people):
        pts = [None if p is None else (px_to_pt(p[0], dpi), px_to_pt(p[1], dpi)) for p in points]
        for limb, (a, b) in enumerate(LIMBS):
            start, end = pts[a], pts[b]
            if start is None or end is None:
                continue
            parts.append(
                f'<path id="{bone_name(person, a, b)}" d="M0,0 L{BONE_LENGTH:g},0" fill="none" '
                f'stroke="{_hex(COLORS[limb % len(COLORS)])}" stroke-width="{stroke:.4f}" '
                f'stroke-opacity="0.7" '
                f'transform="{bone_matrix(start, end).svg()}"/>'
            )
        for index, point in enumerate(pts):
            if point is None:
                continue
            parts.append(
                f'<circle id="{joint_name(person, index)}" cx="{point[0]:.4f}" cy="{point[1]:.4f}" '
                f'r="{radius:.4f}" fill="{_hex(COLORS[index])}"/>'
            )
    parts.append("</svg>")
    return "".join(parts)


def people_from_joints(joints: dict[tuple[int, int], Point]) -> list[list[Keypoint]]:
    """Keypoint lists from (person, index) -> position; a deleted joint is a missing (None) keypoint."""
    if not joints:
        return []
    count = max(person for person, _ in joints) + 1
    people: list[list[Keypoint]] = [[None] * len(KEYPOINT_NAMES) for _ in range(count)]
    for (person, index), point in joints.items():
        if index < len(KEYPOINT_NAMES):
            people[person][index] = point
    return [person for person in people if any(p is not None for p in person)]
