"""The pose the painter edits: a Krita vector layer whose circles are the joints (moved with the shape tool)
and whose lines (bones) follow the joints. Read back as keypoints in canvas pixels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .pose import (
    BONE_NAME,
    JOINT_NAME,
    Keypoint,
    Point,
    bone_matrix,
    default_pose,
    people_from_joints,
    pose_svg,
    pt_to_px,
    px_to_pt,
)

POSE_LAYER_NAME = "Pose (Live Diffusion)"


def is_pose_layer(node: Any) -> bool:
    if node.type() != "vectorlayer":
        return False
    return any(JOINT_NAME.match(shape.name()) for shape in node.shapes())


def create_pose_layer(doc: Any, above: Any | None = None, name: str = POSE_LAYER_NAME) -> Any:
    """Adds a vector layer holding the default skeleton; one explicit painter action."""
    layer = doc.createVectorLayer(name)
    doc.rootNode().addChildNode(layer, above)
    width, height = doc.width(), doc.height()
    # The SVG is in points; at the document's resolution it lands on the canvas pixels the pose names.
    layer.addShapesFromSvg(pose_svg([default_pose(width, height)], width, height, doc.xRes()))
    return layer


def _joint_positions_pt(node: Any) -> dict[tuple[int, int], Point]:
    joints: dict[tuple[int, int], Point] = {}
    for shape in node.shapes():
        match = JOINT_NAME.match(shape.name())
        if match:
            box = shape.boundingBox()  # a joint has no stroke: its box centre is the circle's centre
            joints[(int(match.group(1)), int(match.group(2)))] = (box.center().x(), box.center().y())
    return joints


def read_pose(node: Any, x_dpi: float, y_dpi: float | None = None) -> list[list[Keypoint]]:
    y_dpi = y_dpi or x_dpi
    joints = {
        key: (pt_to_px(x, x_dpi), pt_to_px(y, y_dpi)) for key, (x, y) in _joint_positions_pt(node).items()
    }
    return people_from_joints(joints)


def sync_bones(node: Any) -> int:
    """Moves every bone back onto the joints it connects; returns how many moved.

    Setting a shape's transformation is not an undo step in Krita, so bones following a dragged joint never
    clutter the painter's undo history (the joint move itself is the painter's step).
    """
    from .qt import QTransform

    joints = _joint_positions_pt(node)
    moved = 0
    for shape in node.shapes():
        match = BONE_NAME.match(shape.name())
        if not match:
            continue
        person, a, b = (int(g) for g in match.groups())
        start, end = joints.get((person, a)), joints.get((person, b))
        if start is None or end is None:
            if shape.visible():
                _repainted(shape, lambda s=shape: s.setVisible(False))
                moved += 1
            continue
        m = bone_matrix(start, end)
        current = shape.transformation()
        wanted = (m.m11, m.m12, m.m21, m.m22, m.dx, m.dy)
        have = (current.m11(), current.m12(), current.m21(), current.m22(), current.dx(), current.dy())
        changed = max(abs(x - y) for x, y in zip(wanted, have, strict=True)) > 1e-3
        if changed or not shape.visible():
            matrix = QTransform(*wanted)
            _repainted(shape, lambda s=shape, m=matrix: (s.setVisible(True), s.setTransformation(m)))
            moved += 1
    return moved


def _repainted(shape: Any, change: Callable[[], object]) -> None:
    """Applies a change to a shape and repaints where it was and where it is (the API setters don't)."""
    update = getattr(shape, "update", None)  # Shape.update() is missing from some Krita 5 builds
    if update is not None:
        update()
    change()
    if update is not None:
        update()


__all__ = ["POSE_LAYER_NAME", "create_pose_layer", "is_pose_layer", "px_to_pt", "read_pose", "sync_bones"]
