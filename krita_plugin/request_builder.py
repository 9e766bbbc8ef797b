"""Turns the panel's settings and a captured canvas into a protocol job: a JSON message and its frames."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._compat import protocol
from .fingerprint import content_hash
from .job_records import SentImage
from .references import CapturedReference, reference_params
from .regions import RegionMask
from .settings import GenerationSettings

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
    # The guidance, by control kind name: an image kind's layer pixels (BGRA8, the sent images' size) and a
    # keypoints kind's people x 18 keypoints (in the sent image's pixels; a layer without people has none).
    control_images: dict[str, bytes] = field(default_factory=dict)
    control_poses: dict[str, list[list[Keypoint]]] = field(default_factory=dict)
    image_width: int = 0  # the sent images' size (0: the rectangle's): smaller when scaled down for sending
    image_height: int = 0
    # Reference images (each its own size, references.py) and regions (masks at the sent images' size,
    # regions.py), each in a slot of its own.
    references: list[CapturedReference] = field(default_factory=list[CapturedReference])
    regions: list[RegionMask] = field(default_factory=list[RegionMask])

    def __post_init__(self) -> None:
        self.image_width = self.image_width or self.width
        self.image_height = self.image_height or self.height

    @property
    def bounds(self) -> protocol.Bounds:
        return protocol.Bounds(self.x, self.y, self.width, self.height)

    def guide_keys(self) -> list[str]:
        """What the references and regions add to a live frame's fingerprint: what they'd send."""
        return [
            *(
                f"{r.slot}:{r.entry.kind}:{r.entry.strength}:{r.entry.start}:{r.entry.end}:"
                f"{r.image.width}x{r.image.height}:{content_hash(r.image.bgra)}"
                for r in self.references
            ),
            *(f"{r.slot}:{r.prompt!r}:{content_hash(r.mask)}" for r in self.regions),
        ]


@dataclass
class BuiltJob:
    request: protocol.JobRequest
    frames: list[bytes] = field(default_factory=list)
    images: tuple[SentImage, ...] = ()  # what the frames carry, to send again under another id

    @property
    def job_id(self) -> str:
        return self.request.job_id


def control_model(models: dict[str, list[str]], kind: str) -> str | None:
    """Picks the backend's ControlNet for a kind by its name, by the protocol's model-name words for the kind
    (the backend picks alike); None leaves the choice to the backend."""
    names = [name for name in models.get("controlnet") or [] if isinstance(name, str)]
    return protocol.pick_controlnet(names, kind)


def build_params(
    settings: GenerationSettings, capture: CanvasCapture, models: dict[str, list[str]], live: bool = False
) -> protocol.JobParams:
    """`live`: live frames are single images; Generate asks for `settings.batch` variations (consecutive
    seeds) in one job."""
    loras = (
        [protocol.LoraParam(settings.lora, settings.lora_strength, settings.lora_strength)]
        if settings.lora
        else []
    )
    controls: list[protocol.ControlParam] = []
    for kind in protocol.CONTROL_KINDS:  # the table's order, so a job's controls don't depend on the clicks
        model, strength = control_model(models, kind), settings.choice(kind).strength
        if kind in capture.control_images:
            controls.append(protocol.ControlParam(kind, model, strength, image=kind))
        elif kind in capture.control_poses:
            pose = [
                [None if p is None else [round(p[0], 2), round(p[1], 2)] for p in person]
                for person in capture.control_poses[kind]
            ]
            controls.append(protocol.ControlParam(kind, model, strength, pose=pose))  # type: ignore[arg-type]
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
        resolution=settings.resolution,
        batch=1 if live else settings.batch,
        controls=controls,
        references=reference_params(capture.references, settings.reference_model),
        regions=[protocol.messages.RegionParam(r.slot, r.prompt) for r in capture.regions],
    )


def build_job(
    job_id: str,
    settings: GenerationSettings,
    capture: CanvasCapture,
    *,
    live: bool,
    models: dict[str, list[str]] | None = None,
) -> BuiltJob:
    """The JobRequest and its frames, in the order the protocol wants them (JSON first, then each image).
    A capture with a selection mask is an inpaint job."""
    params = build_params(settings, capture, models or {}, live)
    w, h = capture.image_width, capture.image_height
    bgra8, gray8 = protocol.ImageEncoding.BGRA8.label, protocol.ImageEncoding.GRAY8.label
    images = [SentImage("canvas", bgra8, w, h, capture.canvas)]
    if capture.mask is not None:
        images.append(SentImage("mask", gray8, w, h, capture.mask))
    # Each image kind's pixels in the slot named after the kind (its control names that slot).
    images += [
        SentImage(kind, bgra8, w, h, capture.control_images[kind])
        for kind in protocol.CONTROL_KINDS
        if kind in capture.control_images
    ]
    images += [
        SentImage(r.slot, bgra8, r.image.width, r.image.height, r.image.bgra) for r in capture.references
    ]
    images += [SentImage(r.slot, gray8, w, h, r.mask) for r in capture.regions]
    mode = "inpaint" if capture.mask is not None else "img2img"
    return assemble(job_id, mode, live, params, tuple(images), capture.bounds)


def assemble(
    job_id: str,
    mode: str,
    live: bool,
    params: protocol.JobParams,
    images: tuple[SentImage, ...],
    bounds: protocol.Bounds,
) -> BuiltJob:
    """A job from its parts; also how the same inputs are sent again under a new id (Apply's refine)."""
    request = protocol.JobRequest(
        job_id=job_id,
        mode=mode,
        live=live,
        params=params,
        images=[protocol.ImageSpec(i.slot, i.encoding, i.width, i.height) for i in images],
        bounds=bounds,
        result_encoding="bgra8",
    )
    frames = [
        protocol.encode_frame(
            protocol.ImageFrame(
                job_id, i.slot, protocol.ImageEncoding.from_label(i.encoding), i.width, i.height, i.payload
            )
        )
        for i in images
    ]
    return BuiltJob(request, frames, images)
