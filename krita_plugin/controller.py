"""Glue between the panel, the active Krita document and the backend connection.

Runs on Krita's UI thread: a 100 ms tick watches the canvas for live mode, a 30 ms pump handles what the
network thread reported, a 1 s timer refreshes layer lists and the "slow backend" status. Every entry point is
guarded, so a bug shows as a message in the panel, never as Krita's "Script error" dialog.
"""

from __future__ import annotations

import functools
import queue
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from PyQt5.QtCore import QObject, Qt, QTimer
from PyQt5.QtWidgets import QApplication

from ._compat import protocol
from .capture import CaptureError, CaptureRequest, capture
from .fingerprint import CanvasWatcher, content_hash
from .jobs import JobIds, JobTracker, LiveState
from .layers import ResultLayers
from .network import Connected, NetworkClient, ResultReady, ServerMessage, Status, StatusChanged
from .nodes import find_node, is_layer, node_id, walk
from .painter_words import TRANSIENT_CODES, describe_error
from .panel import Panel
from .placement import place
from .pose_layer import create_pose_layer, is_pose_layer, read_pose, sync_bones
from .request_builder import build_job
from .safe import add_error_sink, guarded, remove_error_sink, report_exception
from .settings import ConnectionSettings, GenerationSettings, Mode, random_seed

