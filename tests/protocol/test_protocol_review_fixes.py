"""Regression tests for bugs found in review of protocol/."""

from __future__ import annotations

import json

import pytest

from protocol import CLIENT_MESSAGES, ErrorCode, ProtocolError, decode_message

HUGE = int("1" + "0" * 400)  # a valid JSON integer far beyond float range


def job(params: dict) -> str:
    images = [{"slot": "canvas", "encoding": "rgba8", "width": 8, "height": 8}]
    return json.dumps({"type": "job", "job_id": "j1", "images": images, "params": params})


@pytest.mark.parametrize("field", ["cfg", "strength", "lcm_lora_strength"])
def test_a_huge_integer_for_a_float_field_is_a_bad_message_not_a_crash(field: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_message(job({field: HUGE}), CLIENT_MESSAGES)
    assert caught.value.code is ErrorCode.BAD_MESSAGE
    assert caught.value.job_id == "j1"


def test_a_huge_integer_pose_coordinate_counts_as_missing() -> None:
    controls = [{"kind": "pose", "pose": [[[HUGE, 2], [3, -HUGE], [4, 5]]]}]
    request = decode_message(job({"controls": controls}), CLIENT_MESSAGES)
    pose = request.params.controls[0].pose  # type: ignore[union-attr]
    assert pose is not None and pose[0][:3] == [None, None, (4.0, 5.0)]
