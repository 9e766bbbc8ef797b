"""A guidance row's "from image": the image goes to the backend as a `control_image` job (edges, depth or line
art computed there, so Krita stays light), and the control image that comes back becomes a new guidance
layer of that kind (guidance.add_control_layer), chosen in its row.

The image is what a generation would see: the document without its guidance layers, whole (a selection
doesn't narrow it), scaled down for sending as generations are. Nothing is written to the document until
the answer arrives, and then only the new layer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ._compat import protocol
from .capture import CaptureError, CaptureRequest, capture, send_pixels
from .compose import scale_bgra
from .guidance import add_control_layer
from .job_records import SentImage
from .job_tracking import JobIds
from .nodes import node_id
from .request_builder import assemble
from .sending import guidance_ids
from .settings import GenerationSettings

Say = Callable[[str, bool], None]  # a message for the panel, and whether it is an error
MAX_PENDING = 8  # requests whose answers are still awaited (a lost connection never answers)


class ControlImages:
    def __init__(
        self, network: Any, ids: JobIds, find_document: Callable[[str], Any | None], say: Say
    ) -> None:
        self.network = network
        self.ids = ids
        self.find_document = find_document
        self.say = say
        self.pending: OrderedDict[str, tuple[str, str]] = OrderedDict()  # job id -> (document id, kind)

    def request(
        self,
        doc: Any,
        kind: str,
        settings: GenerationSettings,
        *,
        native_side: int = 512,
        refresh_allowed: Callable[[], bool] = lambda: True,
    ) -> str | None:
        """Sends the image for a `kind` control layer; the job id, or None when nothing could be sent (the
        panel says why)."""
        label = protocol.CONTROL_KINDS[kind].label
        request = CaptureRequest(
            exclude=guidance_ids(settings),
            use_selection=False,
            max_pixels=send_pixels(native_side, settings.resolution),
        )
        try:
            snapshot = capture(doc, request, refresh_allowed=refresh_allowed)
        except CaptureError as problem:
            text = str(problem)
            self.say("Krita is busy: try again in a moment." if text == "busy" else text, True)
            return None
        job_id = self.ids.next("control")
        # The checkpoint only so that the backend checks the same model choice as the painter's jobs.
        params = protocol.JobParams(checkpoint=settings.checkpoint or None, control_kind=kind)
        canvas = SentImage(
            "canvas",
            protocol.ImageEncoding.BGRA8.label,
            snapshot.image_width,
            snapshot.image_height,
            snapshot.canvas,
        )
        job = assemble(job_id, protocol.registry.CONTROL_IMAGE, False, params, (canvas,), snapshot.bounds)
        if not self.network.send(job.request, *job.frames):
            self.say("Not connected to the backend (see the status above).", True)
            return None
        self.pending[job_id] = (node_id(doc.rootNode()), kind)
        while len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)
        self.say(f"Making a {label.lower()} layer from the image…", False)
        return job_id

    def owns(self, job_id: str | None) -> bool:
        return job_id is not None and job_id in self.pending

    def arrived(self, result: protocol.Result, frame: protocol.ImageFrame) -> Any | None:
        """The control image arrived: a new layer in its document. Returns that document, or None."""
        document, kind = self.pending.pop(result.job_id)
        if frame.encoding is not protocol.ImageEncoding.BGRA8:
            self.say(f"The backend sent an unexpected image format ({frame.encoding.label}).", True)
            return None
        doc = self.find_document(document)
        if doc is None:
            return None  # closed meanwhile
        x, y, w, h = (int(v) for v in result.bounds)
        pixels = bytes(frame.payload)
        if (frame.width, frame.height) != (w, h):
            pixels = scale_bgra(pixels, frame.width, frame.height, w, h)
        self.say(add_control_layer(doc, kind, pixels, (x, y, w, h)), False)
        return doc

    def ended(self, job_id: str, text: str | None = None) -> None:
        """The request failed (`text` says why for the painter) or was cancelled."""
        if self.pending.pop(job_id, None) is not None and text:
            self.say(text, True)

    def forget(self) -> None:
        """The connection is gone: no answer will come."""
        self.pending.clear()
