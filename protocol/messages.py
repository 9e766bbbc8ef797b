"""Control messages: JSON text frames with a "type" field. Each kind is a dataclass with to_dict/from_dict."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol, TypeGuard

from .errors import ErrorCode, ProtocolError
from .frames import ImageEncoding
from .references import MAX_REFERENCES, ReferenceParam
from .regions import MAX_REGIONS, RegionParam
from .registry import (
    CONTROL_IMAGE,
    CONTROL_KINDS,
    KEYPOINTS,
    MODES,
    SAMPLERS,
    from_image_kinds,
    keypoint_kinds,
)
from .upscale import MAX_UPSCALE_SIDE, UpscaleParam, check_upscale_job
from .validate import (
    JOB_ID_PATTERN,
    bad,
    quote,
    read_bool,
    read_choice,
    read_float,
    read_int,
    read_job_id,
    read_list,
    read_slot,
    read_str,
    reject_unknown,
    require_object,
)

PROTOCOL_VERSION = 1
DEFAULT_PORT = 9631
MAX_SEED = 2**63 - 1
MAX_PROMPT_LENGTH = 4000
POSE_KEYPOINTS = 18  # OpenPose body-18 (COCO) layout
# `resolution`: the working size's multiplier (1.0 = the model's native size, e.g. 512x512 pixels of area for
# SD1.5). Below 0.25 even SD1.5 falls to its UNet's minimum; above 2 a frame costs 16x and more.
MIN_RESOLUTION, MAX_RESOLUTION = 0.25, 2.0
# `batch`: images one job renders, with consecutive seeds. Each costs a full generation; 8 is what a painter
# compares at a glance, and bounds what one result message carries.
MAX_BATCH = 8
MAX_CONTROLS = 4  # controls (ControlNets) guiding one job
MAX_MODEL_NAME = 500  # characters of a model file's name (relative to its kind's folder)
# A model family's name in the model lists' `families` ("sd15", "sdxl"): short, plain, comparable.
FAMILY_PATTERN = re.compile(r"^[a-z0-9_]{1,32}$")
RESULT_SLOT = "result"
MAX_RETRY_AFTER = 24 * 3600.0  # an error's `retry_after` hint, in seconds


@dataclass
class Limits:
    max_width: int = 4096
    max_height: int = 4096
    max_message_bytes: int = 80 * 1024 * 1024
    max_steps: int = 50
    max_images_per_job: int = 24  # canvas, mask, controls, references and region masks
    # Added later; servers that predate them send none and clients read the defaults.
    max_hello_message_bytes: int = 64 * 1024  # any message before the welcome
    # Decoded image bytes (4 per pixel, 1 for gray8) of a connection's unfinished jobs, and of everyone's.
    max_queued_image_bytes: int = 512 * 1024 * 1024
    max_total_queued_image_bytes: int = 1024 * 1024 * 1024
    # Replies a client leaves unread before the server stops reading its messages (and, some time later,
    # disconnects it).
    max_unread_bytes: int = 64 * 1024 * 1024
    # The largest side of an `upscale` job's result (protocol/upscale.py); servers without upscale omit it.
    max_upscale_side: int = MAX_UPSCALE_SIDE

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Limits:
        data = require_object(data, "limits")
        return cls(**{k: read_int(data, k, 1, 2**40, getattr(cls, k)) for k in cls.__dataclass_fields__})


@dataclass
class LoraParam:
    name: str
    model_strength: float = 1.0
    clip_strength: float = 1.0

    @classmethod
    def from_dict(cls, data: Any) -> LoraParam:
        data = require_object(data, "a LoRA entry")
        reject_unknown(data, {"name", "model_strength", "clip_strength"}, "a LoRA entry")
        return cls(
            name=read_str(data, "name", max_length=500),
            model_strength=read_float(data, "model_strength", -10.0, 10.0, 1.0),
            clip_strength=read_float(data, "clip_strength", -10.0, 10.0, 1.0),
        )


Keypoint = tuple[float, float] | None


@dataclass
class ControlParam:
    """One ControlNet: guided by an image slot (scribble or ready-made pose image) or by pose keypoints."""

    kind: str
    model: str | None = None
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    image: str | None = None
    pose: list[list[Keypoint]] | None = None

    @classmethod
    def from_dict(cls, data: Any) -> ControlParam:
        data = require_object(data, "a control entry")
        reject_unknown(
            data, {"kind", "model", "strength", "start", "end", "image", "pose"}, "a control entry"
        )
        control = cls(
            kind=read_choice(data, "kind", tuple(CONTROL_KINDS)),
            model=read_str(data, "model", None, max_length=500),
            strength=read_float(data, "strength", 0.0, 2.0, 1.0),
            start=read_float(data, "start", 0.0, 1.0, 0.0),
            end=read_float(data, "end", 0.0, 1.0, 1.0),
            image=read_slot(data, "image", None),
            pose=_read_pose(data),
        )
        if control.start > control.end:
            raise bad(f"Control 'start' ({control.start}) is after 'end' ({control.end}).")
        takes_keypoints = CONTROL_KINDS[control.kind].input == KEYPOINTS
        if control.image is None and control.pose is None:
            needs = "an 'image' slot or 'pose' keypoints" if takes_keypoints else "an 'image' slot"
            raise bad(f"A {control.kind} control needs {needs}.")
        if control.pose is not None and not takes_keypoints:
            raise bad(f"Only a {' or '.join(map(repr, keypoint_kinds()))} control can carry pose keypoints.")
        return control


def _read_pose(data: dict[str, Any]) -> list[list[Keypoint]] | None:
    people = read_list(data, "pose", 64, None)
    if people is None:
        return None
    parsed: list[list[Keypoint]] = []
    for person in people:
        if not _is_list(person) or len(person) > POSE_KEYPOINTS:
            raise bad(f"Each person in 'pose' must be a list of at most {POSE_KEYPOINTS} keypoints.")
        keypoints: list[Keypoint] = []
        for point in person:
            if point is None:
                keypoints.append(None)
                continue
            coordinates = _numbers(point, 2)
            if coordinates is None:
                raise bad("Each pose keypoint must be [x, y] in canvas pixels, or null when missing.")
            # Non-finite or absurd coordinates are "missing", as OpenPose tools emit them; never fatal.
            # (Compared before float(): a JSON integer can be too large to convert.)
            if all(abs(v) < 1e7 for v in coordinates):
                keypoints.append((float(coordinates[0]), float(coordinates[1])))
            else:
                keypoints.append(None)
        keypoints.extend([None] * (POSE_KEYPOINTS - len(keypoints)))
        parsed.append(keypoints)
    return parsed


def _is_list(value: object) -> TypeGuard[list[object]]:
    return isinstance(value, list)


def _is_json_object(value: object) -> TypeGuard[dict[str, object]]:
    """A dict, as JSON decodes an object: its keys are strings."""
    return isinstance(value, dict)


def _numbers(value: object, count: int) -> list[int | float] | None:
    """`value` when it is a list of `count` JSON numbers (a boolean is not a number), else None."""
    if not _is_list(value) or len(value) != count:
        return None
    numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return numbers if len(numbers) == count else None


def _whole_numbers(value: object, count: int) -> list[int] | None:
    """`value` when it is a list of `count` JSON integers (a boolean is not one), else None."""
    if not _is_list(value) or len(value) != count:
        return None
    numbers = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return numbers if len(numbers) == count else None


@dataclass
class InpaintParam:
    grow: int = 0
    feather: int = 8
    padding: int = 32

    @classmethod
    def from_dict(cls, data: Any) -> InpaintParam:
        data = require_object(data, "inpaint")
        reject_unknown(data, {"grow", "feather", "padding"}, "inpaint")
        return cls(
            grow=read_int(data, "grow", 0, 512, 0),
            feather=read_int(data, "feather", 0, 512, 8),
            padding=read_int(data, "padding", 0, 2048, 32),
        )


@dataclass
class JobParams:
    prompt: str = ""
    negative_prompt: str = ""
    checkpoint: str | None = None
    vae: str | None = None
    loras: list[LoraParam] = field(default_factory=list[LoraParam])
    lcm_lora: str | None = None
    lcm_lora_strength: float = 1.0
    sampler: str = "lcm"
    steps: int = 4
    cfg: float = 1.0
    strength: float = 0.5
    seed: int = 0
    controls: list[ControlParam] = field(default_factory=list[ControlParam])
    inpaint: InpaintParam = field(default_factory=InpaintParam)
    resolution: float = 1.0  # the working size: about (model's native side x resolution)² pixels of area
    # Images to render, image i with seed `seed + i` and everything else equal (so each one is what a
    # batch-1 job with its seed gives). Live jobs are single frames: batch 1 only.
    batch: int = 1
    # A `control_image` job's kind: the control image it makes from the canvas (only those jobs carry it).
    control_kind: str | None = None
    # An `upscale` job's factor or size, model and refine switch (protocol/upscale.py; only those jobs).
    upscale: UpscaleParam | None = None
    # Reference images through IP-Adapter (protocol/references.py) and prompts for parts of the image
    # (protocol/regions.py); each names an image slot of the job.
    references: list[ReferenceParam] = field(default_factory=list[ReferenceParam])
    regions: list[RegionParam] = field(default_factory=list[RegionParam])

    FIELDS: ClassVar[set[str]] = {
        "prompt", "negative_prompt", "checkpoint", "vae", "loras", "lcm_lora", "lcm_lora_strength",
        "sampler", "steps", "cfg", "strength", "seed", "controls", "inpaint", "resolution", "batch",
        "control_kind", "upscale", "references", "regions",
    }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, max_steps: int = 50) -> JobParams:
        data = require_object(data, "params")
        reject_unknown(data, cls.FIELDS, "params")
        params = cls(
            prompt=read_str(data, "prompt", "", MAX_PROMPT_LENGTH),
            negative_prompt=read_str(data, "negative_prompt", "", MAX_PROMPT_LENGTH),
            checkpoint=read_str(data, "checkpoint", None, 500),
            vae=read_str(data, "vae", None, 500),
            loras=[LoraParam.from_dict(item) for item in read_list(data, "loras", 16, [])],
            lcm_lora=read_str(data, "lcm_lora", None, 500),
            lcm_lora_strength=read_float(data, "lcm_lora_strength", 0.0, 2.0, 1.0),
            sampler=read_choice(data, "sampler", tuple(SAMPLERS), "lcm"),
            steps=read_int(data, "steps", 1, max_steps, 4),
            cfg=read_float(data, "cfg", 0.0, 30.0, 1.0),
            strength=read_float(data, "strength", 0.0, 1.0, 0.5),
            seed=read_int(data, "seed", 0, MAX_SEED, 0),
            controls=[ControlParam.from_dict(item) for item in read_list(data, "controls", MAX_CONTROLS, [])],
            inpaint=InpaintParam.from_dict(data.get("inpaint") or {}),
            resolution=read_float(data, "resolution", MIN_RESOLUTION, MAX_RESOLUTION, 1.0),
            batch=read_int(data, "batch", 1, MAX_BATCH, 1),
            control_kind=read_choice(data, "control_kind", tuple(CONTROL_KINDS), None),
            upscale=None if data.get("upscale") is None else UpscaleParam.from_dict(data["upscale"]),
            references=[
                ReferenceParam.from_dict(item) for item in read_list(data, "references", MAX_REFERENCES, [])
            ],
            regions=[RegionParam.from_dict(item) for item in read_list(data, "regions", MAX_REGIONS, [])],
        )
        if params.seed + params.batch - 1 > MAX_SEED:
            # Every image's seed must be a valid seed of its own: its batch-1 job must be expressible.
            raise bad(
                f"'seed' {params.seed} with 'batch' {params.batch} runs past the largest seed ({MAX_SEED})."
            )
        return params

    @property
    def seeds(self) -> list[int]:
        """The seed of each image of the batch, in order."""
        return [self.seed + index for index in range(self.batch)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImageSpec:
    """Declares one image of a job; its pixels follow as a binary frame named '<job_id>/<slot>'."""

    slot: str
    encoding: str
    width: int
    height: int

    @classmethod
    def from_dict(cls, data: Any, limits: Limits) -> ImageSpec:
        data = require_object(data, "an image entry")
        reject_unknown(data, {"slot", "encoding", "width", "height"}, "an image entry")
        encoding = ImageEncoding.from_label(read_str(data, "encoding", max_length=16))
        width = read_int(data, "width", 1, 2**31, None)
        height = read_int(data, "height", 1, 2**31, None)
        if width is None or height is None:
            raise bad("An image entry needs 'width' and 'height'.")
        if width > limits.max_width or height > limits.max_height:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"Image of {width}x{height} exceeds the server limit of "
                f"{limits.max_width}x{limits.max_height} (the welcome's limits: the largest images this "
                "server can hold). Send it scaled down: a canvas may be smaller than its bounds.",
            )
        return cls(read_slot(data, "slot"), encoding.label, width, height)


@dataclass
class Bounds:
    x: int
    y: int
    width: int
    height: int

    @classmethod
    def from_list(cls, value: Any) -> Bounds:
        numbers = _whole_numbers(value, 4)
        if numbers is None:
            raise bad("'bounds' must be [x, y, width, height] in whole pixels.")
        x, y, width, height = numbers
        if width <= 0 or height <= 0 or max(abs(x), abs(y), width, height) > 2**30:
            raise bad(f"'bounds' {value} is not a sensible rectangle.")
        return cls(x, y, width, height)

    def to_list(self) -> list[int]:
        return [self.x, self.y, self.width, self.height]


# --- messages ---------------------------------------------------------------------------------------------


@dataclass
class Hello:
    TYPE: ClassVar[str] = "hello"
    protocol_version: int
    client: str = ""
    token: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], limits: Limits) -> Hello:
        reject_unknown(data, {"type", "protocol_version", "client", "token"}, "hello")
        return cls(
            protocol_version=read_int(data, "protocol_version", 0, 2**31),
            client=read_str(data, "client", "", 200),
            token=read_str(data, "token", None, 1000),
        )


@dataclass
class Welcome:
    TYPE: ClassVar[str] = "welcome"
    protocol_version: int
    server: str
    device: str
    models: dict[str, list[str]]
    loaded: dict[str, Any]
    samplers: list[str]
    limits: Limits
    ready: bool
    message: str = ""
    # Listed files known to be unusable, {kind: {name: why}} (added later: older servers send none).
    unusable: dict[str, dict[str, str]] = field(default_factory=dict[str, dict[str, str]])
    # The control kinds the server takes: the registry's (added later: older servers send none, and take
    # "scribble" and "pose").
    control_kinds: list[str] = field(default_factory=lambda: list(CONTROL_KINDS))
    # Listed files' model families where their headers say, {kind: {name: family}} ("sd15", "sdxl"), and the
    # checkpoint a job naming none gets (None: none usable). Added later: older servers send neither.
    families: dict[str, dict[str, str]] = field(default_factory=dict[str, dict[str, str]])
    default_checkpoint: str | None = None
    # The job modes the server takes: the registry's (added with `control_image`: older servers send none,
    # and take "img2img" and "inpaint").
    modes: list[str] = field(default_factory=lambda: list(MODES))

    @classmethod
    def from_dict(cls, data: dict[str, Any], limits: Limits) -> Welcome:
        return cls(
            protocol_version=read_int(data, "protocol_version", 0, 2**31),
            server=read_str(data, "server", ""),
            device=read_str(data, "device", ""),
            models=require_object(data.get("models", {}), "models"),
            loaded=require_object(data.get("loaded", {}), "loaded"),
            samplers=read_list(data, "samplers", 100, []),
            limits=Limits.from_dict(data.get("limits", {})),
            ready=read_bool(data, "ready", False),
            message=read_str(data, "message", ""),
            unusable=read_unusable(data),
            control_kinds=read_list(data, "control_kinds", 100, []),
            families=read_families(data),
            default_checkpoint=read_str(data, "default_checkpoint", None, MAX_MODEL_NAME),
            modes=read_list(data, "modes", 100, []),
        )


@dataclass
class ListModels:
    TYPE: ClassVar[str] = "list_models"

    @classmethod
    def from_dict(cls, data: dict[str, Any], limits: Limits) -> ListModels:
        reject_unknown(data, {"type"}, "list_models")
        return cls()


@dataclass
class ModelList:
    TYPE: ClassVar[str] = "models"
    models: dict[str, list[str]]
    loaded: dict[str, Any]
    # As in Welcome:
    unusable: dict[str, dict[str, str]] = field(default_factory=dict[str, dict[str, str]])
    families: dict[str, dict[str, str]] = field(default_factory=dict[str, dict[str, str]])
    default_checkpoint: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], limits: Limits) -> ModelList:
        return cls(
            require_object(data.get("models", {}), "models"),
            require_object(data.get("loaded", {}), "loaded"),
            read_unusable(data),
            read_families(data),
            read_str(data, "default_checkpoint", None, MAX_MODEL_NAME),
        )


def read_unusable(data: dict[str, Any]) -> dict[str, dict[str, str]]:
    """`unusable` is advice beside the lists: entries that aren't {kind: {name: reason}} strings are skipped
    rather than failing the whole message (the lists themselves still work)."""
    return _read_name_table(data, "unusable", lambda why: True)


def read_families(data: dict[str, Any]) -> dict[str, dict[str, str]]:
    """`families`, advice as `unusable` is: entries that aren't {kind: {name: family}} with a family name of
    lowercase letters, digits and `_` are skipped (a family the client doesn't know is kept: it compares)."""
    return _read_name_table(data, "families", lambda family: FAMILY_PATTERN.match(family) is not None)


def _read_name_table(
    data: dict[str, Any], key: str, accept: Callable[[str], bool]
) -> dict[str, dict[str, str]]:
    value = data.get(key)
    if not _is_json_object(value):
        return {}
    return {
        kind: {name: text for name, text in entries.items() if isinstance(text, str) and accept(text)}
        for kind, entries in value.items()
        if _is_json_object(entries)
    }


@dataclass
class JobRequest:
    """A job; its images follow as binary frames. `live` jobs from one client are latest-wins."""

    TYPE: ClassVar[str] = "job"
    job_id: str
    mode: str = "img2img"
    live: bool = False
    params: JobParams = field(default_factory=JobParams)
    images: list[ImageSpec] = field(default_factory=list[ImageSpec])
    bounds: Bounds | None = None
    result_encoding: str = "bgra8"

    @classmethod
    def from_dict(cls, data: dict[str, Any], limits: Limits) -> JobRequest:
        fields = {"type", "job_id", "mode", "live", "params", "images", "bounds", "result_encoding"}
        reject_unknown(data, fields, "job")
        job_id = read_job_id(data)
        try:
            images = [
                ImageSpec.from_dict(i, limits) for i in read_list(data, "images", limits.max_images_per_job)
            ]
            job = cls(
                job_id=job_id,
                mode=read_choice(data, "mode", MODES, "img2img"),
                live=read_bool(data, "live", False),
                params=JobParams.from_dict(data.get("params", {}), limits.max_steps),
                images=images,
                bounds=None if data.get("bounds") is None else Bounds.from_list(data["bounds"]),
                result_encoding=read_choice(data, "result_encoding", ("bgra8", "rgba8", "png"), "bgra8"),
            )
            job.check_images()
            job.check_control_image()
            job.check_upscale(limits)
            if job.live and job.params.batch != 1:
                raise bad("A live job renders a single frame: its 'batch' must be 1.")
        except ProtocolError as error:
            error.job_id = job_id
            raise
        return job

    def check_images(self) -> None:
        slots = [image.slot for image in self.images]
        if len(set(slots)) != len(slots):
            raise bad("Two images of the job share a slot name.")
        by_slot = {image.slot: image for image in self.images}
        canvas = by_slot.get("canvas")
        if canvas is None:
            raise bad("A job needs a 'canvas' image.")
        if canvas.encoding == "gray8":
            raise bad("The canvas must be a colour image (rgba8, bgra8 or png).")
        self._check_canvas_in_bounds(canvas)
        if self.mode == "inpaint":
            mask = by_slot.get("mask")
            if mask is None:
                raise bad("An inpaint job needs a 'mask' image (gray8, 255 = redraw).")
            if mask.encoding != "gray8" or (mask.width, mask.height) != (canvas.width, canvas.height):
                raise bad("The mask must be gray8 and the same size as the canvas.")
        for control in self.params.controls:
            if control.image is not None and control.image not in by_slot:
                raise bad(f"Control image slot {control.image!r} is not among the job's images.")
        for reference in self.params.references:
            image = by_slot.get(reference.image)
            if image is None:
                raise bad(f"Reference image slot {reference.image!r} is not among the job's images.")
            if image.encoding == "gray8":
                raise bad(f"Reference image {reference.image!r} must be a colour image (rgba8, bgra8, png).")
        for region in self.params.regions:
            mask = by_slot.get(region.mask)
            if mask is None:
                raise bad(f"Region mask slot {region.mask!r} is not among the job's images.")
            if mask.encoding != "gray8" or (mask.width, mask.height) != (canvas.width, canvas.height):
                raise bad(f"Region mask {region.mask!r} must be gray8 and the same size as the canvas.")
        referenced = (
            {"canvas"}
            | {c.image for c in self.params.controls if c.image}
            | {r.image for r in self.params.references}
            | {r.mask for r in self.params.regions}
        )
        if self.mode != CONTROL_IMAGE:
            referenced.add("mask")  # (sent with an img2img job it is ignored, as it always was)
        extra = sorted(set(by_slot) - referenced)
        if extra:
            raise bad(f"Image slot(s) {', '.join(extra)} are not used by the job.")

    @property
    def has_guidance_images(self) -> bool:
        """The job carries reference images or regions (which only generating modes use)."""
        return bool(self.params.references or self.params.regions)

    def check_control_image(self) -> None:
        """A `control_image` job names a kind the backend makes from the canvas, and nothing of a generation
        that it would not use: no controls, no batch, never live (live jobs supersede each other)."""
        kind = self.params.control_kind
        if self.mode != CONTROL_IMAGE:
            if kind is not None:
                raise bad(
                    f"'control_kind' belongs to {CONTROL_IMAGE} jobs; this job's mode is {self.mode!r}."
                )
            return
        makers = ", ".join(from_image_kinds())
        if kind is None:
            raise bad(f"A {CONTROL_IMAGE} job needs 'control_kind' in its params: one of {makers}.")
        if not CONTROL_KINDS[kind].from_image:
            raise bad(f"A {kind} control image can't be made from the image; kinds that can: {makers}.")
        if self.live or self.params.batch != 1 or self.params.controls or self.has_guidance_images:
            raise bad(
                f"A {CONTROL_IMAGE} job is not live and has no 'controls', 'references' or 'regions' and no "
                "'batch' above 1."
            )

    def check_upscale(self, limits: Limits) -> None:
        """An `upscale` job's rules (protocol/upscale.py); its params get their defaults."""
        by_slot = {image.slot: image for image in self.images}
        canvas, mask = by_slot["canvas"], by_slot.get("mask")
        self.params.upscale = check_upscale_job(
            self.mode,
            self.params.upscale,
            live=self.live,
            batch=self.params.batch,
            has_controls=bool(self.params.controls) or self.has_guidance_images,
            canvas=(canvas.width, canvas.height),
            mask=None if mask is None else (mask.encoding, mask.width, mask.height),
            max_side=limits.max_upscale_side,
        )

    def _check_canvas_in_bounds(self, canvas: ImageSpec) -> None:
        """`bounds` width/height are the document rectangle the canvas image covers: the canvas may be sent
        smaller (scaled down to save the transfer), never larger."""
        if self.bounds is None:
            return
        width, height = canvas.width, canvas.height
        if width > self.bounds.width or height > self.bounds.height:
            raise bad(
                f"The canvas image ({width}x{height}) is larger than its 'bounds' "
                f"({self.bounds.width}x{self.bounds.height}); bounds are the document rectangle it covers."
            )
        if (width, height) != (self.bounds.width, self.bounds.height):
            # Scaled down: the other images must be scaled alike, or no one could tell what they cover.
            for image in self.images:
                if (image.width, image.height) != (width, height):
                    raise bad(
                        f"Image {image.slot!r} is {image.width}x{image.height}; with a canvas sent smaller "
                        f"than its bounds every image must have the canvas image's size ({width}x{height})."
                    )


@dataclass
class Cancel:
    TYPE: ClassVar[str] = "cancel"
    job_id: str

    @classmethod
    def from_dict(cls, data: dict[str, Any], limits: Limits) -> Cancel:
        reject_unknown(data, {"type", "job_id"}, "cancel")
        return cls(read_job_id(data))


@dataclass
class Accepted:
    TYPE: ClassVar[str] = "accepted"
    job_id: str
    queue_position: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any], limits: Limits) -> Accepted:
        return cls(read_job_id(data), read_int(data, "queue_position", 0, 2**31, 0))


