"""Glue between the panel, the active Krita document and the backend connection.

Runs on Krita's UI thread. Live mode checks the canvas when the painter has just done something (InputWatch),
never on a fixed tick; a 30 ms pump handles what the network thread reported, and a 1 s timer follows document
switches, the layer lists and the "slow backend" status. Results are shown in the result views and kept in the
history; the document changes only on Apply or the panel's "+" (new guidance layer) buttons. Every entry point
is guarded, so a bug shows as a message in the panel, never as Krita's "Script error" dialog.
"""

from __future__ import annotations

import collections
import functools
import queue
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from . import persistence
from ._compat import protocol
from .apply_flow import ApplyFlow
from .capture import CaptureError
from .control_images import ControlImages
from .document_state import read_state, remember_guidance
from .guidance import chosen, create_guidance_layer, layer_choices, sync_pose_layers
from .guide_actions import GuideActions
from .history import ResultEntry, ResultHistory
from .idle_wait import IdleWait
from .input_watch import InputWatch
from .job_records import JobRecord, JobRecords, Purpose
from .job_tracking import JobIds, JobTracker
from .live_state import LiveState
from .model_lists import ModelListing
from .network import Connected, NetworkClient, ResultReady, ServerMessage, Status, StatusChanged
from .nodes import node_id
from .painter_words import TRANSIENT_CODES, describe_busy, describe_error
from .panel import Panel
from .presenter import present
from .qt import QApplication, QObject, Qt, QTimer
from .request_builder import CanvasCapture
from .safe import add_error_sink, guarded, remove_error_sink, report_exception
from .sending import Sender, job_fingerprint
from .settings import GenerationSettings, random_seed
from .status_line import BUSY_PREFIX, busy_line, status_line
from .upscaling import Upscales

SLOW_AFTER = 8.0  # seconds without word from a running job before the panel says the backend is slow
PUMP_MS = 30
SLOW_TIMER_MS = 1000
LATENCIES_KEPT = 200


