"""OpenPose body-18 rendering from keypoints."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backend.engine.pose import COLORS, LIMB_DIM, LIMBS, parse_people, render_pose

# A standing figure on a 256 x 256 canvas.
PERSON = [
    (128, 40), (128, 70), (104, 72), (96, 110), (92, 146), (152, 72), (160, 110), (164, 146),
    (114, 150), (112, 200), (110, 245), (142, 150), (144, 200), (146, 245), (122, 34), (134, 34),
    (114, 38), (142, 38),
]  # fmt: skip


def color_at(image: np.ndarray, point: tuple[float, float]) -> tuple[int, ...]:
    return tuple(int(v) for v in image[int(point[1]), int(point[0])])


def test_joints_and_limbs_have_openpose_colours() -> None:
    image = render_pose([PERSON], (256, 256), (256, 256))
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    for index, point in enumerate(PERSON):
        assert color_at(image, point) == COLORS[index]
    # The middle of the neck-to-right-hip limb (limb 6) has that limb's dimmed colour.
    a, b = PERSON[1], PERSON[8]
    middle = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
    assert color_at(image, middle) == tuple(int(c * LIMB_DIM) for c in COLORS[LIMBS.index((1, 8))])
    assert color_at(image, (5, 5)) == (0, 0, 0)


def test_missing_and_out_of_range_keypoints_are_skipped() -> None:
    person: list = list(PERSON)
    person[4] = None  # right wrist missing
    person[7] = (400, 146)  # left wrist off the canvas
    person[10] = (math.nan, 3.0)
    image = render_pose(parse_people([person]), (256, 256), (256, 256))
    assert color_at(image, PERSON[4]) == (0, 0, 0)
    assert color_at(image, (190, 146)) == (0, 0, 0)  # no limb towards the off-canvas wrist
    assert color_at(image, PERSON[3]) == COLORS[3]  # the rest is still drawn


def test_several_people_and_short_lists() -> None:
    shifted = [(x + 60, y) for x, y in PERSON[:5]]  # only the first five keypoints
    image = render_pose(parse_people([PERSON, shifted]), (320, 256), (320, 256))
    assert color_at(image, shifted[0]) == COLORS[0]
    assert color_at(image, PERSON[17]) == COLORS[17]


def test_resolution_independent() -> None:
    small = render_pose([PERSON], (256, 256), (256, 256))
    large = render_pose([PERSON], (256, 256), (512, 512))
    assert color_at(large, (PERSON[0][0] * 2, PERSON[0][1] * 2)) == COLORS[0]
    # Lines scale with the output: about the same share of the image is covered.
    assert abs((small > 0).any(-1).mean() - (large > 0).any(-1).mean()) < 0.01


def test_custom_mapping_renders_a_crop() -> None:
    # The 64x64 canvas area at (96, 96) rendered at 128x128.
    image = render_pose([PERSON], (256, 256), (128, 128), lambda x, y: ((x - 96) * 2, (y - 96) * 2))
    elbow = PERSON[6]  # (160, 110) -> (128, 28): just outside; the wrist-elbow limb still crosses in
    assert color_at(image, ((PERSON[3][0] - 96) * 2, (PERSON[3][1] - 96) * 2)) == COLORS[3]
    assert elbow[0] > 96 + 63
    assert image[:, 120:].any()


@pytest.mark.parametrize(
    "bad",
    [
        "not a list",
        [[(1, 2)] * 19],
        [[(1, 2, 3)]],
        [[("a", 2)]],
        [[(True, 2)]],
        [42],
    ],
)
def test_malformed_pose_is_a_clear_error(bad: object) -> None:
    with pytest.raises(ValueError, match=r"keypoint|people|Person"):
        parse_people(bad)


def test_empty_pose_is_black() -> None:
    assert not render_pose([], (64, 64), (64, 64)).any()
    assert not render_pose([[None] * 18], (64, 64), (64, 64)).any()