@dataclass
class Progress:
    TYPE: ClassVar[str] = "progress"
    job_id: str
    step: int
    total: int

    @classmethod
    def from_dict(cls, data: dict[str, Any], limits: Limits) -> Progress:
        return cls(read_job_id(data), read_int(data, "step", 0, 2**31), read_int(data, "total", 0, 2**31))


def result_slot(index: int) -> str:
    """The slot of a result's image `index` (0-based): "result", then "result.1", "result.2", ..."""
    return RESULT_SLOT if index == 0 else f"{RESULT_SLOT}.{index}"


@dataclass
class Result:
    """The finished layer(s): `count` images (a batch's variations, in seed order), sharing bounds, width
    and height. Their pixels follow as `count` binary frames, in order, named `<job_id>/result`,
    `<job_id>/result.1`, ... (see result_slot)."""

    TYPE: ClassVar[str] = "result"
    job_id: str
    bounds: list[int]
    width: int
    height: int
    encoding: str
    params: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict[str, float])
    # Added with `batch`; servers that predate it send neither (one image; its seed is params["seed"]).
    count: int = 1
    seeds: list[int] = field(default_factory=list[int])  # the seed of each image, in frame order

    @classmethod
    def from_dict(cls, data: dict[str, Any], limits: Limits) -> Result:
        count = read_int(data, "count", 1, MAX_BATCH, 1)
        seeds = read_list(data, "seeds", MAX_BATCH, [])
        if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds):
            raise bad(f"Field 'seeds' must list whole numbers between 0 and {MAX_SEED}.")
        if seeds and len(seeds) != count:
            raise bad(f"Field 'seeds' lists {len(seeds)} seeds for {count} images.")
        return cls(
            job_id=read_job_id(data),
            bounds=Bounds.from_list(data.get("bounds")).to_list(),
            width=read_int(data, "width", 1, 2**31),
            height=read_int(data, "height", 1, 2**31),
            encoding=read_str(data, "encoding"),
            params=require_object(data.get("params", {}), "params"),
            timings=require_object(data.get("timings", {}), "timings"),
            count=count,
            seeds=seeds,
        )

    @property
    def slots(self) -> list[str]:
        """The slots of the frames that follow this message, in the order they come."""
        return [result_slot(index) for index in range(self.count)]


