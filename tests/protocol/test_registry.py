"""protocol/registry.py: the one table of control kinds, samplers and modes that validation reads."""

from __future__ import annotations

import json
import re

import pytest

from protocol import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    ControlKind,
    ControlParam,
    JobParams,
    JobRequest,
    Limits,
    ProtocolError,
    Sampler,
    Welcome,
    decode_message,
    encode_message,
    pick_controlnet,
    registry,
    sampler_label,
)

DEPTH = ControlKind("test_depth", registry.IMAGE, ("depth", "zoe"), "Depth (test)")
HANDS = ControlKind("test_hands", registry.KEYPOINTS, ("hand",), "Hands (test)")
DPM = Sampler("test_dpm", "DPM (test)")
BUILT_IN_KINDS = ["scribble", "pose", "lineart", "softedge", "canny", "depth", "normal", "tile"]


@pytest.fixture
def test_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test-only entries, added the way a new kind or sampler is: to the registry's tables, nowhere else."""
    for kind in (DEPTH, HANDS):
        monkeypatch.setitem(registry.CONTROL_KINDS, kind.name, kind)
    monkeypatch.setitem(registry.SAMPLERS, DPM.name, DPM)


def job_json(params: dict) -> str:
    slots = ["canvas"] + [c["image"] for c in params.get("controls", []) if "image" in c]
    images = [{"slot": slot, "encoding": "bgra8", "width": 4, "height": 4} for slot in slots]
    return json.dumps({"type": "job", "job_id": "j", "params": params, "images": images})


def test_the_tables_hold_what_the_protocol_promised() -> None:
    assert list(registry.SAMPLERS) == [
        "lcm", "euler", "euler_a", "euler_trailing", "tcd", "ddim_trailing", "lcm_trailing",
        "euler_a_trailing",
    ]  # fmt: skip
    assert registry.MODES[:3] == ("img2img", "inpaint", registry.CONTROL_IMAGE)
    assert {name: kind.input for name, kind in registry.CONTROL_KINDS.items()} == {
        "scribble": registry.IMAGE,
        "pose": registry.KEYPOINTS,
        # the ControlNet 1.1 kinds
        **dict.fromkeys(("lineart", "softedge", "canny", "depth", "normal", "tile"), registry.IMAGE),
    }
    for kind in registry.CONTROL_KINDS.values():
        assert kind.input in registry.CONTROL_INPUTS and kind.model_hints and kind.label
        assert all(word == word.lower() for word in kind.model_hints)  # matched against lower-cased names


def test_validation_refuses_what_the_tables_lack() -> None:
    for params, message in (
        ({"sampler": "test_dpm"}, "must be one of: lcm, euler, euler_a"),
        ({"controls": [{"kind": "test_depth", "image": "lines"}]}, "must be one of: scribble, pose"),
    ):
        with pytest.raises(ProtocolError, match=message):
            decode_message(job_json(params), CLIENT_MESSAGES)


def test_a_kind_or_sampler_added_to_the_tables_is_validated_and_welcomed(test_entries: None) -> None:
    job = decode_message(
        job_json({"sampler": "test_dpm", "controls": [{"kind": "test_depth", "image": "lines"}]}),
        CLIENT_MESSAGES,
    )
    assert isinstance(job, JobRequest)
    assert job.params.sampler == "test_dpm" and job.params.controls[0].kind == "test_depth"
    with pytest.raises(ProtocolError, match=r"must be one of: lcm, euler, euler_a, .*, test_dpm\.$"):
        decode_message(job_json({"sampler": "ddim"}), CLIENT_MESSAGES)

    welcome = Welcome(1, "s", "cpu", {}, {}, list(registry.SAMPLERS), Limits(), True)
    read = decode_message(encode_message(welcome), SERVER_MESSAGES)
    assert isinstance(read, Welcome)
    assert read.samplers == list(registry.SAMPLERS) and read.samplers[-1] == "test_dpm"
    assert read.control_kinds == [*BUILT_IN_KINDS, "test_depth", "test_hands"]


def test_keypoints_go_only_with_a_keypoints_kind(test_entries: None) -> None:
    pose = [[None] * 18]
    hands = decode_message(job_json({"controls": [{"kind": "test_hands", "pose": pose}]}), CLIENT_MESSAGES)
    assert isinstance(hands, JobRequest)
    assert hands.params.controls[0].pose == pose
    for kind in ("scribble", "test_depth"):
        with pytest.raises(ProtocolError, match="Only a 'pose' or 'test_hands' control can carry pose"):
            decode_message(job_json({"controls": [{"kind": kind, "pose": pose}]}), CLIENT_MESSAGES)
    with pytest.raises(ProtocolError, match=r"test_depth control needs an 'image' slot\.$"):
        decode_message(job_json({"controls": [{"kind": "test_depth"}]}), CLIENT_MESSAGES)
    with pytest.raises(ProtocolError, match="needs an 'image' slot or 'pose' keypoints"):
        decode_message(job_json({"controls": [{"kind": "test_hands"}]}), CLIENT_MESSAGES)


def test_a_welcome_from_an_older_server_says_nothing_of_control_kinds() -> None:
    text = encode_message(Welcome(1, "s", "cpu", {}, {}, ["lcm"], Limits(), True))
    old = re.sub(r',"control_kinds":\[[^]]*\]', "", text)
    assert "control_kinds" not in old
    read = decode_message(old, SERVER_MESSAGES)
    assert isinstance(read, Welcome) and read.control_kinds == []


def test_controlnets_are_picked_by_the_kinds_words_best_word_first(test_entries: None) -> None:
    names = ["a/control_lineart.safetensors", "My_Sketch.safetensors", "openpose_full.safetensors"]
    assert pick_controlnet(names, "scribble") == "My_Sketch.safetensors"  # "sketch" comes before "lineart"
    assert pick_controlnet([*names, "b/Scribble-v11.safetensors"], "scribble") == "b/Scribble-v11.safetensors"
    assert pick_controlnet(names, "pose") == "openpose_full.safetensors"
    assert pick_controlnet(names, "test_depth") is None
    assert pick_controlnet([*names, "zoe-DEPTH.safetensors"], "test_depth") == "zoe-DEPTH.safetensors"


def test_sampler_labels(test_entries: None) -> None:
    assert [sampler_label(name) for name in registry.SAMPLERS] == [
        "LCM", "Euler", "Euler a", "Euler, trailing (SDXL Lightning)", "TCD (Hyper-SD, TCD-LoRA)",
        "DDIM, trailing (Hyper-SD)", "LCM, trailing (DMD2)", "Euler a, trailing (SDXL-Turbo)", "DPM (test)",
    ]  # fmt: skip
    assert sampler_label("from_a_newer_server") == "from_a_newer_server"


def test_params_default_to_a_registered_sampler() -> None:
    assert JobParams().sampler in registry.SAMPLERS
    assert ControlParam("scribble").kind in registry.CONTROL_KINDS
