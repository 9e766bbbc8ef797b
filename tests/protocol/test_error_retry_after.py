"""`error.retry_after`: optional, backward compatible both ways (protocol/README.md, "Messages from the
server")."""

from __future__ import annotations

import json

import pytest

from protocol import SERVER_MESSAGES, Error, ErrorCode, ProtocolError, decode_message, encode_message


def test_an_error_with_a_hint_round_trips_and_one_without_reads_as_before() -> None:
    hinted = Error("busy", "Queue full.", "job-1", retry_after=2.5)
    assert json.loads(encode_message(hinted))["retry_after"] == 2.5
    assert decode_message(encode_message(hinted), SERVER_MESSAGES) == hinted

    plain = Error("bad_frame", "Broken.", "job-2")
    assert json.loads(encode_message(plain)) == {
        "type": "error",
        "code": "bad_frame",
        "message": "Broken.",
        "job_id": "job-2",
    }  # no `retry_after` key: what servers before it sent, byte for byte
    assert decode_message(encode_message(plain), SERVER_MESSAGES).retry_after is None  # type: ignore[union-attr]


def test_an_old_servers_error_and_an_explicit_null_read_as_no_hint() -> None:
    old = '{"type":"error","code":"busy","message":"Too many jobs waiting.","job_id":"a"}'
    assert decode_message(old, SERVER_MESSAGES) == Error("busy", "Too many jobs waiting.", "a")
    null = '{"type":"error","code":"busy","message":"x","job_id":null,"retry_after":null}'
    assert decode_message(null, SERVER_MESSAGES).retry_after is None  # type: ignore[union-attr]
    whole = '{"type":"error","code":"busy","message":"x","job_id":null,"retry_after":3}'
    assert decode_message(whole, SERVER_MESSAGES).retry_after == 3.0  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ['"soon"', "-1", "true", "1e300"])
def test_a_nonsense_hint_is_refused(value: str) -> None:
    text = '{"type":"error","code":"busy","message":"x","retry_after":' + value + "}"
    with pytest.raises(ProtocolError) as caught:
        decode_message(text, SERVER_MESSAGES)
    assert caught.value.code is ErrorCode.BAD_MESSAGE and "retry_after" in caught.value.message


def test_a_protocol_error_carries_its_hint_into_the_message() -> None:
    error = ProtocolError(ErrorCode.BUSY, "Wait.", "job-3", retry_after=7.0)
    assert Error.from_exception(error) == Error("busy", "Wait.", "job-3", 7.0)
    assert ProtocolError(ErrorCode.BUSY, "Wait.").retry_after is None
