"""Turns the panel's settings and a captured canvas into a protocol job: a JSON message and its frames."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._compat import protocol
from .settings import GenerationSettings, Mode

Keypoint = tuple[float, float] | None


@dataclass
class CanvasCapture:
    """What was read from the document for one job. Pixels are BGRA8 (Krita's byte order), masks gray8."""

    x: int
    y: int
    width: int
    height: int
    canvas: bytes
    mask: bytes | None = None
    scribble: bytes | None = None
    pose: list[list[Keypoint]] | None = None  # people x 18 keypoints, in canvas pixels
    fingerprint: str = ""

    @property
    def bounds(self) -> protocol.Bounds:
        return protocol.Bounds(self.x, self.y, self.width, self.height)


@dataclass
class BuiltJob:
    request: protocol.JobRequest
    frames: list[bytes] = field(default_factory=list)

    @property
    def job_id(self) -> str:
        return self.request.job_id


def control_model(models: dict[str, list[str]], kind: str) -> str | None:
    """Picks the backend's ControlNet for a kind by its name; None leaves the choice to the backend."""
    words = {"scribble": ("scribble", "sketch", "lineart"), "pose": ("openpose", "pose")}[kind]
    names = models.get("controlnet") or []
    for word in words:
        for name in names:
            if word in name.lower():
                return name
    return None


def build_params(
    settings: GenerationSettings, capture: CanvasCapture, models: dict[str, list[str]]
) -> protocol.JobParams:
    loras = (
        [protocol.LoraParam(settings.lora, settings.lora_strength, settings.lora_strength)]
        if settings.lora
        else []
    )
    controls: list[protocol.ControlParam] = []
    if capture.scribble is not None:
        controls.append(
            protocol.ControlParam(
                kind="scribble",
                model=control_model(models, "scribble"),
                strength=settings.scribble.strength,
                image="scribble",
            )
        )
    if capture.pose:
        controls.append(
            protocol.ControlParam(
                kind="pose",
                model=control_model(models, "pose"),
                strength=settings.pose.strength,
                pose=[
                    [None if p is None else [round(p[0], 2), round(p[1], 2)] for p in person]
                    for person in capture.pose
                ],  # type: ignore[misc]
            )
        )
    return protocol.JobParams(
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        checkpoint=settings.checkpoint or None,
        loras=loras,
        sampler=settings.sampler,
        steps=settings.steps,
        cfg=settings.cfg,
        strength=settings.strength,
        seed=settings.seed,
        controls=controls,
    )


def build_job(
    job_id: str,
    settings: GenerationSettings,
    capture: CanvasCapture,
    *,
    live: bool,
    models: dict[str, list[str]] | None = None,
) -> BuiltJob:
    """The JobRequest and its frames, in the order the protocol wants them (JSON first, then each image)."""
    inpaint = settings.mode is Mode.INPAINT
    if inpaint and capture.mask is None:
        raise ValueError("an inpaint job needs a mask")
    params = build_params(settings, capture, models or {})
    w, h = capture.width, capture.height
    BGRA8, GRAY8 = protocol.ImageEncoding.BGRA8, protocol.ImageEncoding.GRAY8
    images: list[tuple[str, protocol.ImageEncoding, bytes]] = [("canvas", BGRA8, capture.canvas)]
    if inpaint and capture.mask is not None:
        images.append(("mask", GRAY8, capture.mask))
    if capture.scribble is not None:
        images.append(("scribble", BGRA8, capture.scribble))
    request = protocol.JobRequest(
        job_id=job_id,
        mode="inpaint" if inpaint else "img2img",
        live=live,
        params=params,
        images=[protocol.ImageSpec(slot, encoding.label, w, h) for slot, encoding, _ in images],
        bounds=capture.bounds,
        result_encoding="bgra8",
    )
    frames = [
        protocol.encode_frame(protocol.ImageFrame(job_id, slot, encoding, w, h, payload))
        for slot, encoding, payload in images
    ]
    return BuiltJob(request, frames)