@dataclass
class Cancelled:
    TYPE: ClassVar[str] = "cancelled"
    job_id: str
    reason: str = "cancelled"  # "cancelled", "superseded", "disconnected" or "shutdown"

    @classmethod
    def from_dict(cls, data: dict[str, Any], limits: Limits) -> Cancelled:
        return cls(read_job_id(data), read_str(data, "reason", "cancelled"))


@dataclass
class Error:
    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    job_id: str | None = None
    # Seconds after which the same request may well succeed (`busy`: a full queue, a per-user limit). Added
    # later: older servers never send it, and it is left out of the JSON when there is none.
    retry_after: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], limits: Limits) -> Error:
        return cls(
            read_str(data, "code"),
            read_str(data, "message"),
            read_str(data, "job_id", None),
            read_float(data, "retry_after", 0.0, MAX_RETRY_AFTER, None),
        )

    @classmethod
    def from_exception(cls, error: ProtocolError) -> Error:
        return cls(error.code.value, error.message, error.job_id, error.retry_after)


Message = (
    Hello
    | Welcome
    | ListModels
    | ModelList
    | JobRequest
    | Cancel
    | Accepted
    | Progress
    | Result
    | Cancelled
    | Error
)


class MessageReader(Protocol):
    """A message class as decode_message uses it: `from_dict` reads one message of its type."""

    def from_dict(self, data: dict[str, Any], limits: Limits) -> Message: ...


