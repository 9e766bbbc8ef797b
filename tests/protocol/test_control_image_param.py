"""`control_image` jobs on the wire: a mode, a `control_kind` param naming a kind the backend makes from the
image, and nothing a generation would need; the welcome's `modes` tells a client the server takes them."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from protocol import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    JobRequest,
    Limits,
    ProtocolError,
    Welcome,
    decode_message,
    encode_message,
    registry,
)


def job(params: dict[str, Any], mode: str = "control_image", **fields: Any) -> str:
    images = [{"slot": "canvas", "encoding": "bgra8", "width": 8, "height": 6}, *fields.pop("images", [])]
    body = {"type": "job", "job_id": "c1", "mode": mode, "params": params, "images": images, **fields}
    return json.dumps(body)


def refused(text: str, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as caught:
        decode_message(text, CLIENT_MESSAGES)
    assert caught.value.code.value == "bad_message" and caught.value.job_id == "c1"


def test_a_control_image_job_names_a_kind_made_from_the_image() -> None:
    assert registry.CONTROL_IMAGE in registry.MODES
    assert registry.from_image_kinds() == ["lineart", "canny", "depth", "tile"]
    for kind in registry.from_image_kinds():
        request = decode_message(job({"control_kind": kind}), CLIENT_MESSAGES)
        assert isinstance(request, JobRequest)
        assert (request.mode, request.params.control_kind) == ("control_image", kind)
    encoded = encode_message(request)
    assert isinstance(decode_message(encoded, CLIENT_MESSAGES), JobRequest)  # what a client sends round-trips


def test_what_a_control_image_job_can_not_carry() -> None:
    refused(job({}), r"needs 'control_kind' in its params: one of lineart, canny, depth, tile\.$")
    refused(job({"control_kind": "normal"}), "A normal control image can't be made from the image")
    refused(job({"control_kind": "scribble"}), "can't be made from the image; kinds that can: lineart")
    refused(job({"control_kind": "lines"}), "'control_kind' is 'lines'; it must be one of: scribble, pose")
    refused(job({"control_kind": 3}), "'control_kind' must be a string")
    refused(job({"control_kind": "canny"}, live=True), "is not live")
    refused(job({"control_kind": "canny", "batch": 2}), "no 'batch' above 1")
    controls = [{"kind": "scribble", "image": "lines"}]
    lines = [{"slot": "lines", "encoding": "bgra8", "width": 8, "height": 6}]
    refused(job({"control_kind": "canny", "controls": controls}, images=lines), "has no 'controls'")
    mask = [{"slot": "mask", "encoding": "gray8", "width": 8, "height": 6}]
    refused(job({"control_kind": "canny"}, images=mask), r"Image slot\(s\) mask are not used by the job")
    refused(job({"control_kind": "canny"}, mode="img2img"), "'control_kind' belongs to control_image jobs")


def test_the_welcome_says_which_modes_the_server_takes() -> None:
    welcome = Welcome(1, "s", "cpu", {}, {}, ["lcm"], Limits(), True)
    assert welcome.modes == list(registry.MODES)  # a server fills it from the registry without being told
    read = decode_message(encode_message(welcome), SERVER_MESSAGES)
    assert isinstance(read, Welcome) and registry.CONTROL_IMAGE in read.modes
    older = re.sub(r',"modes":\[[^]]*\]', "", encode_message(welcome))
    assert '"modes"' not in older
    read = decode_message(older, SERVER_MESSAGES)
    assert isinstance(read, Welcome) and read.modes == []  # an older server: img2img and inpaint only
