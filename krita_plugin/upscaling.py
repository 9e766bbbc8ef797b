"""The panel's Upscale: the document, or the selection's box, goes to the backend as an `upscale` job
(enlarged 2x or 4x with the first upscale model it lists, or Lanczos, then refined tile by tile); the
answer becomes a new layer in the document, which is enlarged by the same factor to hold it.

The image is sent at full resolution (the point is its detail), without the guidance layers, as the
selection's bounding box when there is a selection. The result's pixels are denser than the rectangle they
cover: the document is scaled once (Krita's Scale Image, Lanczos; an undo step of its own) and the layer is
placed at the rectangle times the factor, above the active layer (another undo step). Nothing changes in the
document before the answer arrives; a document resized meanwhile is left as it is.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._compat import protocol
from .apply import keep_active
from .capture import CaptureError, check_document, image_without, selection_rect
from .job_records import SentImage
from .job_tracking import JobIds
from .nodes import is_layer, node_id
from .request_builder import assemble
from .sending import guidance_ids
from .settings import GenerationSettings

Say = Callable[[str, bool], None]  # a message for the panel, and whether it is an error
FACTORS = (2, 4)
DEFAULT_REFINE_STRENGTH = 0.3  # adds detail without redrawing each tile into something else
SCALE_STRATEGY = "Lanczos3"  # how Krita enlarges the document's other layers
MAX_PENDING = 4


@dataclass(frozen=True)
class _Pending:
    document: str
    size: tuple[int, int]  # the document's size when the job was sent
    factor: int


def pick_upscaler(names: list[str], factor: int) -> str | None:
    """The upscale model to use: the first whose name says this factor ("2x", "x2", ...), else the first
    listed; None (Lanczos) when the backend lists none."""
    marks = (f"{factor}x", f"x{factor}")
    for name in names:
        if any(mark in name.lower() for mark in marks):
            return name
    return names[0] if names else None


def upscale_params(
    settings: GenerationSettings, factor: int, refine: bool, strength: float, upscalers: list[str]
) -> protocol.JobParams:
    loras = [protocol.LoraParam(settings.lora, settings.lora_strength, settings.lora_strength)]
    return protocol.JobParams(
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        checkpoint=settings.checkpoint or None,
        loras=loras if settings.lora else [],
        sampler=settings.sampler,
        steps=settings.steps,
        cfg=settings.cfg,
        strength=strength,
        seed=settings.seed,
        resolution=settings.resolution,
        upscale=protocol.UpscaleParam(
            factor=float(factor), model=pick_upscaler(upscalers, factor), refine=refine
        ),
    )


class Upscales:
    def __init__(
        self, network: Any, ids: JobIds, find_document: Callable[[str], Any | None], say: Say
    ) -> None:
        self.network = network
        self.ids = ids
        self.find_document = find_document
        self.say = say
        self.pending: OrderedDict[str, _Pending] = OrderedDict()

    def request(
        self,
        doc: Any,
        settings: GenerationSettings,
        *,
        factor: int,
        refine: bool,
        strength: float = DEFAULT_REFINE_STRENGTH,
        models: dict[str, list[str]],
        limits: protocol.Limits,
        refresh_allowed: Callable[[], bool] = lambda: True,
    ) -> str | None:
        """Sends the document (or the selection's box) to be upscaled; the job id, or None when nothing was
        sent (the panel says why)."""
        try:
            check_document(doc)
        except CaptureError as problem:
            self.say(str(problem), True)
            return None
        x, y, w, h = selection_rect(doc) or (0, 0, doc.width(), doc.height())
        too_large = self._too_large(w, h, factor, limits)
        if too_large:
            self.say(too_large, True)
            return None
        try:
            pixels = bytes(image_without(doc, guidance_ids(settings), refresh_allowed, (x, y, w, h)))
        except CaptureError:
            self.say("Krita is busy: try again in a moment.", True)
            return None
        job_id = self.ids.next("upscale")
        params = upscale_params(settings, factor, refine, strength, list(models.get("upscale_models") or []))
        canvas = SentImage("canvas", protocol.ImageEncoding.BGRA8.label, w, h, pixels)
        job = assemble(job_id, protocol.UPSCALE, False, params, (canvas,), protocol.Bounds(x, y, w, h))
        if not self.network.send(job.request, *job.frames):
            self.say("Not connected to the backend (see the status above).", True)
            return None
        self.pending[job_id] = _Pending(node_id(doc.rootNode()), (doc.width(), doc.height()), factor)
        while len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)
        what = "the selection" if (w, h) != (doc.width(), doc.height()) else "the image"
        self.say(f"Upscaling {what} {factor}x ({w * factor}x{h * factor})…", False)
        return job_id

    @staticmethod
    def _too_large(width: int, height: int, factor: int, limits: protocol.Limits) -> str:
        if width > limits.max_width or height > limits.max_height:
            return (
                f"The image to upscale is {width}x{height}; the backend takes at most "
                f"{limits.max_width}x{limits.max_height}. Select a part of it."
            )
        if max(width, height) * factor > limits.max_upscale_side:
            return (
                f"Upscaled {factor}x, {width}x{height} would be over {limits.max_upscale_side} pixels wide "
                "or high. Select a part of it, or choose 2x."
            )
        return ""

    def owns(self, job_id: str | None) -> bool:
        return job_id is not None and job_id in self.pending

    def arrived(self, result: protocol.Result, frame: protocol.ImageFrame) -> Any | None:
        """The upscaled image arrived: the document enlarged to its density and a new layer with it.
        Returns that document, or None."""
        pending = self.pending.pop(result.job_id)
        if frame.encoding is not protocol.ImageEncoding.BGRA8:
            self.say(f"The backend sent an unexpected image format ({frame.encoding.label}).", True)
            return None
        doc = self.find_document(pending.document)
        if doc is None:
            return None  # closed meanwhile
        x, y, w, h = (int(v) for v in result.bounds)
        scale_x, scale_y = frame.width / w, frame.height / h
        width, height = pending.size
        target = (round(width * scale_x), round(height * scale_y))
        if (doc.width(), doc.height()) != pending.size:
            self.say("The image was resized while it was being upscaled: the result was not placed.", True)
            return None
        doc.scaleImage(target[0], target[1], int(doc.xRes()), int(doc.yRes()), SCALE_STRATEGY)
        doc.waitForDone()
        rect = (round(x * scale_x), round(y * scale_y), frame.width, frame.height)
        _add_layer(doc, f"Upscaled {pending.factor}x (Live Diffusion)", bytes(frame.payload), rect)
        refined = "refined" if result.params.get("tiles") else "not refined"
        upscaler = result.params.get("upscaler", "?")
        self.say(f"Upscaled {pending.factor}x with {upscaler}, {refined}: a new layer.", False)
        return doc

    def ended(self, job_id: str, text: str | None = None) -> None:
        """The job failed (`text` says why for the painter) or was cancelled."""
        if self.pending.pop(job_id, None) is not None and text:
            self.say(text, True)

    def cancel_all(self) -> None:
        for job_id in list(self.pending):
            self.network.send(protocol.Cancel(job_id))
        self.pending.clear()

    def forget(self) -> None:
        """The connection is gone: no answer will come."""
        self.pending.clear()


def _add_layer(doc: Any, name: str, pixels: bytes, rect: tuple[int, int, int, int]) -> Any:
    """A new paint layer holding `pixels` at `rect`, above the active layer; the active layer stays."""
    active = doc.activeNode()
    if active is not None and not is_layer(active):  # a mask: the layer it belongs to
        active = active.parentNode()
    if active is None or active.parentNode() is None:
        parent, above = doc.rootNode(), None
    else:
        parent, above = active.parentNode(), active
    layer = doc.createNode(name, "paintlayer")
    layer.setPixelData(pixels, *rect)  # before adding: undoing the add removes the layer with its pixels
    parent.addChildNode(layer, above)
    keep_active(doc, active, layer)
    doc.refreshProjection()
    return layer