CLIENT_MESSAGES: dict[str, MessageReader] = {cls.TYPE: cls for cls in (Hello, ListModels, JobRequest, Cancel)}
SERVER_MESSAGES: dict[str, MessageReader] = {
    cls.TYPE: cls for cls in (Welcome, ModelList, Accepted, Progress, Result, Cancelled, Error)
}


def encode_message(message: Message) -> str:
    body = asdict(message)  # type: ignore[call-overload]
    if isinstance(message, JobRequest) and message.bounds is not None:
        body["bounds"] = message.bounds.to_list()
    if isinstance(message, Error) and message.retry_after is None:
        del body["retry_after"]  # an error without a hint reads as it always did
    return json.dumps({"type": message.TYPE, **body}, allow_nan=False, separators=(",", ":"))


def decode_message(
    text: str | bytes, kinds: dict[str, MessageReader], limits: Limits | None = None
) -> Message:
    """Parse one JSON text frame into the dataclass its "type" names, out of the given kinds."""
    limits = limits or Limits()
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as error:
        raise ProtocolError(ErrorCode.BAD_JSON, f"Message is not valid JSON: {error}.") from None
    data = require_object(data, "A message")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise bad("Message has no 'type' string field.")
    message_class = kinds.get(kind)
    if message_class is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"Unknown message type {quote(kind)}; known types: {', '.join(sorted(kinds))}.",
        )
    try:
        return message_class.from_dict(data, limits)
    except ProtocolError as error:
        # Whatever was wrong, a readable job id says which of the client's jobs this error ends.
        job_id = data.get("job_id")
        if error.job_id is None and isinstance(job_id, str) and JOB_ID_PATTERN.match(job_id):
            error.job_id = job_id
        raise


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text} is out of range")
    return value