SETTINGS_GROUP = "krita_live_diffusion"
SLOW_AFTER = 8.0  # seconds without word from a running job before the panel says the backend is slow
TICK_MS = 100
PUMP_MS = 30
SLOW_TIMER_MS = 1000


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
        self.watcher = CanvasWatcher()
        self.results = ResultLayers()
        self.records: OrderedDict[str, dict[str, Any]] = OrderedDict()  # job id -> what made it
        self.welcome: protocol.Welcome | None = None
        self.models: dict[str, list[str]] = {}
        self.status = Status.OFFLINE
        self.visible = True
        self.stats = {"sent": 0, "results": 0, "stale": 0}
        self.last_result: ResultReady | None = None  # the last result shown (for diagnostics and tests)
        self.apply_job: str | None = None  # the full-quality render that Apply is waiting for
        self._settings_dirty = False
        self._last_pose_key = ""
        self._timers: list[QTimer] = []
        for interval, slot in ((TICK_MS, self.tick), (PUMP_MS, self.pump), (SLOW_TIMER_MS, self.slow_tick)):
            timer = QTimer(self)
            timer.timeout.connect(slot)
            timer.setInterval(interval)
            self._timers.append(timer)
        panel.connect_requested.connect(self.on_connect_requested)
        panel.live_toggled.connect(self.on_live_toggled)
        panel.generate_clicked.connect(self.on_generate)
        panel.apply_clicked.connect(self.on_apply)
        panel.cancel_clicked.connect(self.on_cancel)
        panel.create_pose_clicked.connect(self.on_create_pose)
        panel.settings_changed.connect(self.on_settings_changed)
        add_error_sink(self._show_bug)
        # A docker goes away with its window, not only when Krita quits: its connection and sink must go too.
        self.destroyed.connect(functools.partial(_release, self.network, self._show_bug))

    # --- life cycle -----------------------------------------------------------------------------------------

    @guarded
    def start(self) -> None:
        self._restore_settings()
        for timer in self._timers:
            timer.start()
        self.network.start(self.panel.connection())

    @guarded
    def shutdown(self) -> None:
        for timer in self._timers:
            timer.stop()
        self._save_settings()
        remove_error_sink(self._show_bug)
        self.network.stop()

    @guarded
    def set_visible(self, visible: bool) -> None:
        """Live pauses while the docker is hidden (the painter can't see what it would do)."""
        self.visible = bool(visible)

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
                self.panel.set_message("Live: paint, and the preview layer follows.")
        elif self.tracker.busy and self.tracker.current_live:
            self._cancel_current()

    @guarded
    def on_generate(self) -> None:
        doc = self.app.activeDocument()
        if doc is None:
            self.panel.set_message("Open or create an image first.", error=True)
            return
        if self.status is not Status.CONNECTED:
            self.panel.set_message("Not connected to the backend yet (see the status above).", error=True)
            return
        if self.tracker.busy:
            self._cancel_current()  # the newest request wins; no queue of old ones
        self._send(doc, live=False)

    @guarded
    def on_apply(self) -> None:
        doc = self.app.activeDocument()
        if doc is None:
            return
        shown = self.results.current(doc)
        server_params = shown.record.get("server_params", {}) if shown is not None else {}
        if shown is not None and server_params.get("decoder") == "taesd" and self.status is Status.CONNECTED:
            # Live previews use the fast approximate decoder; the layer a painter keeps is rendered again at
            # full quality from the same inputs and seed, and applied when it arrives.
            saved = shown.record.get("_settings")
            exact = GenerationSettings.from_json(saved) if isinstance(saved, str) else None
            job_id = self._send(doc, live=False, seed=int(shown.record.get("seed", 0)), settings=exact)
            if job_id is not None:
                self.apply_job = job_id
                self.panel.set_message("Rendering at full quality for Apply…")
            return
        self._apply_shown(doc)

    def _apply_shown(self, doc: Any) -> None:
        layer = self.results.apply(doc)
        if layer is None:
            self.panel.set_message("Nothing to apply yet: generate something first.", error=True)
        else:
            self.panel.set_message(f"Applied as the layer “{layer.name()}”.")
            self.live.reset()

    @guarded
    def on_cancel(self) -> None:
        self._cancel_current()
        if self.panel.live.isChecked():
            self.panel.set_live(False)
        self.panel.set_message("Cancelled.")

    @guarded
    def on_create_pose(self) -> None:
        doc = self.app.activeDocument()
        if doc is None:
            self.panel.set_message("Open or create an image first.", error=True)
            return
        layer = create_pose_layer(doc)  # on top: its joints stay visible and movable above the preview
        self._refresh_layer_choices(doc)
        self.panel.select_pose_layer(node_id(layer))
        self.panel.set_message("Pose layer added: move its joints with the shape select tool.")

    @guarded
    def on_settings_changed(self) -> None:
        self._settings_dirty = True

    # --- timers ---------------------------------------------------------------------------------------------

    @guarded
    def tick(self) -> None:
        doc = self.app.activeDocument()
        if doc is None:
            return
        settings = self.panel.settings()
        pose_node = find_node(doc, settings.pose.node_id) if settings.pose.enabled else None
        if pose_node is not None:
            sync_bones(pose_node)
        if not (self.panel.live.isChecked() and settings.mode is Mode.LIVE):
            return
        if self.status is not Status.CONNECTED or not self.visible:
            return
        fingerprint = self._fingerprint(doc, settings, pose_node)
        if self.live.should_send(fingerprint):
            self._send(doc, live=True, fingerprint=fingerprint)

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
            self._refresh_layer_choices(doc)
        if self.status is Status.CONNECTED and self.welcome is not None and not self.welcome.ready:
            self.network.send(protocol.ListModels())  # its answer tells when the model is loaded
        if self.tracker.busy and self.tracker.silent_for() > SLOW_AFTER:
            self.panel.set_status(
                "Connected; the backend is slow to answer (busy or loading a model)…", "busy"
            )
        if self._settings_dirty:
            self._save_settings()

    # --- network events -------------------------------------------------------------------------------------

    def handle_event(self, event: object) -> None:
        if isinstance(event, StatusChanged):
            self._on_status(event)
        elif isinstance(event, Connected):
            self._on_connected(event.welcome)
        elif isinstance(event, ResultReady):
            self._on_result(event)
        elif isinstance(event, ServerMessage):
            self._on_message(event.message)

    def _on_status(self, event: StatusChanged) -> None:
        self.status = event.status
        if event.status is Status.CONNECTED:
            ready = self.welcome is None or self.welcome.ready
            text = (
                f"Connected ({self.welcome.device})" if self.welcome and self.welcome.device else "Connected"
            )
            if not ready:
                text += " — " + (
                    self.welcome.message if self.welcome and self.welcome.message else "loading…"
                )
            self.panel.set_status(text, "ok" if ready else "busy")
            return
        # Anything the lost connection was doing will never answer: forget it, live restarts from scratch.
        self.tracker.forget()
        self.live.reset()
        self.panel.set_idle()
        if event.status is Status.CONNECTING:
            self.panel.set_status("Connecting…", "busy")
        elif event.status is Status.WAITING:
            retry = f" Retrying in {event.retry_in:.0f} s." if event.retry_in else ""
            self.panel.set_status(event.message + retry, "bad")
        else:
            self.panel.set_status(event.message or "Not connected.", "off")

    def _on_connected(self, welcome: protocol.Welcome) -> None:
        self.welcome = welcome
        self.models = {k: list(v) for k, v in welcome.models.items() if isinstance(v, list)}
        self.panel.set_models(self.models, list(welcome.samplers))
        if not (self.models.get("checkpoints") or []):
            self.panel.set_message(describe_error("no_model", ""), error=True)

    def _on_message(self, message: Any) -> None:
        if isinstance(message, protocol.Progress):
            self.tracker.touch(message.job_id)
            if self.tracker.wants(message.job_id):
                self.panel.set_progress(message.step, message.total)
        elif isinstance(message, protocol.Accepted):
            self.tracker.touch(message.job_id)
        elif isinstance(message, protocol.Cancelled):
            if message.job_id == self.apply_job:
                self.apply_job = None
            self.live.ended(message.job_id)
            if self.tracker.finish(message.job_id):
                self.panel.set_idle()
        elif isinstance(message, protocol.Error):
            self._on_error(message)
        elif isinstance(message, protocol.ModelList):
            self.models = {k: list(v) for k, v in message.models.items() if isinstance(v, list)}
            self.panel.set_models(self.models, [])
            if message.loaded:  # the backend lists what it has loaded only once it is ready
                self._mark_ready()

    def _on_error(self, error: protocol.Error) -> None:
        text = describe_error(error.code, error.message)
        if error.job_id is not None and error.job_id == self.apply_job:
            self.apply_job = None
        if error.job_id is None:
            self.panel.set_message(text, error=True)
            return
        transient = error.code in TRANSIENT_CODES
        self.live.ended(error.job_id, retry_in=2.0 if transient else None)
        if self.tracker.finish(error.job_id):
            self.panel.set_idle()
            self.panel.set_message(text, error=not transient)
            if error.code == "not_ready":
                self.panel.set_status("Connected — the backend is still loading its model…", "busy")

    def _on_result(self, event: ResultReady) -> None:
        result, frame = event.result, event.frame
        self.live.ended(result.job_id)
        record = self.records.pop(result.job_id, None)
        for_apply = result.job_id == self.apply_job
        if for_apply:
            self.apply_job = None
        # A render for Apply is wanted even when live frames were sent after it.
        if not (self.tracker.finish(result.job_id) or for_apply) or record is None:
            self.stats["stale"] += 1  # superseded by a newer request or cancelled: never shown
            return
        self.panel.set_idle()
        doc = self.app.activeDocument()
        if doc is None or node_id(doc.rootNode()) != record.get("_document"):
            self.stats["stale"] += 1  # the painter switched images meanwhile
            return
        if frame.encoding is not protocol.ImageEncoding.BGRA8:
            self.panel.set_message(
                f"The backend sent an unexpected image format ({frame.encoding.label}).", True
            )
            return
        placement = place(result.bounds, frame.width, frame.height, frame.payload)
        shown = {**record, "server_params": result.params, "_result_size": [frame.width, frame.height]}
        # The guidance layers chosen now (not when the job left) may stay above the preview.
        current = self.panel.settings()
        keep_above = frozenset({current.scribble.node_id, current.pose.node_id} - {""})
        self.results.show(doc, placement, shown, keep_above)
        self.stats["results"] += 1
        self.last_result = event
        total = result.timings.get("total")  # seconds
        done = f"Done in {total * 1000:.0f} ms." if isinstance(total, (int, float)) else "Done."
        self.panel.set_message(done + ("" if record.get("live") else " Apply keeps it as a layer."))
        self._mark_ready()
        if for_apply:
            self._apply_shown(doc)

    def _mark_ready(self) -> None:
        if self.status is Status.CONNECTED and self.welcome is not None and not self.welcome.ready:
            self.welcome.ready = True
            self._on_status(StatusChanged(Status.CONNECTED, "Connected."))

    # --- sending --------------------------------------------------------------------------------------------

    def _excluded(self, doc: Any, settings: GenerationSettings) -> set[str]:
        preview = self.results.find_preview(doc)
        ids = {settings.scribble.node_id, settings.pose.node_id} - {""}
        if preview is not None:
            ids.add(node_id(preview))
        return ids

    def _fingerprint(self, doc: Any, settings: GenerationSettings, pose_node: Any | None) -> str:
        extra = [settings.to_json()]
        if settings.scribble.enabled:
            scribble = find_node(doc, settings.scribble.node_id)
            if scribble is not None:
                extra.append(
                    content_hash(bytes(scribble.projectionPixelData(0, 0, doc.width(), doc.height())))
                )
        if pose_node is not None:
            extra.append(repr(read_pose(pose_node, doc.xRes(), doc.yRes())))
        return self.watcher.fingerprint(doc, exclude=self._excluded(doc, settings), extra="|".join(extra))

    def _send(
        self,
        doc: Any,
        *,
        live: bool,
        fingerprint: str = "",
        seed: int | None = None,
        settings: GenerationSettings | None = None,
    ) -> str | None:
        """Capture and send a job; returns its id, or None when nothing could be sent (the panel says why).

        `settings` replaces the panel's (to render again exactly what was shown); `seed` fixes the seed."""
        settings = settings or self.panel.settings()
        if seed is not None:
            settings.seed = seed
        elif not live and not settings.seed_locked:
            settings.seed = random_seed()
            self.panel.set_seed(settings.seed)
        request = CaptureRequest(
            exclude=self._excluded(doc, settings),
            with_mask=settings.mode is Mode.INPAINT,
            scribble_id=settings.scribble.node_id,
            pose_id=settings.pose.node_id,
        )
        try:
            snapshot = capture(doc, request, refresh_allowed=_no_buttons_down)
            self._check_limits(snapshot.width, snapshot.height)
        except CaptureError as problem:
            if str(problem) != "busy":
                self.panel.set_message(str(problem), error=True)
                if live:
                    self.live.sent_fingerprint = fingerprint  # don't repeat the message 10x a second
            return None
        job_id = self.ids.next("live" if live else settings.mode.value)
        job = build_job(job_id, settings, snapshot, live=live, models=self.models)
        if not self.network.send(job.request, *job.frames):
            self.panel.set_message("Not connected to the backend (see the status above).", error=True)
            return None
        self.records[job_id] = {
            **job.request.params.to_dict(),
            "mode": job.request.mode,
            "live": live,
            "job_id": job_id,
            "_document": node_id(doc.rootNode()),
            "_settings": settings.to_json(),
        }
        while len(self.records) > 16:
            self.records.popitem(last=False)
        self.tracker.start(job_id, live)
        if live:
            self.live.sent(job_id, fingerprint)
        else:
            self.panel.set_waiting()
            self.panel.set_message("Working…")
        self.stats["sent"] += 1
        return job_id

    def _check_limits(self, width: int, height: int) -> None:
        limits = self.welcome.limits if self.welcome is not None else protocol.Limits()
        if width > limits.max_width or height > limits.max_height:
            raise CaptureError(
                f"The image ({width}x{height}) is larger than the backend accepts "
                f"({limits.max_width}x{limits.max_height}). Scale it down or crop it."
            )

    def _cancel_current(self) -> None:
        job_id = self.tracker.forget()
        self.live.reset()
        self.panel.set_idle()
        if job_id is not None:
            self.network.send(protocol.Cancel(job_id))

    # --- layers ---------------------------------------------------------------------------------------------

    def _refresh_layer_choices(self, doc: Any) -> None:
        preview_ids = self.results.preview_ids
        scribble: list[tuple[str, str]] = []
        pose: list[tuple[str, str]] = []
        for node in walk(doc.rootNode()):
            if not is_layer(node) or node_id(node) in preview_ids:
                continue
            if node.type() == "vectorlayer" and is_pose_layer(node):
                pose.append((node_id(node), node.name()))
            elif node.type() in ("paintlayer", "vectorlayer"):
                scribble.append((node_id(node), node.name()))
        self.panel.set_layer_choices(scribble, pose)

    # --- settings -------------------------------------------------------------------------------------------

    def _restore_settings(self) -> None:
        read = getattr(self.app, "readSetting", None)
        if read is None:
            return
        self.panel.set_connection(
            ConnectionSettings(
                read(SETTINGS_GROUP, "address", self.panel.connection().address)
                or self.panel.connection().address,
                read(SETTINGS_GROUP, "token", ""),
            )
        )
        saved = read(SETTINGS_GROUP, "generation", "")
        if saved:
            self.panel.set_settings(GenerationSettings.from_json(saved))
        self._settings_dirty = False

    def _save_settings(self) -> None:
        write = getattr(self.app, "writeSetting", None)
        self._settings_dirty = False
        if write is None:
            return
        connection = self.panel.connection()
        write(SETTINGS_GROUP, "address", connection.address)
        write(SETTINGS_GROUP, "token", connection.token)
        write(SETTINGS_GROUP, "generation", self.panel.settings().to_json())

    def _show_bug(self, text: str) -> None:
        self.panel.set_message(text, error=True)


def _release(network: Any, sink: Callable[[str], None], *_: Any) -> None:
    """After the controller's Qt object is gone: stop its network thread (else it reconnects forever)."""
    try:
        remove_error_sink(sink)
        network.stop()
    except Exception:  # noqa: BLE001 - runs from a destructor: nothing may escape
        report_exception("Controller release")


def _no_buttons_down() -> bool:
    """True unless the painter is mid-stroke (a synchronous re-render then would stall the brush)."""
    return QApplication.mouseButtons() == Qt.NoButton