class Controller(QObject):
    def __init__(
        self,
        panel: Panel,
        app: Any,
        *,
        network_factory: Callable[[Callable[[object], None]], Any] = NetworkClient,
        clock: Callable[[], float] = time.monotonic,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.panel = panel
        self.app = app
        self.events: queue.Queue[object] = queue.Queue()
        self.network = network_factory(self.events.put)
        self.ids = JobIds()
        self.tracker = JobTracker(clock=clock)
        self.live = LiveState(clock=clock)
        self.history = ResultHistory(clock=clock)
        self.records = JobRecords()
        self.job_sender = Sender(self.network, self.ids, self.records)
        self.applying = ApplyFlow(
            self.network, self.ids, self.records, self._document_by_id, self.panel.set_message
        )
        self.control_images = ControlImages(
            self.network, self.ids, self._document_by_id, self.panel.set_message
        )
        self.upscales = Upscales(self.network, self.ids, self._document_by_id, self.panel.set_message)
        self.input = InputWatch(self.check_live, self)
        self.idle = IdleWait(self.check_live, self)
        self.welcome: protocol.Welcome | None = None
        self.served_by = ""  # the backend a balancer chose for this connection ("" when connected directly)
        self.models: dict[str, list[str]] = {}
        self.status = Status.OFFLINE
        self.visible = True
        self.stats: dict[str, Any] = {
            "sent": 0, "results": 0, "stale": 0, "checks": 0, "waits": collections.Counter(),
            "stroke_to_send_ms": collections.deque(maxlen=LATENCIES_KEPT),
            "send_phases_ms": collections.deque(maxlen=LATENCIES_KEPT),
        }  # fmt: skip
        self.document = ""  # the document the panel shows (root node id)
        self._settings_dirty = False
        self._slow_shown = False
        self._timers: list[QTimer] = []
        for interval, slot in ((PUMP_MS, self.pump), (SLOW_TIMER_MS, self.slow_tick)):
            timer = QTimer(self)
            timer.timeout.connect(slot)
            timer.setInterval(interval)
            self._timers.append(timer)
        panel.connect_requested.connect(self.on_connect_requested)
        panel.live_toggled.connect(self.on_live_toggled)
        panel.generate_clicked.connect(self.on_generate)
        panel.apply_clicked.connect(self.on_apply)
        panel.apply_onto_clicked.connect(self.on_apply_onto)
        panel.cancel_clicked.connect(self.on_cancel)
        panel.create_layer_clicked.connect(self.on_create_guidance_layer)
        panel.from_image_clicked.connect(self.on_control_from_image)
        panel.upscale_clicked.connect(self.on_upscale)
        panel.history_picked.connect(self.on_history_picked)
        panel.settings_changed.connect(self.on_settings_changed)
        panel.guidance_changed.connect(self.on_guidance_changed)
        # Reference images and regions: kept in the document; an edit asks for a live check like a stroke.
        self.guides = GuideActions(
            panel.reference_rows,
            panel.region_rows,
            self.job_sender.reference_files,
            lambda: self.app.activeDocument(),
            panel.set_message,
            lambda typing: self.input.poke_later() if typing else self.input.poke(),
        )
        add_error_sink(self._show_bug)
        # A docker goes away with its window, not only when Krita quits: its connection and sink must go too.
        self.destroyed.connect(functools.partial(_release, self.network, self._show_bug))

    # --- life cycle -----------------------------------------------------------------------------------------

    @guarded
    def start(self) -> None:
        persistence.restore(self.panel, self.app)
        self._settings_dirty = False
        for timer in self._timers:
            timer.start()
        application = QApplication.instance()
        if application is not None:
            self.input.install(application)
        self.network.start(self.panel.connection())

    @guarded
    def shutdown(self) -> None:
        for timer in self._timers:
            timer.stop()
        persistence.save(self.panel, self.app)
        remove_error_sink(self._show_bug)
        application = QApplication.instance()
        if application is not None:
            self.input.remove(application)
        self.network.stop()

    @guarded
    def set_visible(self, visible: bool) -> None:
        """Live pauses while the docker is hidden (the painter can't see what it would do)."""
        self.visible = bool(visible)
        if self.visible:
            self.input.poke()

    # --- panel actions --------------------------------------------------------------------------------------

    @guarded
    def on_connect_requested(self) -> None:
        self._settings_dirty = True
        self.network.start(self.panel.connection())
        self.network.reconnect_now()

    @guarded
    def on_live_toggled(self, on: bool) -> None:
        self.live.reset()
        if on:
            if self.status is not Status.CONNECTED:
                self.panel.set_message("Live starts as soon as the backend is connected.")
            else:
                self.panel.set_message("Live: paint, and the result follows each stroke.")
            self.input.poke()
        elif self.tracker.busy and self.tracker.current_live:
            self._cancel_current()

    @guarded
    def on_generate(self) -> None:
        doc = self._document_for_action()
        if doc is None:
            return
        if self.tracker.busy:
            self._cancel_current()  # the newest request wins; no queue of old ones
        settings = self.panel.settings()
        if not settings.seed_locked:
            settings.seed = random_seed()
            self.panel.set_seed(settings.seed)
        snapshot = self._capture(doc, settings)
        sent = self._send(doc, snapshot, settings, live=False) if snapshot is not None else []
        if sent:
            self.tracker.start(sent, live=False)
            self.panel.set_waiting()
            count = f" {len(sent)} variations" if len(sent) > 1 else ""
            self.panel.set_message(f"Working…{count}")

    @guarded
    def on_apply(self) -> None:
        self._apply(onto=False)

    @guarded
    def on_apply_onto(self) -> None:
        self._apply(onto=True)

    def _apply(self, *, onto: bool) -> None:
        doc = self.app.activeDocument()
        entry = self.history.selected(_doc_id(doc)) if doc is not None else None
        if doc is None or entry is None:
            self.panel.set_message("Nothing to apply yet: paint with Live on or Generate first.", error=True)
            return
        self.applying.apply(doc, entry, onto=onto, connected=self.status is Status.CONNECTED)

    @guarded
    def on_cancel(self) -> None:
        self._cancel_current()
        self.upscales.cancel_all()
        if self.panel.live.isChecked():
            self.panel.set_live(False)
        self.panel.set_message("Cancelled.")

    @guarded
    def on_create_guidance_layer(self, kind: str) -> None:
        """A guidance row's "+": a new layer for that control kind, chosen in its row."""
        doc = self._document_for_action(needs_backend=False)
        if doc is None:
            return
        told = create_guidance_layer(doc, kind)
        self._show_document(doc)
        self.panel.set_message(told)

    @guarded
    def on_control_from_image(self, kind: str) -> None:
        """A guidance row's "from image": the backend makes the kind's control image of the image; it comes
        back as a new layer chosen in that row (control_images.py)."""
        doc = self._document_for_action()
        if doc is None:
            return
        settings = self.panel.settings()
        family = self.panel.listing.checkpoint_family(settings.checkpoint)
        self.control_images.request(
            doc,
            kind,
            settings,
            native_side=protocol.family_native_side(family),
            refresh_allowed=_no_buttons_down,
        )

    @guarded
    def on_upscale(self) -> None:
        """Upscale: the image or selection goes to the backend; the answer becomes a layer (upscaling.py)."""
        doc = self._document_for_action()
        if doc is None or self.welcome is None:
            return
        panel = self.panel
        job_id = self.upscales.request(
            doc,
            panel.settings(),
            factor=int(panel.upscale_factor.currentData()),
            refine=panel.upscale_refine.isChecked(),
            strength=panel.upscale_strength.value(),
            models=self.models,
            limits=self.welcome.limits,
            refresh_allowed=_no_buttons_down,
        )
        if job_id is not None:
            panel.set_waiting()

    @guarded
    def on_history_picked(self, job_id: str) -> None:
        doc = self.app.activeDocument()
        if doc is not None and self.history.select(_doc_id(doc), job_id) is not None:
            self._show_selected(doc)

    @guarded
    def on_settings_changed(self) -> None:
        self._settings_dirty = True
        self.input.poke_later()  # typing a prompt or dragging a slider: one job once it settles

    @guarded
    def on_guidance_changed(self) -> None:
        doc = self.app.activeDocument()
        if doc is None:
            return
        guidance = self.panel.settings().guidance
        remember_guidance(doc, {kind: choice.node_id for kind, choice in guidance.items()})
        self.input.poke()

    # --- live -----------------------------------------------------------------------------------------------

    @guarded
    def check_live(self) -> None:
        """The painter just did something: send the canvas if live is on and it changed."""
        doc = self.app.activeDocument()
        if doc is None:
            return
        self._follow_document(doc)
        settings = self.panel.settings()
        sync_pose_layers(doc, settings)
        if not self.panel.live.isChecked() or self.status is not Status.CONNECTED or not self.visible:
            return
        if not _no_buttons_down():
            self.stats["waits"]["buttons_down"] += 1
            return  # mid-stroke: its release pokes again
        if not self.idle.ready(doc):
            self.stats["waits"]["krita_busy"] += 1
            return  # Krita is still rendering the stroke that just ended: checked again when it is done
        started = time.perf_counter()
        self.stats["checks"] += 1
        snapshot = self._capture(doc, settings)
        if snapshot is None:
            return
        captured = time.perf_counter()
        fingerprint = job_fingerprint(snapshot, settings)
        if not self.live.should_send(fingerprint):
            return
        compared = time.perf_counter()
        sent = self._send(doc, snapshot, settings, live=True)
        if sent:
            self.tracker.start(sent, live=True)
            self.live.sent(sent[0], fingerprint)
            done = self.job_sender.left_at
            self.stats["stroke_to_send_ms"].append((done - self.input.last_release) * 1000)
            phases = {"krita_finishing": started - self.input.last_release}
            phases.update(self.job_sender.timings)
            phases.update(fingerprint=compared - captured, plugin_total=done - started)
            self.stats["send_phases_ms"].append({k: round(v * 1000, 2) for k, v in phases.items()})
        else:
            self.live.sent_fingerprint = fingerprint  # a refused job says so once, not on every release

    # --- timers ---------------------------------------------------------------------------------------------

    @guarded
    def pump(self) -> None:
        for _ in range(100):  # bounded, so a flood can't freeze the UI; the rest waits for the next pump
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            self.handle_event(event)

    @guarded
    def slow_tick(self) -> None:
        doc = self.app.activeDocument()
        if doc is not None:
            self._follow_document(doc)
            self._refresh_layer_choices(doc)
        if self.status is Status.CONNECTED and self.welcome is not None and not self.welcome.ready:
            self.network.send(protocol.ListModels())  # its answer tells when the model is loaded
        if self._backend_slow() != self._slow_shown:
            self._show_connection_status()
        self._follow_live_retry()
        if self._settings_dirty:
            self._settings_dirty = False
            persistence.save(self.panel, self.app)

    # --- network events -------------------------------------------------------------------------------------

    def handle_event(self, event: object) -> None:
        if isinstance(event, StatusChanged):
            self._on_status(event)
        elif isinstance(event, Connected):
            self._on_connected(event.welcome, event.served_by)
        elif isinstance(event, ResultReady):
            self._on_result(event)
        elif isinstance(event, ServerMessage):
            self._on_message(event.message)

    def _on_status(self, event: StatusChanged) -> None:
        self.status = event.status
        if event.status is not Status.CONNECTED:
            # Anything the lost connection was doing will never answer: forget it, live restarts from scratch.
            self.tracker.forget()
            self.live.reset()
            self.panel.set_idle()
            self.control_images.forget()
            self.upscales.forget()
            for record in self.records.clear():
                self.applying.ended(record.job_id)
        elif self.panel.live.isChecked():
            # (Re)connected, perhaps to another backend after a failover: the canvas as it is now goes without
            # a stroke (the reset above forgot what was sent, so the check sends).
            self.input.poke()
        self._show_connection_status(event)

    def _backend_slow(self) -> bool:
        return self.tracker.busy and self.tracker.silent_for() > SLOW_AFTER

    def _show_connection_status(self, event: StatusChanged | None = None) -> None:
        self._slow_shown = self._backend_slow()
        line = status_line(self.status, self.welcome, self._slow_shown, event, self.served_by)
        if line is not None:
            self.panel.set_status(*line)

    def _on_connected(self, welcome: protocol.Welcome, served_by: str = "") -> None:
        self.welcome = welcome
        self.served_by = served_by
        listing = ModelListing.of(welcome)
        self.models = listing.models
        self.panel.set_models(listing, list(welcome.samplers))
        self.panel.offer_control_kinds([k for k in welcome.control_kinds if isinstance(k, str)])
        self.panel.offer_from_image(protocol.registry.CONTROL_IMAGE in welcome.modes)
        if not (self.models.get("checkpoints") or []):
            self.panel.set_message(describe_error("no_model", ""), error=True)
        elif self.panel.message.property("plain") == describe_error("no_model", ""):
            self.panel.set_message("")  # that problem is over
        self._show_connection_status()

    def _on_message(self, message: Any) -> None:
        if isinstance(message, protocol.Progress):
            self.tracker.touch(message.job_id)
            if self.tracker.wants(message.job_id) or self.upscales.owns(message.job_id):
                self.panel.set_progress(message.step, message.total)
        elif isinstance(message, protocol.Accepted):
            self.tracker.touch(message.job_id)
        elif isinstance(message, protocol.Cancelled):
            self._job_ended(message.job_id)
        elif isinstance(message, protocol.Error):
            self._on_error(message)
        elif isinstance(message, protocol.ModelList):
            listing = ModelListing.of(message)
            self.models = listing.models
            self.panel.set_models(listing, [])
            if message.loaded:  # the backend lists what it has loaded only once it is ready
                self._mark_ready(message.loaded.get("device"))

    def _on_error(self, error: protocol.Error) -> None:
        live_frame = error.job_id is not None and error.job_id == self.live.in_flight
        text = describe_error(error.code, error.message)
        if error.code == "busy" and not live_frame:
            text = describe_busy(error.message, error.retry_after)  # not resent by itself: say when to
        if self.control_images.owns(error.job_id):
            self.control_images.ended(error.job_id or "", text)
            return
        if self.upscales.owns(error.job_id):
            self.upscales.ended(error.job_id or "", text)
            self.panel.set_idle()
            return
        if error.job_id is None:
            self.panel.set_message(text, error=True)
            return
        transient = error.code in TRANSIENT_CODES
        wanted = self.tracker.wants(error.job_id)
        # A live frame goes again after the server's hint (never before it), or a short pause without one.
        retry_in = (2.0 if error.retry_after is None else error.retry_after) if transient else None
        self._job_ended(error.job_id, retry_in=retry_in, reason=error.code)
        if wanted:
            self.panel.set_message(text, error=not transient)
            if error.code == "not_ready":
                self.panel.set_status("Connected — the backend is still loading its model…", "busy")
            elif error.code == "busy" and live_frame:
                self.panel.set_status(*busy_line(retry_in or 0.0))

    def _job_ended(self, job_id: str, retry_in: float | None = None, reason: str = "") -> None:
        """A job ended without a result (cancelled or failed; `reason`: the error's code)."""
        self.control_images.ended(job_id)
        self.upscales.ended(job_id)
        self.live.ended(job_id, retry_in=retry_in, reason=reason)
        record = self.records.pop(job_id)
        if record is not None and record.purpose is Purpose.REFINE:
            self.applying.ended(job_id)
        if self.tracker.finish(job_id) and not self.tracker.busy:
            self.panel.set_idle()
            self._after_job()

    def _on_result(self, event: ResultReady) -> None:
        result, frame = event.result, event.frame
        if self.upscales.owns(result.job_id):
            self.panel.set_idle()
            upscaled = self.upscales.arrived(result, frame)
            if upscaled is not None and self._is_active(upscaled):
                self._show_document(upscaled)
            return
        if self.control_images.owns(result.job_id):
            changed = self.control_images.arrived(result, frame)
            if changed is not None and self._is_active(changed):
                self._show_document(changed)  # the new layer, chosen in its row
            return
        self.live.ended(result.job_id)
        record = self.records.pop(result.job_id)
        if record is not None and record.purpose is Purpose.REFINE:
            changed = self.applying.refined(result, frame)
            if changed is not None and self._is_active(changed):
                self._show_selected(changed)
            return
        if not self.tracker.finish(result.job_id) or record is None:
            self.stats["stale"] += 1  # superseded by a newer request or cancelled: never shown
            return
        frames = (frame, *event.extra)
        if any(f.encoding is not protocol.ImageEncoding.BGRA8 for f in frames):
            self.panel.set_message(
                f"The backend sent an unexpected image format ({frame.encoding.label}).", True
            )
            return
        seeds = result.seeds or [record.seed + index for index in range(len(frames))]
        for index, image in enumerate(frames):
            self.history.add(_entry(result, image, record, index, seeds[min(index, len(seeds) - 1)]))
        self.stats["results"] += 1
        doc = self.app.activeDocument()
        if doc is not None and _doc_id(doc) == record.document:
            self._show_selected(doc)
        if not self.tracker.busy:
            self.panel.set_idle()
            total = result.timings.get("total")  # seconds
            done = f"Done in {total * 1000:.0f} ms." if isinstance(total, (int, float)) else "Done."
            self.panel.set_message(done if record.live else done + " Apply keeps it as a layer.")
            self._after_job()
        self._mark_ready()

    def _follow_live_retry(self) -> None:
        """A live frame refused as busy (or while loading) goes again once its wait is over, even if the
        painter has stopped painting; meanwhile the status line counts the wait down."""
        left = self.live.retry_in()
        if left is None or not self.panel.live.isChecked() or self.status is not Status.CONNECTED:
            if str(self.panel.status.property("plain") or "").startswith(BUSY_PREFIX):
                self._show_connection_status()  # the wait ended otherwise: live turned off, a result
            return
        if left > 0:
            if self.live.retry_reason == "busy":
                self.panel.set_status(*busy_line(left))
            return
        self._show_connection_status()
        self.check_live()

    def _after_job(self) -> None:
        self._show_connection_status()
        if self.panel.live.isChecked():
            self.input.poke()  # what the painter did while the job ran goes now

    def _mark_ready(self, device: object = None) -> None:
        if self.status is Status.CONNECTED and self.welcome is not None and not self.welcome.ready:
            self.welcome.ready = True
            if isinstance(device, str) and device:
                self.welcome.device = device  # the welcome came while the engine was still starting
            self._show_connection_status()

    # --- sending --------------------------------------------------------------------------------------------

    def _document_for_action(self, needs_backend: bool = True) -> Any | None:
        doc = self.app.activeDocument()
        if doc is None:
            self.panel.set_message("Open or create an image first.", error=True)
            return None
        if needs_backend and self.status is not Status.CONNECTED:
            self.panel.set_message("Not connected to the backend yet (see the status above).", error=True)
            return None
        return doc

    def _capture(self, doc: Any, settings: GenerationSettings) -> CanvasCapture | None:
        """What a job would carry now; None when the document can't be sent (the panel says why)."""
        try:
            family = self.panel.listing.checkpoint_family(settings.checkpoint)
            native_side = protocol.family_native_side(family)
            return self.job_sender.capture(
                doc, settings, refresh_allowed=_no_buttons_down, native_side=native_side
            )
        except CaptureError as problem:
            if str(problem) != "busy":
                self.panel.set_message(str(problem), error=True)
            return None

    def _send(
        self, doc: Any, snapshot: CanvasCapture, settings: GenerationSettings, *, live: bool
    ) -> list[str]:
        """The ids sent; [] when nothing could be sent (the panel says why)."""
        sent = self.job_sender.send(doc, snapshot, settings, live=live, models=self.models)
        if not sent:
            self.panel.set_message("Not connected to the backend (see the status above).", error=True)
        self.stats["sent"] = self.job_sender.sent
        return sent

    def _cancel_current(self) -> None:
        job_ids = self.tracker.forget()
        self.live.reset()
        self.panel.set_idle()
        for job_id in job_ids:
            self.network.send(protocol.Cancel(job_id))

    # --- documents and views --------------------------------------------------------------------------------

    def _follow_document(self, doc: Any) -> None:
        if _doc_id(doc) != self.document:
            self._show_document(doc)

    def _show_document(self, doc: Any) -> None:
        """The panel shows this document's guidance choices and results (after a switch, or a new layer)."""
        self.document = _doc_id(doc)
        self.live.reset()
        state = read_state(doc)
        self._refresh_layer_choices(doc, state)
        self.panel.select_guidance(chosen(doc, state))
        self._show_selected(doc)

    def _refresh_layer_choices(self, doc: Any, state: Any | None = None) -> None:
        state = state or read_state(doc)
        self.panel.set_layer_choices(layer_choices(doc, state).by_kind)
        self.guides.show(doc, state)  # a deleted layer's reference or region leaves the panel

    def _show_selected(self, doc: Any) -> None:
        present(self.panel, self.history, _doc_id(doc))

    def _is_active(self, doc: Any) -> bool:
        # Krita wraps a document in a new Python object on every call: compare the documents, not the objects.
        active = self.app.activeDocument()
        return active is not None and _doc_id(active) == _doc_id(doc)

    def _document_by_id(self, document: str) -> Any | None:
        active = self.app.activeDocument()
        if active is not None and _doc_id(active) == document:
            return active
        for doc in getattr(self.app, "documents", lambda: [])() or []:
            if _doc_id(doc) == document:
                return doc
        return None

    def _show_bug(self, text: str) -> None:
        self.panel.set_message(text, error=True)


def _entry(
    result: protocol.Result, frame: protocol.ImageFrame, record: JobRecord, index: int, seed: int
) -> ResultEntry:
    """The history entry of one image of a result (a Generate batch has one per seed)."""
    fast = result.params.get("decoder") == "taesd"
    job_id = result.job_id if index == 0 else f"{result.job_id}.{index}"
    # What made this image alone: its seed, one image. Inputs are kept only to refine fast previews.
    kept = replace(
        record,
        job_id=job_id,
        params={**record.params, "seed": seed, "batch": 1},
        images=record.images if fast else (),
    )
    return ResultEntry(
        job_id=job_id,
        document=record.document,
        rect=_rect(result.bounds),
        width=frame.width,
        height=frame.height,
        pixels=bytes(frame.payload),
        recipe={"prompt": record.params.get("prompt", ""), **result.params, "seed": seed},
        record=kept,
        live=record.live,
        fast_decoder=fast,
    )


def _doc_id(doc: Any) -> str:
    return node_id(doc.rootNode())


def _rect(values: Any) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in values)
    return x, y, w, h


def _release(network: Any, sink: Callable[[str], None], *_: Any) -> None:
    """After the controller's Qt object is gone (its event filter went with it): stop its network thread
    (else it reconnects forever)."""
    try:
        remove_error_sink(sink)
        network.stop()
    except Exception:  # noqa: BLE001 - runs from a destructor: nothing may escape
        report_exception("Controller release")


def _no_buttons_down() -> bool:
    """True unless the painter is mid-stroke (a synchronous re-render then would stall the brush)."""
    return QApplication.mouseButtons() == Qt.MouseButton.NoButton
