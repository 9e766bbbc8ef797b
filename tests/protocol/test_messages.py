from __future__ import annotations

import json

import pytest

from protocol import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    Bounds,
    ControlParam,
    ErrorCode,
    Hello,
    ImageSpec,
    JobParams,
    JobRequest,
    Limits,
    LoraParam,
    ProtocolError,
    Result,
    decode_message,
    encode_message,
)


def job_dict(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "type": "job",
        "job_id": "j1",
        "images": [{"slot": "canvas", "encoding": "bgra8", "width": 8, "height": 8}],
    }
    body.update(overrides)
    return body


def decode_client(body: object) -> object:
    return decode_message(json.dumps(body), CLIENT_MESSAGES)


def expect_error(body: object, code: ErrorCode, text: str) -> ProtocolError:
    raw = body if isinstance(body, str) else json.dumps(body)
    with pytest.raises(ProtocolError) as caught:
        decode_message(raw, CLIENT_MESSAGES)
    assert caught.value.code is code, caught.value
    assert text in caught.value.message, caught.value.message
    return caught.value


def test_job_round_trip_with_everything() -> None:
    job = JobRequest(
        job_id="live-42",
        mode="inpaint",
        live=True,
        params=JobParams(
            prompt="a cat",
            negative_prompt="blurry",
            loras=[LoraParam("style.safetensors", 0.8, 0.5)],
            sampler="euler_a",
            steps=6,
            cfg=2.5,
            strength=0.7,
            seed=2**40,
            controls=[
                ControlParam("scribble", "scribble.safetensors", 0.9, 0.0, 0.8, image="scribble"),
                ControlParam("pose", None, 1.0, pose=[[(1.0, 2.0)] + [None] * 17]),
            ],
        ),
        images=[
            ImageSpec("canvas", "bgra8", 40, 30),
            ImageSpec("mask", "gray8", 40, 30),
            ImageSpec("scribble", "png", 10, 10),
        ],
        bounds=Bounds(5, 6, 40, 30),
    )
    decoded = decode_message(encode_message(job), CLIENT_MESSAGES)
    assert decoded == job


def test_server_messages_round_trip() -> None:
    result = Result("j", [1, 2, 3, 4], 3, 4, "bgra8", {"seed": 1}, {"total": 0.5})
    assert decode_message(encode_message(result), SERVER_MESSAGES) == result


@pytest.mark.parametrize(
    ("raw", "code", "text"),
    [
        ("{not json", ErrorCode.BAD_JSON, "not valid JSON"),
        ("[1, 2]", ErrorCode.BAD_MESSAGE, "must be a JSON object"),
        ('{"type": "job", "job_id": "a", "params": {"cfg": NaN}}', ErrorCode.BAD_JSON, "NaN"),
        ('{"type": "teleport"}', ErrorCode.UNKNOWN_TYPE, "Unknown message type 'teleport'"),
        ('{"kind": "hello"}', ErrorCode.BAD_MESSAGE, "no 'type'"),
    ],
)
def test_malformed_messages(raw: str, code: ErrorCode, text: str) -> None:
    expect_error(raw, code, text)


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"steps": 0}, "'steps' is 0"),
        ({"steps": 1000}, "between 1 and 50"),
        ({"strength": -0.1}, "'strength' is -0.1"),
        ({"cfg": 1e308}, "'cfg'"),
        ({"seed": -1}, "'seed' is -1"),
        ({"seed": "7"}, "must be a whole number"),
        ({"steps": True}, "must be a whole number"),
        ({"sampler": "ddim"}, "must be one of: lcm, euler, euler_a"),
        ({"prompt": 5}, "must be a string"),
        ({"prompt": "x" * 5000}, "limit is 4000"),
        ({"loras": [{"name": "a", "model_strength": "high"}]}, "must be a number"),
        ({"controls": [{"kind": "scribble"}]}, "needs an 'image' slot"),
        ({"controls": [{"kind": "pose", "pose": [[[1, 2, 3]]]}]}, "[x, y]"),
        ({"controls": [{"kind": "pose", "pose": [[None] * 19]}]}, "at most 18"),
        ({"controls": [{"kind": "scribble", "image": "s", "start": 0.9, "end": 0.1}]}, "is after"),
        ({"colour": "red"}, "Unknown field(s) in params: colour"),
    ],
)
def test_bad_params_name_the_field(params: dict[str, object], text: str) -> None:
    error = expect_error(job_dict(params=params), ErrorCode.BAD_MESSAGE, text)
    assert error.job_id == "j1"


def test_image_declarations_are_checked() -> None:
    expect_error(job_dict(images=[]), ErrorCode.BAD_MESSAGE, "needs a 'canvas'")
    huge = [{"slot": "canvas", "encoding": "bgra8", "width": 5000, "height": 10}]
    expect_error(job_dict(images=huge), ErrorCode.TOO_LARGE, "exceeds the server limit of 4096x4096")
    expect_error(job_dict(mode="inpaint"), ErrorCode.BAD_MESSAGE, "needs a 'mask'")
    extra = [*job_dict()["images"], {"slot": "other", "encoding": "gray8", "width": 8, "height": 8}]  # type: ignore[misc]
    expect_error(job_dict(images=extra), ErrorCode.BAD_MESSAGE, "not used by the job")
    negative = [{"slot": "canvas", "encoding": "bgra8", "width": -3, "height": 8}]
    expect_error(job_dict(images=negative), ErrorCode.BAD_MESSAGE, "'width' is -3")
    expect_error(job_dict(job_id="../../etc"), ErrorCode.BAD_MESSAGE, "'job_id' must be")


def test_pose_keypoints_out_of_range_are_missing_not_fatal() -> None:
    body = job_dict(params={"controls": [{"kind": "pose", "pose": [[[1, 2], None, [1e12, 5]]]}]})
    job = decode_client(body)
    assert isinstance(job, JobRequest)
    pose = job.params.controls[0].pose
    assert pose is not None and pose[0][0] == (1.0, 2.0) and pose[0][1] is None and pose[0][2] is None
    assert len(pose[0]) == 18


HUGE = int("1" + "0" * 400)  # a valid JSON integer far beyond float range


@pytest.mark.parametrize("field", ["cfg", "strength", "lcm_lora_strength"])
def test_a_huge_integer_for_a_float_field_is_a_bad_message_not_a_crash(field: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(job_dict(params={field: HUGE}))
    assert caught.value.code is ErrorCode.BAD_MESSAGE
    assert caught.value.job_id == "j1"


def test_a_huge_integer_pose_coordinate_counts_as_missing() -> None:
    controls = [{"kind": "pose", "pose": [[[HUGE, 2], [3, -HUGE], [4, 5]]]}]
    job = decode_client(job_dict(params={"controls": controls}))
    assert isinstance(job, JobRequest)
    pose = job.params.controls[0].pose
    assert pose is not None and pose[0][:3] == [None, None, (4.0, 5.0)]


def test_limits_are_configurable() -> None:
    small = Limits(max_width=16, max_height=16, max_steps=8)
    with pytest.raises(ProtocolError):
        decode_message(json.dumps(job_dict(params={"steps": 9})), CLIENT_MESSAGES, small)
    assert decode_message(
        json.dumps({"type": "hello", "protocol_version": 1}), CLIENT_MESSAGES, small
    ) == Hello(1)
