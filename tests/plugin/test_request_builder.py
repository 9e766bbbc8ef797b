from __future__ import annotations

import pytest

from krita_plugin._compat import protocol
from krita_plugin.request_builder import CanvasCapture, build_job, control_model
from krita_plugin.settings import ConnectionSettings, ControlLayerChoice, GenerationSettings

W, H = 8, 6


def capture(**extra: object) -> CanvasCapture:
    return CanvasCapture(0, 0, W, H, bytes(range(4)) * (W * H), **extra)  # type: ignore[arg-type]


def decode_on_server(job) -> tuple[protocol.JobRequest, dict[str, protocol.ImageFrame]]:
    """What the backend sees: the JSON through the protocol's own validation, then each frame."""
    request = protocol.decode_message(protocol.encode_message(job.request), protocol.CLIENT_MESSAGES)
    assert isinstance(request, protocol.JobRequest)
    frames: dict[str, protocol.ImageFrame] = {}
    for data in job.frames:
        frame = protocol.decode_frame(data, 4096, 4096)
        assert frame.job_id == request.job_id
        frames[frame.slot] = frame
    return request, frames


def test_img2img_job_carries_canvas_and_settings() -> None:
    settings = GenerationSettings(prompt="a red fox", negative_prompt="blurry", strength=0.4, seed=7, steps=5)
    settings.cfg, settings.sampler, settings.checkpoint = 1.5, "euler", "tiny-sd15.safetensors"
    job = build_job("live-x-1", settings, capture(), live=True)
    request, frames = decode_on_server(job)
    assert request.mode == "img2img" and request.live
    assert request.bounds == protocol.Bounds(0, 0, W, H)
    assert request.result_encoding == "bgra8"
    params = request.params
    assert (params.prompt, params.negative_prompt, params.strength, params.seed) == (
        "a red fox",
        "blurry",
        0.4,
        7,
    )
    assert (params.steps, params.cfg, params.sampler) == (5, 1.5, "euler")
    assert params.checkpoint == "tiny-sd15.safetensors"
    assert set(frames) == {"canvas"}
    assert frames["canvas"].encoding is protocol.ImageEncoding.BGRA8
    assert frames["canvas"].payload == capture().canvas


def test_default_checkpoint_and_lora_choices() -> None:
    job = build_job(
        "j", GenerationSettings(lora="style.safetensors", lora_strength=0.7), capture(), live=False
    )
    request, _ = decode_on_server(job)
    assert request.params.checkpoint is None  # the backend's default
    assert request.params.loras == [protocol.LoraParam("style.safetensors", 0.7, 0.7)]


