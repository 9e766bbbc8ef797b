"""The job's `resolution` parameter (the working size's multiplier) and the canvas-versus-bounds rules, as the
protocol validates them: bad values are bad_message errors naming the field, never crashes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol import (
    CLIENT_MESSAGES,
    Bounds,
    ErrorCode,
    ImageSpec,
    JobParams,
    JobRequest,
    ProtocolError,
    decode_message,
    encode_message,
)
from protocol.messages import MAX_RESOLUTION, MIN_RESOLUTION


def job_body(params: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "job",
        "job_id": "r1",
        "params": params or {},
        "images": [{"slot": "canvas", "encoding": "bgra8", "width": 64, "height": 48}],
    }
    body.update(overrides)
    return body


def decode(body: dict[str, Any]) -> JobRequest:
    job = decode_message(json.dumps(body), CLIENT_MESSAGES)
    assert isinstance(job, JobRequest)
    return job


def expect_error(raw: str | dict[str, Any], code: ErrorCode, text: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        decode_message(raw if isinstance(raw, str) else json.dumps(raw), CLIENT_MESSAGES)
    assert caught.value.code is code, caught.value
    assert text in caught.value.message, caught.value.message
    return caught.value


def test_resolution_defaults_to_one_and_round_trips() -> None:
    assert JobParams().resolution == 1.0
    assert decode(job_body()).params.resolution == 1.0
    job = decode(job_body({"resolution": 0.5}))
    assert job.params.resolution == 0.5
    assert job.params.to_dict()["resolution"] == 0.5  # echoed in result.params
    assert decode(json.loads(encode_message(job))) == job


@pytest.mark.parametrize("value", [MIN_RESOLUTION, MAX_RESOLUTION, 1, 2, 0.75, 1.5])
def test_resolution_accepts_its_range(value: float) -> None:
    resolution = decode(job_body({"resolution": value})).params.resolution
    assert resolution == value and isinstance(resolution, float)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.24, "'resolution' is 0.24; it must be between 0.25 and 2.0"),
        (2.01, "between 0.25 and 2.0"),
        (0, "between 0.25 and 2.0"),
        (-1.0, "between 0.25 and 2.0"),
        (3, "between 0.25 and 2.0"),
        (10**400, "between 0.25 and 2.0"),  # too large for a float: compared as an integer
        (1e308, "between 0.25 and 2.0"),
        ("1.0", "'resolution' must be a number"),
        (True, "'resolution' must be a number"),
        (None, "'resolution' must be a number"),
        ([1.0], "'resolution' must be a number"),
        ({"x": 1}, "'resolution' must be a number"),
    ],
)
def test_bad_resolutions_are_bad_messages_naming_the_field(value: Any, text: str) -> None:
    error = expect_error(job_body({"resolution": value}), ErrorCode.BAD_MESSAGE, text)
    assert error.job_id == "r1"


@pytest.mark.parametrize(("value", "literal"), [(float("nan"), "NaN"), (float("inf"), "Infinity")])
def test_non_finite_resolutions_are_refused(value: float, literal: str) -> None:
    # A float that reaches the params (JobParams built in code, another JSON parser): bad_message.
    with pytest.raises(ProtocolError) as caught:
        JobParams.from_dict({"resolution": value})
    assert caught.value.code is ErrorCode.BAD_MESSAGE
    assert "'resolution' must be a finite number" in caught.value.message
    # On the wire such literals never parse, as for every number: the whole message is bad JSON.
    raw = json.dumps(job_body({"resolution": 1.0})).replace("1.0", literal)
    expect_error(raw, ErrorCode.BAD_JSON, literal)


# --- the canvas and its bounds -------------------------------------------------------------------------


def images(canvas: tuple[int, int], **others: tuple[str, int, int]) -> list[dict[str, Any]]:
    specs = [{"slot": "canvas", "encoding": "bgra8", "width": canvas[0], "height": canvas[1]}]
    for slot, (encoding, width, height) in others.items():
        specs.append({"slot": slot, "encoding": encoding, "width": width, "height": height})
    return specs


@pytest.mark.parametrize("bounds", [[0, 0, 63, 48], [10, 10, 64, 47], [0, 0, 32, 24]])
def test_a_canvas_larger_than_its_bounds_is_a_bad_message(bounds: list[int]) -> None:
    error = expect_error(job_body(bounds=bounds), ErrorCode.BAD_MESSAGE, "larger than its 'bounds'")
    assert error.job_id == "r1"


def test_with_a_downscaled_canvas_every_image_has_the_canvas_images_size() -> None:
    control = {"controls": [{"kind": "scribble", "image": "lines"}]}
    document_sized = images((64, 48), lines=("rgba8", 128, 96))
    error = expect_error(
        job_body(control, bounds=[0, 0, 128, 96], images=document_sized),
        ErrorCode.BAD_MESSAGE,
        "every image must have the canvas image's size (64x48)",
    )
    assert error.job_id == "r1" and "'lines'" in error.message
    scaled_alike = decode(
        job_body(control, bounds=[0, 0, 128, 96], images=images((64, 48), lines=("rgba8", 64, 48)))
    )
    assert scaled_alike.images[1] == ImageSpec("lines", "rgba8", 64, 48)
    assert decode(job_body(bounds=[-5, 7, 256, 100])).bounds == Bounds(-5, 7, 256, 100)
    mask = images((64, 48), mask=("gray8", 64, 48))
    assert decode(job_body(mode="inpaint", bounds=[0, 0, 128, 96], images=mask)).bounds == Bounds(
        0, 0, 128, 96
    )
    # At the bounds' own size control layers of another size keep being stretched over the canvas.
    assert decode(job_body(control, bounds=[0, 0, 64, 48], images=document_sized)).images[1].width == 128
