"""The job's `batch` parameter (variations with consecutive seeds in one job) and the result's `count`,
`seeds` and frame names, as the protocol validates and encodes them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol import (
    CLIENT_MESSAGES,
    MAX_BATCH,
    SERVER_MESSAGES,
    ErrorCode,
    ImageEncoding,
    ImageFrame,
    JobParams,
    JobRequest,
    ProtocolError,
    Result,
    decode_frame,
    decode_message,
    encode_frame,
    encode_message,
    result_slot,
)
from protocol.messages import MAX_SEED


def job_body(params: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "job",
        "job_id": "b1",
        "params": params or {},
        "images": [{"slot": "canvas", "encoding": "bgra8", "width": 8, "height": 6}],
    }
    body.update(overrides)
    return body


def decode_job(body: dict[str, Any]) -> JobRequest:
    job = decode_message(json.dumps(body), CLIENT_MESSAGES)
    assert isinstance(job, JobRequest)
    return job


def job_error(body: dict[str, Any], text: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        decode_message(json.dumps(body), CLIENT_MESSAGES)
    assert caught.value.code is ErrorCode.BAD_MESSAGE, caught.value
    assert text in caught.value.message, caught.value.message
    assert caught.value.job_id == "b1"  # the error ends the job it names
    return caught.value


def result_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "result",
        "job_id": "b1",
        "bounds": [0, 0, 8, 6],
        "width": 8,
        "height": 6,
        "encoding": "bgra8",
        "params": {"seed": 7},
    }
    body.update(overrides)
    return body


def test_batch_defaults_to_one_and_round_trips() -> None:
    assert MAX_BATCH == 8
    assert JobParams().batch == 1
    assert decode_job(job_body()).params.batch == 1
    job = decode_job(job_body({"batch": 4, "seed": 10}))
    assert job.params.batch == 4 and job.params.seeds == [10, 11, 12, 13]
    assert decode_job(json.loads(encode_message(job))) == job


def test_batch_is_part_of_the_encoded_params() -> None:
    """The live cache key and result.params both read the encoded params: a batch must show in them."""
    one = json.loads(encode_message(decode_job(job_body({"batch": 1}))))
    three = json.loads(encode_message(decode_job(job_body({"batch": 3}))))
    assert one["params"]["batch"] == 1 and three["params"]["batch"] == 3
    assert JobParams(batch=3).to_dict()["batch"] == 3


@pytest.mark.parametrize("value", [1, MAX_BATCH, 5, 2.0])
def test_batch_accepts_its_range(value: Any) -> None:
    assert decode_job(job_body({"batch": value})).params.batch == int(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "between 1 and 8"),
        (-1, "between 1 and 8"),
        (MAX_BATCH + 1, "between 1 and 8"),
        (10**30, "between 1 and 8"),
        (2.5, "whole number"),
        ("4", "whole number"),
        (True, "whole number"),
        ([2], "whole number"),
    ],
)
def test_bad_batches_are_bad_messages_naming_the_field(value: Any, text: str) -> None:
    error = job_error(job_body({"batch": value}), text)
    assert "'batch'" in error.message


def test_seeds_of_a_batch_must_stay_valid_seeds() -> None:
    assert decode_job(job_body({"seed": MAX_SEED - 2, "batch": 3})).params.seeds[-1] == MAX_SEED
    job_error(job_body({"seed": MAX_SEED - 2, "batch": 4}), "largest seed")


def test_a_live_job_renders_one_image() -> None:
    assert decode_job(job_body({"batch": 1}, live=True)).params.batch == 1
    job_error(job_body({"batch": 2}, live=True), "live job")


def test_result_slots_name_each_image_in_order() -> None:
    assert [result_slot(i) for i in range(4)] == ["result", "result.1", "result.2", "result.3"]
    result = Result("b1", [0, 0, 8, 6], 8, 6, "bgra8", {}, count=3, seeds=[5, 6, 7])
    assert result.slots == ["result", "result.1", "result.2"]
    # Each name is a valid frame name: the job id, then the slot after the first "/".
    for slot in result.slots:
        frame = ImageFrame("b1", slot, ImageEncoding.BGRA8, 2, 1, bytes(8))
        decoded = decode_frame(encode_frame(frame), 8, 8)
        assert (decoded.job_id, decoded.slot, decoded.name) == ("b1", slot, f"b1/{slot}")


def test_result_count_and_seeds_round_trip() -> None:
    result = Result("b1", [0, 0, 8, 6], 8, 6, "bgra8", {"seed": 5}, {"total": 1.0}, count=3, seeds=[5, 6, 7])
    text = encode_message(result)
    assert json.loads(text)["count"] == 3 and json.loads(text)["seeds"] == [5, 6, 7]
    assert decode_message(text, SERVER_MESSAGES) == result


def test_a_result_from_an_older_server_is_one_image() -> None:
    result = decode_message(json.dumps(result_body()), SERVER_MESSAGES)
    assert isinstance(result, Result)
    assert result.count == 1 and result.seeds == [] and result.slots == ["result"]


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"count": 0}, "'count'"),
        ({"count": MAX_BATCH + 1}, "'count'"),
        ({"count": "2"}, "'count'"),
        ({"count": 2, "seeds": [1]}, "1 seeds for 2 images"),
        ({"count": 1, "seeds": [-1]}, "'seeds'"),
        ({"count": 1, "seeds": [True]}, "'seeds'"),
        ({"count": 1, "seeds": "1"}, "'seeds'"),
    ],
)
def test_malformed_result_counts_and_seeds_are_refused(fields: dict[str, Any], text: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_message(json.dumps(result_body(**fields)), SERVER_MESSAGES)
    assert caught.value.code is ErrorCode.BAD_MESSAGE
    assert text in caught.value.message, caught.value.message
