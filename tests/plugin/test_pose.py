from __future__ import annotations

import math

import pytest

from krita_plugin.pose import (
    BONE_LENGTH,
    KEYPOINT_NAMES,
    LIMBS,
    bone_matrix,
    default_pose,
    people_from_joints,
    pose_svg,
    pt_to_px,
    px_to_pt,
)
from krita_plugin.pose_layer import POSE_LAYER_NAME, create_pose_layer, is_pose_layer, read_pose, sync_bones
from tests.plugin.fake_krita import Document


def test_skeleton_tables_are_openpose_body18() -> None:
    assert len(KEYPOINT_NAMES) == 18
    assert all(0 <= a < 18 and 0 <= b < 18 for a, b in LIMBS)
    assert len(LIMBS) == 17


@pytest.mark.parametrize(("start", "end"), [((0, 0), (10, 0)), ((5, 5), (5, -20)), ((1, 2), (-30, 44))])
def test_bone_matrix_maps_the_base_bone_onto_its_joints(start, end) -> None:
    matrix = bone_matrix(start, end)
    assert matrix.map(0, 0) == pytest.approx(start)
    assert matrix.map(BONE_LENGTH, 0) == pytest.approx(end)
    # Across the bone nothing is scaled, so the stroke keeps its width.
    across = matrix.map(0, 1)
    assert math.hypot(across[0] - start[0], across[1] - start[1]) == pytest.approx(1)


def test_default_pose_fits_the_canvas() -> None:
    for width, height in ((512, 512), (1024, 400), (300, 900)):
        points = default_pose(width, height)
        assert all(p is not None and 0 <= p[0] <= width and 0 <= p[1] <= height for p in points)


def test_units_round_trip() -> None:
    assert pt_to_px(px_to_pt(123.0, 300), 300) == pytest.approx(123.0)


def test_people_from_joints_marks_deleted_joints_missing() -> None:
    people = people_from_joints({(0, 0): (1.0, 2.0), (0, 17): (3.0, 4.0)})
    assert people[0][0] == (1.0, 2.0) and people[0][17] == (3.0, 4.0) and people[0][5] is None
    assert people_from_joints({}) == []


def test_svg_has_bones_below_joints() -> None:
    svg = pose_svg([default_pose(100, 100)], 100, 100, 72)
    assert svg.index("kld-bone-") < svg.index("kld-joint-")
    assert svg.count("<circle") == 18 and svg.count("<path") == 17


@pytest.mark.parametrize("dpi", [72.0, 300.0])
def test_pose_layer_round_trip_in_canvas_pixels(qapp, dpi: float) -> None:
    doc = Document(200, 100, resolution=dpi)
    layer = create_pose_layer(doc)
    assert layer.name() == POSE_LAYER_NAME and is_pose_layer(layer)
    assert [kind for kind, _ in doc.undo_log] == ["add", "add shapes"]
    (person,) = read_pose(layer, dpi)
    for got, want in zip(person, default_pose(200, 100), strict=True):
        assert got == pytest.approx(want, abs=1e-3)


def test_moving_a_joint_moves_its_keypoint_and_bones_follow(qapp) -> None:
    from krita_plugin.qt import QPointF

    doc = Document(200, 200, resolution=144.0)
    layer = create_pose_layer(doc)
    assert sync_bones(layer) == 0  # created in place
    wrist = next(s for s in layer.shapes() if s.name() == "kld-joint-0-4")
    box = wrist.boundingBox()
    wrist.setPosition(QPointF(box.x() + 10, box.y() + 5))  # 10 pt = 20 px at 144 dpi
    before = default_pose(200, 200)[4]
    assert before is not None
    assert read_pose(layer, 144.0)[0][4] == pytest.approx((before[0] + 20, before[1] + 10), abs=1e-3)
    undo_steps = len(doc.undo_log)
    assert sync_bones(layer) == 1  # only the forearm (elbow 3 - wrist 4) moved
    forearm_updates = next(s for s in layer.shapes() if s.name() == "kld-bone-0-3-4").updates
    assert forearm_updates == 2  # repainted where it was and where it is now
    assert len(doc.undo_log) == undo_steps  # following bones is never an undo step
    forearm = next(s for s in layer.shapes() if s.name() == "kld-bone-0-3-4")
    end = forearm.transformation().map(QPointF(BONE_LENGTH, 0))
    wrist_centre = wrist.boundingBox().center()
    assert (end.x(), end.y()) == pytest.approx((wrist_centre.x(), wrist_centre.y()), abs=1e-3)


def test_deleted_joint_hides_its_bones(qapp) -> None:
    doc = Document(100, 100)
    layer = create_pose_layer(doc)
    next(s for s in layer.shapes() if s.name() == "kld-joint-0-0").remove()
    sync_bones(layer)
    hidden = {s.name() for s in layer.shapes() if not s.visible()}
    assert hidden == {"kld-bone-0-1-0", "kld-bone-0-0-14", "kld-bone-0-0-15"}
    assert read_pose(layer, 72.0)[0][0] is None


def test_plain_vector_layers_are_not_pose_layers(qapp) -> None:
    doc = Document(10, 10)
    layer = doc.createVectorLayer("shapes")
    layer.addShapesFromSvg(
        '<svg xmlns="http://www.w3.org/2000/svg"><circle id="c" cx="1" cy="1" r="1"/></svg>'
    )
    assert not is_pose_layer(layer)
    assert not is_pose_layer(doc.createNode("paint", "paintlayer"))
