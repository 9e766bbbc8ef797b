"""The `upscale` job mode: its params (protocol/upscale.py) read strictly, its rules checked at intake."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol import (
    CLIENT_MESSAGES,
    MODES,
    UPSCALE,
    ErrorCode,
    JobParams,
    JobRequest,
    Limits,
    ProtocolError,
    UpscaleParam,
    decode_message,
    encode_message,
)
from protocol.upscale import MAX_UPSCALE_SIDE


def upscale_job(upscale: Any = None, width: int = 100, height: int = 50, **fields: Any) -> dict[str, Any]:
    params: dict[str, Any] = fields.pop("params", {})
    if upscale is not None:
        params["upscale"] = upscale
    images = [{"slot": "canvas", "encoding": "bgra8", "width": width, "height": height}]
    body: dict[str, Any] = {
        "type": "job",
        "job_id": "up-1",
        "mode": UPSCALE,
        "params": params,
        "images": images,
    }
    body.update(fields)
    return body


def decode(body: dict[str, Any], limits: Limits | None = None) -> JobRequest:
    message = decode_message(json.dumps(body), CLIENT_MESSAGES, limits)
    assert isinstance(message, JobRequest)
    return message


def refused(
    body: dict[str, Any], text: str, limits: Limits | None = None, code: ErrorCode = ErrorCode.BAD_MESSAGE
) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(body, limits)
    assert caught.value.code is code
    assert text in caught.value.message
    assert caught.value.job_id == "up-1"  # the error ends the job it names


def test_upscale_is_a_mode_of_the_registry() -> None:
    assert UPSCALE == "upscale" and UPSCALE in MODES


def test_defaults_are_2x_with_lanczos_and_refine() -> None:
    upscale = decode(upscale_job()).params.upscale
    assert upscale is not None and upscale == UpscaleParam(factor=2.0, size=None, model=None, refine=True)
    assert upscale.result_size(100, 50) == (200, 100)


def test_factor_size_model_and_refine_are_read() -> None:
    job = decode(upscale_job({"factor": 4, "model": "4x-UltraSharp.pth", "refine": False}))
    assert job.params.upscale == UpscaleParam(4.0, None, "4x-UltraSharp.pth", False)
    sized = decode(upscale_job({"size": [300, 120]}))
    assert sized.params.upscale is not None
    assert (sized.params.upscale.factor, sized.params.upscale.size) == (None, [300, 120])
    assert sized.params.upscale.result_size(100, 50) == (300, 120)
    assert decode(upscale_job({"factor": 1.5})).params.upscale.result_size(101, 50) == (152, 75)  # type: ignore[union-attr]
    assert decode(upscale_job({"tile_control": 0})).params.upscale == UpscaleParam(tile_control=0.0)


def test_an_upscale_job_round_trips_through_its_json() -> None:
    for upscale in ({"factor": 4, "model": "x.pth"}, {"size": [150, 60], "refine": False}):
        job = decode(upscale_job(upscale))
        again = decode(json.loads(encode_message(job)))
        assert again.params.upscale == job.params.upscale


@pytest.mark.parametrize(
    ("upscale", "text"),
    [
        ({"factor": 0.5}, "'factor' is 0.5; it must be between 1.0 and 4.0"),
        ({"factor": 8}, "'factor' is 8"),
        ({"factor": "2"}, "'factor' must be a number"),
        ({"factor": 2, "size": [200, 100]}, "a 'factor' or a 'size', not both"),
        ({"size": [200]}, "'size' must be [width, height]"),
        ({"size": [200, 100.5]}, "'size' must be [width, height]"),
        ({"size": [200, True]}, "'size' must be [width, height]"),
        ({"size": [50, 100]}, "must be 1 to 4 times the region's width"),
        ({"size": [200, 201]}, "must be 1 to 4 times the region's height"),
        ({"refine": "yes"}, "'refine' must be true or false"),
        ({"tile_control": 3}, "'tile_control' is 3; it must be between 0.0 and 2.0"),
        ({"model": 3}, "'model' must be a string"),
        ({"tile": 512}, "Unknown field(s) in upscale: tile"),
        ("2x", "upscale must be a JSON object"),
    ],
)
def test_bad_upscale_params_are_refused_naming_the_field(upscale: Any, text: str) -> None:
    refused(upscale_job(upscale), text)


def test_upscale_params_belong_to_upscale_jobs() -> None:
    body = upscale_job({"factor": 2})
    body["mode"] = "img2img"
    refused(body, "'upscale' belongs to upscale jobs; this job's mode is 'img2img'")


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"live": True}, "is not live"),
        ({"params": {"batch": 2}}, "no 'batch' above 1"),
        ({"params": {"controls": [{"kind": "scribble", "image": "canvas"}]}}, "no 'controls'"),
    ],
)
def test_an_upscale_is_never_live_batched_or_guided(fields: dict[str, Any], text: str) -> None:
    refused(upscale_job(**fields), text)


def test_the_result_side_is_bounded_by_the_limit_the_welcome_states() -> None:
    assert Limits().max_upscale_side == MAX_UPSCALE_SIDE == 8192
    decode(upscale_job({"factor": 2}, 4096, 4096))  # 8192 x 8192: the largest
    too_large = ErrorCode.TOO_LARGE
    refused(
        upscale_job({"factor": 3}, 3000, 100),
        "gives 9000x300, over the largest upscale result side of 8192",
        code=too_large,
    )
    refused(
        upscale_job({"factor": 4}, 300, 200),
        "over the largest upscale result side of 1000",
        Limits(max_upscale_side=1000),
        too_large,
    )
    # an older server states none: a client reads the default
    assert Limits.from_dict({}).max_upscale_side == MAX_UPSCALE_SIDE


def test_a_mask_selects_the_region_and_must_fit_the_canvas() -> None:
    body = upscale_job({"factor": 4}, 4096, 4096)
    body["images"].append({"slot": "mask", "encoding": "gray8", "width": 4096, "height": 4096})
    # The selection's box is known once the mask is read (the engine checks its result size then).
    assert decode(body).params.upscale == UpscaleParam(factor=4.0)
    body["images"][1]["width"] = 100
    refused(body, "The mask must be gray8 and the same size as the canvas")
    body["images"][1].update(width=4096, encoding="bgra8")
    refused(body, "The mask must be gray8 and the same size as the canvas")
    sized = upscale_job({"size": [9000, 9000]}, 4096, 4096)
    sized["images"].append({"slot": "mask", "encoding": "gray8", "width": 4096, "height": 4096})
    refused(sized, "over the largest upscale result side of 8192", code=ErrorCode.TOO_LARGE)


def test_job_params_echo_the_upscale_params() -> None:
    params = JobParams(upscale=UpscaleParam(size=[10, 20], factor=None))
    assert params.to_dict()["upscale"] == {
        "factor": None, "size": [10, 20], "model": None, "refine": True, "tile_control": 0.6
    }  # fmt: skip