def test_a_selection_mask_makes_an_inpaint_job() -> None:
    mask = bytes([0, 255] * (W * H // 2))
    job = build_job("inpaint-1", GenerationSettings(), capture(mask=mask), live=True)
    request, frames = decode_on_server(job)
    assert request.mode == "inpaint"
    assert frames["mask"].encoding is protocol.ImageEncoding.GRAY8
    assert frames["mask"].payload == mask


def test_a_scaled_down_capture_sends_smaller_images_with_the_documents_bounds() -> None:
    small = CanvasCapture(10, 20, 400, 300, bytes(4) * (200 * 150), mask=bytes(200 * 150), image_width=200,
                          image_height=150, control_images={"scribble": bytes(4) * (200 * 150)})  # fmt: skip
    request, frames = decode_on_server(build_job("j", GenerationSettings(resolution=0.75), small, live=True))
    assert request.bounds == protocol.Bounds(10, 20, 400, 300)
    assert {(f.width, f.height) for f in frames.values()} == {(200, 150)}
    assert request.params.resolution == 0.75


def test_scribble_and_pose_controls() -> None:
    settings = GenerationSettings(
        guidance={"pose": ControlLayerChoice("id2", 0.6), "scribble": ControlLayerChoice("id1", 0.8)}
    )
    pose = [[(1.0, 2.0), None, *[(3.5, 4.25)] * 16]]
    models = {"controlnet": ["tiny-scribble.safetensors", "tiny-openpose.safetensors"]}
    snapshot = capture(control_images={"scribble": bytes(W * H * 4)}, control_poses={"pose": pose})
    request, frames = decode_on_server(build_job("j", settings, snapshot, live=True, models=models))
    scribble, posed = request.params.controls  # the protocol table's order, whatever the settings' order
    assert (scribble.kind, scribble.image, scribble.strength) == ("scribble", "scribble", 0.8)
    assert scribble.model == "tiny-scribble.safetensors"
    assert frames["scribble"].encoding is protocol.ImageEncoding.BGRA8
    assert (posed.kind, posed.image, posed.strength, posed.model) == (
        "pose",
        None,
        0.6,
        "tiny-openpose.safetensors",
    )
    assert posed.pose is not None
    assert posed.pose[0][0] == (1.0, 2.0) and posed.pose[0][1] is None and len(posed.pose[0]) == 18


def test_control_model_falls_back_to_the_backend_default() -> None:
    assert control_model({}, "scribble") is None
    assert control_model({"controlnet": ["depth.safetensors"]}, "pose") is None


@pytest.mark.parametrize(
    ("typed", "url"),
    [
        ("", "ws://127.0.0.1:9631"),
        ("localhost", "ws://localhost:9631"),
        ("192.168.1.5:7000", "ws://192.168.1.5:7000"),
        ("ws://example:1234", "ws://example:1234"),
        ("wss://gpu.example.org", "wss://gpu.example.org:9631"),
    ],
)
def test_addresses_a_painter_types(typed: str, url: str) -> None:
    assert ConnectionSettings(typed).url == url


def test_settings_round_trip_and_tolerate_garbage() -> None:
    settings = GenerationSettings(
        prompt="x",
        seed=5,
        cfg=2.0,
        resolution=0.5,
        batch=3,
        guidance={"scribble": ControlLayerChoice("n", 0.3)},
    )
    restored = GenerationSettings.from_json(settings.to_json())
    assert (
        (restored.resolution, restored.batch) == (0.5, 3)
        and restored.prompt == "x"
        and restored.seed == 5
        and restored.cfg == 2.0
    )
    assert restored.guidance == {
        "scribble": ControlLayerChoice("", 0.3)
    }  # layer ids don't outlive the document
    assert GenerationSettings.from_json("not json") == GenerationSettings()
    assert GenerationSettings.from_json('{"steps": "many", "mode": "bogus"}') == GenerationSettings()
    odd = GenerationSettings.from_json('{"resolution": 3.7, "batch": 99}')
    assert (odd.resolution, odd.batch) == (1.0, 8)


def test_settings_saved_with_scribble_and_pose_fields_keep_their_strengths() -> None:
    """What the version before the kinds came from the protocol's table saved in kritarc."""
    saved = '{"scribble": {"node_id": "{n}", "strength": 0.4}, "pose": {"node_id": "", "strength": 1.5}}'
    restored = GenerationSettings.from_json(saved)
    assert restored.guidance == {"scribble": ControlLayerChoice("", 0.4), "pose": ControlLayerChoice("", 1.5)}
    both = GenerationSettings.from_json(
        '{"guidance": {"scribble": {"strength": 0.9}}, "scribble": {"strength": 0.4}}'
    )
    assert both.guidance == {"scribble": ControlLayerChoice("", 0.9)}  # the new field wins


def test_the_panels_defaults_are_the_protocols() -> None:
    """The backend warms up with the protocol's default parameters: the painter's first live frame with the
    panel's defaults must be that frame."""
    panel, protocol_defaults = GenerationSettings(), protocol.JobParams()
    for name in ("steps", "strength", "cfg", "sampler", "seed", "resolution"):
        assert getattr(panel, name) == getattr(protocol_defaults, name), name
