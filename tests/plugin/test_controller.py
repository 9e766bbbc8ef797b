from __future__ import annotations

import importlib
import json
from dataclasses import replace
from typing import Any

import pytest

from krita_plugin._compat import protocol
from krita_plugin.controller import Controller
from krita_plugin.document_state import read_state
from krita_plugin.guidance import layer_name
from krita_plugin.network import Connected, ResultReady, ServerMessage, Status, StatusChanged
from krita_plugin.nodes import node_id
from krita_plugin.panel import Panel
from krita_plugin.persistence import SETTINGS_GROUP
from krita_plugin.settings import MAX_SEED, ConnectionSettings
from tests.plugin.fake_krita import Selection


class FakeNetwork:
    def __init__(self, emit) -> None:
        self.emit = emit
        self.sent: list[tuple[Any, ...]] = []
        self.connected = False
        self.started: list[ConnectionSettings] = []
        self.stopped = False

    def start(self, settings: ConnectionSettings) -> None:
        self.started.append(settings)

    def reconnect_now(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True

    def send(self, *parts: Any) -> bool:
        if not self.connected:
            return False
        self.sent.append(parts)
        return True

    def jobs(self) -> list[protocol.JobRequest]:
        return [p[0] for p in self.sent if isinstance(p[0], protocol.JobRequest)]

    def frames(self, job: protocol.JobRequest) -> dict[str, protocol.ImageFrame]:
        parts = next(p for p in self.sent if p[0] is job)
        decoded = [protocol.decode_frame(f, 1 << 16, 1 << 16) for f in parts[1:]]
        return {frame.slot: frame for frame in decoded}


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


WELCOME = protocol.Welcome(
    1, "fake", "cpu",
    {"checkpoints": ["tiny.safetensors"], "loras": ["lcm.safetensors", "style.safetensors"]},
    {}, ["lcm", "euler"], protocol.Limits(), True,
)  # fmt: skip
GREEN = b"\x00\xff\x00\xff"


@pytest.fixture
def setup(krita_app):
    controller, network, doc, panel, clock = started(krita_app)
    yield controller, network, doc, panel, clock
    controller.shutdown()


def started(krita_app) -> tuple[Controller, FakeNetwork, Any, Panel, Clock]:
    """A connected controller over a document with a "Painting" layer (the panel reads the protocol's tables
    now: a kind registered before this call gets its guidance row)."""
    panel = Panel()
    clock = Clock()
    controller = Controller(panel, krita_app, network_factory=FakeNetwork, clock=clock)
    network: FakeNetwork = controller.network
    controller.start()
    network.connected = True
    # The backend reads the same table: a kind registered by a test is one it lists too.
    controller.handle_event(Connected(replace(WELCOME, control_kinds=list(protocol.CONTROL_KINDS))))
    controller.handle_event(StatusChanged(Status.CONNECTED, "Connected."))
    doc = krita_app.activeDocument()
    painting = doc.createNode("Painting", "paintlayer")
    doc.rootNode().addChildNode(painting, doc.find("Background"))
    doc.setActiveNode(painting)
    doc.undo_log.clear()
    return controller, network, doc, panel, clock


def result_for(job: protocol.JobRequest, fill: bytes = GREEN, bounds: list[int] | None = None, size=None):
    if not bounds:
        assert job.bounds is not None, "a job without bounds needs the result's bounds given"
        bounds = job.bounds.to_list()
    x, y, w, h = bounds
    pw, ph = size or (w, h)
    params = {**job.params.to_dict()}
    result = protocol.Result(job.job_id, [x, y, w, h], pw, ph, "bgra8", params, {"total": 0.042})
    frame = protocol.ImageFrame(job.job_id, "result", protocol.ImageEncoding.BGRA8, pw, ph, fill * (pw * ph))
    return ResultReady(result, frame)


def taesd(event: ResultReady) -> ResultReady:
    event.result.params["decoder"] = "taesd"
    return event


def paint(doc, pixel: bytes = b"\x00\x00\xff\xff", x: int = 2, y: int = 2) -> None:
    doc.find("Painting").setPixelData(pixel, x, y, 1, 1)


def pick(panel: Panel, kind: str, layer_id: str) -> None:
    """The painter picks a layer in a kind's guidance row."""
    combo = panel.guidance_rows[kind].layer
    index = combo.findData(layer_id)
    assert index > 0, f"{layer_id} is not offered for {kind}"
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


def test_welcome_fills_the_model_lists_and_status_is_green_only_when_ready(setup) -> None:
    _controller, _, _, panel, _ = setup
    assert [panel.checkpoint.itemData(i) for i in range(panel.checkpoint.count())] == ["", "tiny.safetensors"]
    assert [panel.lora.itemData(i) for i in range(panel.lora.count())] == ["", "style.safetensors"]
    assert panel.status.property("state") == "ok" and "cpu" in panel.status.text()


def test_live_sends_on_change_only_and_never_a_backlog(setup) -> None:
    controller, network, doc, panel, _ = setup
    controller.check_live()
    assert network.sent == []  # live is off
    panel.set_live(True)
    controller.check_live()
    assert len(network.jobs()) == 1
    first = network.jobs()[0]
    assert first.live and first.mode == "img2img" and first.bounds == protocol.Bounds(0, 0, 16, 12)
    assert first.params.resolution == 1.0
    paint(doc)
    for _ in range(5):
        controller.check_live()  # changes while the first job runs are not queued
    assert len(network.jobs()) == 1
    controller.handle_event(result_for(first))
    controller.check_live()
    assert len(network.jobs()) == 2  # then the latest canvas goes once
    controller.handle_event(result_for(network.jobs()[1]))
    for _ in range(12):  # including full re-scans of every layer
        controller.check_live()
    assert len(network.jobs()) == 2  # unchanged canvas: nothing sent


def test_changes_nobody_can_see_send_nothing(setup) -> None:
    controller, network, doc, panel, _ = setup
    panel.set_live(True)
    controller.check_live()
    controller.handle_event(result_for(network.jobs()[0]))
    empty = doc.createNode("empty", "paintlayer")
    doc.rootNode().addChildNode(empty, None)
    empty.setVisible(False)
    controller.check_live()
    assert len(network.jobs()) == 1  # the image to send is the same
    selection = Selection()
    selection.select(1, 1, 4, 4, 255)
    doc.setSelection(selection)
    controller.check_live()
    assert len(network.jobs()) == 2 and network.jobs()[-1].mode == "inpaint"  # a selection is a change


def test_live_results_never_touch_the_document(setup) -> None:
    """The result is shown in the result view; no layer, no undo step, the active layer stays."""
    controller, network, doc, panel, _ = setup
    names = doc.names()
    panel.set_live(True)
    for round_ in range(5):
        paint(doc, bytes([round_, 0, 255, 255]), x=round_)
        controller.check_live()
        controller.handle_event(result_for(network.jobs()[-1]))
        assert doc.activeNode() is doc.find("Painting")
    assert doc.names() == names
    assert doc.undo_log == []
    assert all(node.writes == 0 for node in doc.rootNode().childNodes() if node.name() != "Painting")
    view = panel.result_view
    assert view.image is not None and view.image.pixel(0, 0) == 0xFF00FF00
    assert panel.apply.isEnabled()


def test_prompt_change_sends_in_live(setup) -> None:
    controller, network, _, panel, _ = setup
    panel.set_live(True)
    controller.check_live()
    controller.handle_event(result_for(network.jobs()[0]))
    panel.prompt.setPlainText("a dragon")
    controller.check_live()
    assert network.jobs()[-1].params.prompt == "a dragon"


def test_stale_results_are_dropped(setup) -> None:
    controller, network, _, panel, _ = setup
    controller.on_generate()
    controller.on_generate()  # the newer request replaces the older one
    old, new = network.jobs()
    assert any(isinstance(p[0], protocol.Cancel) and p[0].job_id == old.job_id for p in network.sent)
    controller.handle_event(result_for(old, b"\x01\x01\x01\xff"))
    assert controller.stats["stale"] == 1 and panel.result_view.image is None
    controller.handle_event(result_for(new))
    assert controller.stats["results"] == 1
    shown = panel.result_view.image
    assert shown is not None and shown.pixel(0, 0) == 0xFF00FF00


def test_generate_picks_a_new_seed_unless_locked(setup) -> None:
    controller, network, _, panel, _ = setup
    panel.seed.setValue(5)
    panel.seed_lock.setChecked(True)
    controller.on_generate()
    assert network.jobs()[-1].params.seed == 5
    panel.seed_lock.setChecked(False)
    seeds = set()
    for _ in range(3):
        controller.on_generate()
        seeds.add(network.jobs()[-1].params.seed)
        assert panel.seed.value() == network.jobs()[-1].params.seed  # the panel shows the seed used
    assert len(seeds) > 1


def test_generate_batch_makes_variations_with_consecutive_seeds_in_one_job(setup) -> None:
    controller, network, doc, panel, _ = setup
    panel.seed.setValue(40)
    panel.seed_lock.setChecked(True)
    panel.batch.setValue(3)
    controller.on_generate()
    (job,) = network.jobs()
    assert (job.params.seed, job.params.batch, job.live) == (40, 3, False)
    first = result_for(job, bytes([0, 0, 0, 255]))
    first.result.count, first.result.seeds = 3, [40, 41, 42]
    bgra8 = protocol.ImageEncoding.BGRA8
    frames = [
        protocol.ImageFrame(job.job_id, f"result.{i}", bgra8, 16, 12, bytes([i, 0, 0, 255]) * 192)
        for i in (1, 2)
    ]
    controller.handle_event(ResultReady(first.result, first.frame, tuple(frames)))
    entries = controller.history.entries(node_id(doc.rootNode()))
    assert [e.recipe["seed"] for e in entries] == [42, 41, 40]
    assert [e.pixels[0] for e in entries] == [2, 1, 0]
    assert all(e.record.params["batch"] == 1 for e in entries)  # each is what its own seed makes
    assert panel.history.count() == 3
    controller.history.select(node_id(doc.rootNode()), entries[1].job_id)
    controller.on_apply()
    assert doc.names()[-1].endswith("seed 41")
    live = controller.panel.live
    live.setChecked(True)
    controller.check_live()
    assert network.jobs()[-1].live and network.jobs()[-1].params.batch == 1  # live frames are single


def test_history_keeps_results_and_a_click_shows_one(setup) -> None:
    controller, network, doc, panel, _clock = setup
    panel.seed_lock.setChecked(True)
    for index in range(25):
        panel.seed.setValue(index)
        controller.on_generate()
        controller.handle_event(result_for(network.jobs()[-1], bytes([index, 0, 0, 255])))
    entries = controller.history.entries(node_id(doc.rootNode()))
    assert len(entries) >= 20 and entries[0].record.seed == 24
    assert panel.history.count() == len(entries)
    oldest = entries[-1]
    panel.history.picked.emit(oldest.job_id)
    assert panel.result_view.image.pixel(0, 0) == 0xFF000000 | (oldest.record.seed)  # BGRA: blue = seed
    controller.on_apply()
    applied = doc.names()[-1]
    assert applied.endswith(f"seed {oldest.record.seed}")


def test_live_frames_replace_each_other_unless_the_painter_paused(setup) -> None:
    controller, network, doc, panel, clock = setup
    panel.set_live(True)
    for round_ in range(4):
        paint(doc, bytes([round_, 1, 2, 255]))
        controller.check_live()
        controller.handle_event(result_for(network.jobs()[-1]))
        clock.now += 0.2  # painting fast: each frame replaces the last
    assert len(controller.history.entries(node_id(doc.rootNode()))) == 1
    clock.now += 5  # a pause: that frame stays
    paint(doc, b"\x09\x09\x09\xff")
    controller.check_live()
    controller.handle_event(result_for(network.jobs()[-1]))
    assert len(controller.history.entries(node_id(doc.rootNode()))) == 2


def test_selection_redraws_only_the_selection_and_its_context(qapp, krita_app) -> None:
    doc = krita_app.createDocument(200, 150, "big", "RGBA", "U8", "", 72.0)
    krita_app.setActiveDocument(doc)
    controller = Controller(Panel(), krita_app, network_factory=FakeNetwork)
    network: FakeNetwork = controller.network
    controller.start()
    try:
        network.connected = True
        controller.handle_event(Connected(WELCOME))
        controller.handle_event(StatusChanged(Status.CONNECTED, "Connected."))
        selection = Selection()
        selection.select(120, 90, 10, 8, 255)
        doc.setSelection(selection)
        controller.panel.set_live(True)
        controller.check_live()
        (job,) = network.jobs()
        assert job.mode == "inpaint" and {i.slot for i in job.images} == {"canvas", "mask"}
        assert job.bounds is not None
        x, y, w, h = job.bounds.to_list()
        assert (x, y, x + w, y + h) == (56, 26, 194, 150)  # 64 px of context, clipped to the document
        mask = network.frames(job)["mask"]
        assert (mask.width, mask.height) == (w, h)
        assert mask.payload[(90 - y) * w + (120 - x)] == 255 and mask.payload[0] == 0
        controller.handle_event(result_for(job, bounds=[110, 80, 30, 28]))
        controller.on_apply()
        applied = doc.find(doc.names()[-1])
        assert applied.bounds().getRect() == (110, 80, 30, 28)
    finally:
        controller.shutdown()


def test_results_at_the_working_size_are_scaled_to_their_bounds(setup) -> None:
    controller, network, doc, _panel, _ = setup
    controller.on_generate()
    (job,) = network.jobs()
    assert (job.images[0].width, job.images[0].height) == (16, 12)  # small: sent as it is
    controller.handle_event(result_for(job, b"\x10\x20\x30\xff", size=(8, 6)))  # working size < canvas
    controller.on_apply()
    applied = doc.find(doc.names()[-1])
    assert applied.bounds().getRect() == (0, 0, 16, 12)  # scaled to the bounds
    assert applied.pixelData(7, 5, 1, 1) == b"\x10\x20\x30\xff"


def test_errors_are_shown_in_painter_words_and_transient_ones_retry(setup) -> None:
    controller, network, _, panel, clock = setup
    panel.set_live(True)
    controller.check_live()
    job = network.jobs()[0]
    controller.handle_event(ServerMessage(protocol.Error("not_ready", "loading", job.job_id)))
    assert "still loading" in panel.message.property("plain")
    controller.check_live()
    assert len(network.jobs()) == 1  # not at once
    clock.now += 3
    controller.check_live()
    assert len(network.jobs()) == 2  # the same canvas again, after a pause
    controller.handle_event(
        ServerMessage(protocol.Error("model_error", "The checkpoint is broken.", network.jobs()[1].job_id))
    )
    assert panel.message.property("plain") == "The checkpoint is broken."
    clock.now += 10
    controller.check_live()
    assert len(network.jobs()) == 2  # a real error does not loop


def test_disconnect_pauses_live_and_reconnect_resumes(setup) -> None:
    controller, network, _, panel, _ = setup
    panel.set_live(True)
    controller.check_live()
    network.connected = False
    controller.handle_event(
        StatusChanged(Status.WAITING, "No backend is running at ws://127.0.0.1:9631.", 2.0)
    )
    assert "Retrying in 2 s" in panel.status.text() and panel.status.property("state") == "bad"
    assert not controller.tracker.busy
    controller.check_live()
    assert len(network.jobs()) == 1
    network.connected = True
    controller.handle_event(Connected(WELCOME))
    controller.handle_event(StatusChanged(Status.CONNECTED, "Connected."))
    controller.check_live()
    assert len(network.jobs()) == 2  # resumes with the current canvas


def test_hidden_docker_pauses_live(setup) -> None:
    controller, network, _, panel, _ = setup
    panel.set_live(True)
    controller.set_visible(False)
    controller.check_live()
    assert network.jobs() == []
    controller.set_visible(True)
    controller.check_live()
    assert len(network.jobs()) == 1


def test_cancel_stops_live_and_tells_the_backend(setup) -> None:
    controller, network, _, panel, _ = setup
    panel.set_live(True)
    controller.check_live()
    job = network.jobs()[0]
    controller.on_cancel()
    assert isinstance(network.sent[-1][0], protocol.Cancel) and network.sent[-1][0].job_id == job.job_id
    assert not panel.live.isChecked()
    controller.handle_event(result_for(job))
    assert controller.stats["stale"] == 1


def test_new_scribble_layer_is_offered_first_sent_and_left_out_of_the_canvas(setup) -> None:
    controller, network, doc, panel, _ = setup
    controller.on_create_guidance_layer("scribble")
    scribble = doc.find(layer_name("scribble"))
    assert doc.names()[-1] == "Scribble (Live Diffusion)" and doc.activeNode() is scribble  # ready to draw on
    combo = panel.guidance_rows["scribble"].layer
    assert combo.itemData(1) == node_id(scribble)  # the plugin's guidance layers first
    assert combo.currentData() == node_id(scribble)
    scribble.setPixelData(b"\x00\x00\x00\xff" * 16, 0, 0, 16, 1)
    panel.set_live(True)
    controller.check_live()
    (job,) = network.jobs()
    assert [c.kind for c in job.params.controls] == ["scribble"]
    frames = network.frames(job)
    assert frames["scribble"].payload[:4] == b"\x00\x00\x00\xff"
    assert frames["canvas"].payload[:4] == b"\xff\xff\xff\xff"
    assert scribble.visible()  # guidance stays in view while live


def test_guidance_choices_live_in_the_document_across_switches_and_restarts(setup, krita_app) -> None:
    controller, _, doc, panel, _ = setup
    lines = doc.createNode("my lines", "paintlayer")
    doc.rootNode().addChildNode(lines, None)
    controller.slow_tick()
    pick(panel, "scribble", node_id(lines))
    assert read_state(doc).guidance == {"scribble": node_id(lines)}
    other = krita_app.createDocument(8, 8, "other", "RGBA", "U8", "", 72.0)
    krita_app.setActiveDocument(other)
    controller.slow_tick()
    assert panel.guidance_rows["scribble"].layer.currentData() == ""  # that document has no scribble choice
    krita_app.setActiveDocument(doc)
    controller.slow_tick()
    assert panel.guidance_rows["scribble"].layer.currentData() == node_id(lines)
    controller.shutdown()
    again = Controller(Panel(), krita_app, network_factory=FakeNetwork)
    again.start()
    again.slow_tick()
    restored = again.panel.guidance_rows["scribble"].layer.currentData()
    assert restored == node_id(lines)  # a restart reads it from the document
    again.shutdown()


def test_applied_results_are_not_offered_as_guidance(setup) -> None:
    controller, network, _doc, panel, _ = setup
    controller.on_generate()
    controller.handle_event(result_for(network.jobs()[0]))
    controller.on_apply()
    controller.slow_tick()
    combo = panel.guidance_rows["scribble"].layer
    offered = [combo.itemText(i) for i in range(combo.count())]
    assert offered == ["None", "Background", "Painting"]


def test_pose_layer_created_picked_and_sent_as_keypoints(setup) -> None:
    controller, network, doc, panel, _ = setup
    controller.on_create_guidance_layer("pose")
    pose_layer = next(n for n in doc.rootNode().childNodes() if n.type() == "vectorlayer")
    assert panel.guidance_rows["pose"].layer.currentData() == node_id(pose_layer)
    assert doc.activeNode() is doc.find("Painting")
    panel.set_live(True)
    controller.check_live()
    (job,) = network.jobs()
    (control,) = job.params.controls
    assert control.kind == "pose" and len(control.pose) == 1 and control.pose[0][1] is not None
    assert {i.slot for i in job.images} == {"canvas"}


def test_apply_is_disabled_and_explained_without_a_result(setup) -> None:
    controller, _, _, panel, _ = setup
    assert not panel.apply.isEnabled() and not panel.apply_onto.isEnabled()
    controller.on_apply()
    assert "Nothing to apply" in panel.message.property("plain")


def test_no_document_is_explained(setup, krita_app) -> None:
    controller, _, _, panel, _ = setup
    krita_app.setActiveDocument(None)
    controller.check_live()
    controller.on_generate()
    assert "Open or create an image" in panel.message.property("plain")


def test_bugs_never_escape_and_are_shown(setup, monkeypatch) -> None:
    controller, network, _, panel, _ = setup

    def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    controller.on_generate()
    controller.handle_event(result_for(network.jobs()[0]))
    monkeypatch.setattr("krita_plugin.apply_flow.apply_as_layer", broken)
    controller.on_apply()  # must not raise
    assert "went wrong" in panel.message.property("plain")


def test_settings_are_saved_and_restored(setup, krita_app) -> None:
    controller, _, _, panel, _ = setup
    panel.prompt.setPlainText("misty forest")
    panel.address.setText("10.0.0.2:9000")
    panel.resolution.setCurrentIndex(panel.resolution.findData(1.5))
    panel.sections["models"].set_expanded(True)
    controller.shutdown()
    again = Controller(Panel(), krita_app, network_factory=FakeNetwork)
    again.start()
    assert again.panel.settings().prompt == "misty forest"
    assert again.panel.settings().resolution == 1.5
    assert again.panel.sections["models"].body.isVisibleTo(again.panel.sections["models"])
    assert again.network.started[-1].url == "ws://10.0.0.2:9000"
    again.shutdown()


def test_loading_backend_is_polled_until_ready(krita_app) -> None:
    from dataclasses import replace

    controller = Controller(Panel(), krita_app, network_factory=FakeNetwork)
    network: FakeNetwork = controller.network
    controller.start()
    try:
        network.connected = True
        loading = replace(
            WELCOME,
            device="starting",
            ready=False,
            message="Loading the engine; jobs sent now start when it is ready.",
        )
        controller.handle_event(Connected(loading))
        controller.handle_event(StatusChanged(Status.CONNECTED, "Connected."))
        assert controller.panel.status.property("state") == "busy"  # not green: it can't paint yet
        assert "Loading the engine" in controller.panel.status.text()
        controller.slow_tick()
        assert isinstance(network.sent[-1][0], protocol.ListModels)
        controller.handle_event(ServerMessage(protocol.ModelList(WELCOME.models, {})))
        assert controller.panel.status.property("state") == "busy"  # still nothing loaded
        loaded = {"checkpoint": "tiny", "device": "cpu float32"}
        controller.handle_event(ServerMessage(protocol.ModelList(WELCOME.models, loaded)))
        assert controller.panel.status.property("state") == "ok"
        assert controller.panel.status.property("plain") == "Ready (cpu float32)"  # no longer "starting"
        sent = len(network.sent)
        controller.slow_tick()
        assert len(network.sent) == sent  # no more polling once ready
    finally:
        controller.shutdown()


def test_no_checkpoint_message_goes_when_a_backend_with_models_connects(krita_app) -> None:
    from dataclasses import replace

    controller = Controller(Panel(), krita_app, network_factory=FakeNetwork)
    controller.start()
    try:
        controller.network.connected = True
        controller.handle_event(Connected(replace(WELCOME, models={"checkpoints": []}, ready=False)))
        controller.handle_event(StatusChanged(Status.CONNECTED, "Connected."))
        assert "no checkpoint" in controller.panel.message.property("plain")
        assert controller.panel.status.property("state") != "ok"
        controller.handle_event(Connected(WELCOME))
        controller.handle_event(StatusChanged(Status.CONNECTED, "Connected."))
        assert controller.panel.message.property("plain") == ""
        assert controller.panel.status.property("state") == "ok"
    finally:
        controller.shutdown()


def test_slow_backend_status_ends_with_the_job(setup) -> None:
    controller, network, _, panel, clock = setup
    controller.on_generate()
    clock.now += 20
    controller.slow_tick()
    assert "slow" in panel.status.property("plain")
    controller.handle_event(result_for(network.jobs()[0]))
    assert "slow" not in panel.status.property("plain") and panel.status.property("state") == "ok"


def test_apply_is_instant_and_the_full_quality_render_replaces_it_in_place(setup) -> None:
    controller, network, doc, panel, _ = setup
    panel.set_live(True)
    controller.check_live()
    (live,) = network.jobs()
    controller.handle_event(taesd(result_for(live, b"\x10\x10\x10\xff")))
    panel.prompt.setPlainText("something else")  # typed after the preview arrived, before Apply
    paint(doc, b"\x33\x33\x33\xff")  # and painted: the render must still use the inputs that made it
    controller.on_apply()
    applied = doc.find(doc.names()[-1])
    assert applied.pixelData(0, 0, 1, 1) == b"\x10\x10\x10\xff"  # what the painter saw, at once
    assert doc.undo_log == [("add", applied.name())]
    assert doc.activeNode() is doc.find("Painting")
    refine = network.jobs()[-1]
    assert not refine.live and refine.params.to_dict() == live.params.to_dict()
    assert network.frames(refine)["canvas"].payload == network.frames(live)["canvas"].payload
    controller.check_live()  # the painter's new stroke goes as a live frame meanwhile
    assert network.jobs()[-1].live
    final = result_for(refine, b"\x20\x30\x40\xff")
    controller.handle_event(final)
    assert applied.pixelData(0, 0, 1, 1) == b"\x20\x30\x40\xff"
    assert doc.undo_log == [("add", applied.name())]  # no extra undo step
    assert not controller.history.selected(node_id(doc.rootNode())).fast_decoder


def test_the_painters_strokes_on_an_applied_layer_win_over_the_late_render(setup) -> None:
    controller, network, doc, panel, _ = setup
    controller.on_generate()
    controller.handle_event(taesd(result_for(network.jobs()[0], b"\x10\x10\x10\xff")))
    controller.on_apply()
    applied = doc.find(doc.names()[-1])
    applied.setPixelData(b"\x01\x02\x03\xff", 5, 5, 1, 1)  # the painter touched it
    controller.handle_event(result_for(network.jobs()[-1], b"\x20\x30\x40\xff"))
    assert applied.pixelData(5, 5, 1, 1) == b"\x01\x02\x03\xff"
    assert applied.pixelData(0, 0, 1, 1) == b"\x10\x10\x10\xff"
    assert "history" in panel.message.property("plain")


def test_apply_onto_the_active_layer_merges_once_final(setup) -> None:
    controller, network, doc, _panel, _ = setup
    controller.on_generate()
    controller.handle_event(taesd(result_for(network.jobs()[0], b"\x10\x10\x10\xff")))
    controller.on_apply_onto()
    assert doc.names() == ["Background", "Painting", "Live Diffusion: applying…"]  # seen at once
    controller.handle_event(result_for(network.jobs()[-1], b"\x20\x30\x40\xff"))
    assert doc.names() == ["Background", "Painting"]
    merged = doc.find("Painting")
    assert merged.pixelData(0, 0, 1, 1) == b"\x20\x30\x40\xff"
    assert doc.activeNode() is merged
    assert [step for step, _ in doc.undo_log] == ["add", "merge down"]


def test_apply_onto_never_merges_into_a_layer_moved_in_between(setup) -> None:
    controller, network, doc, _panel, _ = setup
    controller.on_generate()
    controller.handle_event(taesd(result_for(network.jobs()[0], b"\x10\x10\x10\xff")))
    controller.on_apply_onto()
    between = doc.createNode("sketch", "paintlayer")
    doc.rootNode().addChildNode(between, doc.find("Painting"))  # the painter adds a layer meanwhile
    controller.handle_event(result_for(network.jobs()[-1], b"\x20\x30\x40\xff"))
    names = doc.names()
    assert names[:3] == ["Background", "Painting", "sketch"] and names[3].endswith(
        "seed " + str(network.jobs()[0].params.seed)
    )
    assert doc.find("Painting").pixelData(0, 0, 1, 1) != b"\x20\x30\x40\xff"  # their layer untouched


def test_apply_onto_refuses_a_non_paint_layer(setup) -> None:
    controller, network, doc, panel, _ = setup
    controller.on_generate()
    controller.handle_event(result_for(network.jobs()[0]))
    controller.on_create_guidance_layer("pose")
    doc.setActiveNode(next(n for n in doc.rootNode().childNodes() if n.type() == "vectorlayer"))
    names = doc.names()
    controller.on_apply_onto()
    assert doc.names() == names and "paint layer" in panel.message.property("plain")


def test_results_for_another_document_wait_in_its_history(setup, krita_app) -> None:
    controller, network, doc, panel, _ = setup
    controller.on_generate()
    other = krita_app.createDocument(8, 8, "other", "RGBA", "U8", "", 72.0)
    krita_app.setActiveDocument(other)
    controller.handle_event(result_for(network.jobs()[0]))
    assert panel.result_view.image is None
    krita_app.setActiveDocument(doc)
    controller.slow_tick()
    assert panel.result_view.image is not None


@pytest.mark.parametrize(
    "saved",
    [
        '{"seed": -1099511627776}',
        '{"seed": 1099511627776}',
        '{"steps": 1000000000000}',
        '{"strength": NaN}',
        '{"strength": 1e308}',
        '{"cfg": Infinity, "lora_strength": -Infinity}',
    ],
)
def test_odd_saved_settings_do_not_stop_the_plugin_from_starting(krita_app, saved: str) -> None:
    krita_app.writeSetting(SETTINGS_GROUP, "generation", saved)
    panel = Panel()
    controller = Controller(panel, krita_app, network_factory=FakeNetwork)
    try:
        controller.start()
        assert controller.network.started  # the connection was started...
        assert all(timer.isActive() for timer in controller._timers)  # ...and live mode's timers run
        settings = panel.settings()
        assert 0 <= settings.seed <= MAX_SEED and 1 <= settings.steps <= 50
        assert 0.0 <= settings.strength <= 1.0
        json.loads(settings.to_json())  # what is saved next time is plain JSON again
    finally:
        controller.shutdown()


def test_closing_a_window_stops_its_dockers_connection(krita_app) -> None:
    from krita_plugin import safe
    from krita_plugin.qt import BINDING, QObject

    sip = importlib.import_module(f"{BINDING}.sip")

    window = QObject()  # Krita deletes a window's dockers (and their controllers) when the window closes
    controller = Controller(Panel(), krita_app, network_factory=FakeNetwork, parent=window)
    network = controller.network
    controller.start()
    sink = controller._show_bug
    sip.delete(window)
    assert network.stopped  # no network thread reconnecting forever for a docker that is gone
    assert sink not in safe._sinks


def test_the_canvas_is_sent_at_the_chosen_checkpoints_working_size(qapp, krita_app) -> None:
    """An SD 1.5 checkpoint works at 512 px: a 1600 px canvas is sent at 768 px (1.5x). An SDXL one works
    at 1024 px: the same canvas is sent at 1536 px, so no detail the model can use is lost on the way."""
    doc = krita_app.createDocument(1600, 1600, "large", "RGBA", "U8", "", 72.0)
    krita_app.setActiveDocument(doc)
    controller = Controller(Panel(), krita_app, network_factory=FakeNetwork)
    network: FakeNetwork = controller.network
    controller.start()
    try:
        network.connected = True
        families = {"checkpoints": {"base.safetensors": "sd15", "xl.safetensors": "sdxl"}}
        models = {"checkpoints": ["base.safetensors", "xl.safetensors"], "loras": []}
        welcome = replace(WELCOME, models=models, families=families, default_checkpoint="base.safetensors")
        controller.handle_event(Connected(welcome))
        controller.handle_event(StatusChanged(Status.CONNECTED, "Connected."))
        controller.on_generate()
        sent = network.frames(network.jobs()[-1])["canvas"]
        assert (sent.width, sent.height) == (768, 768)
        panel = controller.panel
        panel.checkpoint.setCurrentIndex(panel.checkpoint.findData("xl.safetensors"))
        controller.on_generate()
        sent = network.frames(network.jobs()[-1])["canvas"]
        assert (sent.width, sent.height) == (1536, 1536)
    finally:
        controller.shutdown()
