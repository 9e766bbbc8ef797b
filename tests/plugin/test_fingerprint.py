from __future__ import annotations

from krita_plugin.fingerprint import content_hash
from krita_plugin.request_builder import CanvasCapture
from krita_plugin.sending import job_fingerprint
from krita_plugin.settings import GenerationSettings


def snapshot(canvas: bytes = bytes(16), **extra: object) -> CanvasCapture:
    return CanvasCapture(0, 0, 2, 2, canvas, **extra)  # type: ignore[arg-type]


def test_content_hash_sees_every_byte_and_the_length() -> None:
    assert content_hash(b"abc") == content_hash(b"abc")
    assert content_hash(b"abc") != content_hash(b"abd")
    assert content_hash(b"") != content_hash(b"\x00")


def test_jobs_with_the_same_inputs_share_a_fingerprint() -> None:
    settings = GenerationSettings(prompt="a")
    assert job_fingerprint(snapshot(), settings) == job_fingerprint(
        snapshot(), GenerationSettings(prompt="a")
    )


def test_any_input_of_the_job_changes_the_fingerprint() -> None:
    base = job_fingerprint(snapshot(), GenerationSettings())
    assert job_fingerprint(snapshot(bytes(15) + b"\x01"), GenerationSettings()) != base
    assert job_fingerprint(snapshot(), GenerationSettings(strength=0.6)) != base
    assert job_fingerprint(snapshot(mask=bytes(4)), GenerationSettings()) != base
    lines = job_fingerprint(snapshot(control_images={"scribble": bytes(16)}), GenerationSettings())
    assert lines != base
    assert job_fingerprint(snapshot(control_images={"depth": bytes(16)}), GenerationSettings()) != lines
    assert job_fingerprint(snapshot(control_poses={"pose": [[(1.0, 1.0)]]}), GenerationSettings()) != base
    moved = CanvasCapture(1, 0, 2, 2, bytes(16))
    assert job_fingerprint(moved, GenerationSettings()) != base
