from __future__ import annotations

from typing import Any

import pytest

from krita_plugin._compat import protocol
from krita_plugin.controller import Controller
from krita_plugin.layers import PREVIEW_NAME
from krita_plugin.network import Connected, ResultReady, ServerMessage, Status, StatusChanged
from krita_plugin.nodes import node_id
from krita_plugin.panel import Panel
from krita_plugin.settings import ConnectionSettings, Mode
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


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


WELCOME = protocol.Welcome(
    1, "fake", "cpu",
    {"checkpoints": ["tiny.safetensors"], "loras": ["lcm.safetensors", "style.safetensors"]},
    {}, ["lcm", "euler"], protocol.Limits(), True,
)  # fmt: skip


@pytest.fixture
def setup(krita_app):
    panel = Panel()
    clock = Clock()
    controller = Controller(panel, krita_app, network_factory=FakeNetwork, clock=clock)
    network: FakeNetwork = controller.network
    controller.start()
    network.connected = True
    controller.handle_event(Connected(WELCOME))
    controller.handle_event(StatusChanged(Status.CONNECTED, "Connected."))
    yield controller, network, krita_app.activeDocument(), panel, clock
    controller.shutdown()


def result_for(job: protocol.JobRequest, fill: bytes = b"\x00\xff\x00\xff", bounds: list[int] | None = None):
    x, y, w, h = bounds or job.bounds.to_list()
    result = protocol.Result(job.job_id, [x, y, w, h], w, h, "bgra8", job.params.to_dict(), {"total": 0.042})
    frame = protocol.ImageFrame(job.job_id, "result", protocol.ImageEncoding.BGRA8, w, h, fill * (w * h))
    return ResultReady(result, frame)


def paint(doc, pixel: bytes = b"\x00\x00\xff\xff", x: int = 2, y: int = 2) -> None:
    doc.activeNode().setPixelData(pixel, x, y, 1, 1)


def test_welcome_fills_the_model_lists(setup) -> None:
    _, _, _, panel, _ = setup
    assert [panel.checkpoint.itemData(i) for i in range(panel.checkpoint.count())] == ["", "tiny.safetensors"]
    assert [panel.lora.itemData(i) for i in range(panel.lora.count())] == ["", "style.safetensors"]
    assert "Connected" in panel.status.text() and "cpu" in panel.status.text()


def test_live_sends_on_change_only_and_never_a_backlog(setup) -> None:
    controller, network, doc, panel, _ = setup
    controller.tick()
    assert network.sent == []  # live is off
    panel.set_live(True)
    controller.tick()
    assert len(network.jobs()) == 1
    first = network.jobs()[0]
    assert first.live and first.mode == "img2img" and first.bounds == protocol.Bounds(0, 0, 16, 12)
    paint(doc)
    for _ in range(5):
        controller.tick()  # changes while the first job runs are not queued
    assert len(network.jobs()) == 1
    controller.handle_event(result_for(first))
    controller.tick()
    assert len(network.jobs()) == 2  # then the latest canvas goes once
    controller.handle_event(result_for(network.jobs()[1]))
    for _ in range(5):
        controller.tick()
    assert len(network.jobs()) == 2  # unchanged canvas: nothing sent


def test_live_result_shows_in_the_preview_without_the_preview_feeding_back(setup) -> None:
    controller, network, doc, panel, _ = setup
    panel.set_live(True)
    controller.tick()
    controller.handle_event(result_for(network.jobs()[0]))
    preview = doc.find(PREVIEW_NAME)
    assert doc.names()[-1] == PREVIEW_NAME
    assert preview.pixelData(0, 0, 16, 12) == b"\x00\xff\x00\xff" * (16 * 12)
    for _ in range(12):  # including a full re-scan of every layer
        controller.tick()
    assert len(network.jobs()) == 1  # showing a result is not a change of the painting
    assert doc.find("Background").writes == 0


def test_prompt_change_sends_in_live(setup) -> None:
    controller, network, _, panel, _ = setup
    panel.set_live(True)
    controller.tick()
    controller.handle_event(result_for(network.jobs()[0]))
    panel.prompt.setPlainText("a dragon")
    controller.tick()
    assert network.jobs()[-1].params.prompt == "a dragon"


def test_stale_results_are_dropped(setup) -> None:
    controller, network, doc, panel, _ = setup
    panel.mode.setCurrentIndex(panel.mode.findData(Mode.GENERATE.value))
    controller.on_generate()
    controller.on_generate()  # the newer request replaces the older one
    old, new = network.jobs()
    assert any(isinstance(p[0], protocol.Cancel) and p[0].job_id == old.job_id for p in network.sent)
    controller.handle_event(result_for(old, b"\x01\x01\x01\xff"))
    assert controller.stats["stale"] == 1
    assert PREVIEW_NAME not in doc.names()
    controller.handle_event(result_for(new))
    assert controller.stats["results"] == 1
    assert doc.find(PREVIEW_NAME).pixelData(0, 0, 1, 1) == b"\x00\xff\x00\xff"


def test_generate_picks_a_new_seed_unless_locked(setup) -> None:
    controller, network, _, panel, _ = setup
    panel.mode.setCurrentIndex(panel.mode.findData(Mode.GENERATE.value))
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


def test_inpaint_sends_the_selection_and_places_the_result(setup) -> None:
    controller, network, doc, panel, _ = setup
    panel.mode.setCurrentIndex(panel.mode.findData(Mode.INPAINT.value))
    controller.on_generate()
    assert network.jobs() == []
    assert "Select the area" in panel.message.property("plain")
    selection = Selection()
    selection.select(4, 3, 5, 4, 255)
    doc.setSelection(selection)
    controller.on_generate()
    (job,) = network.jobs()
    assert job.mode == "inpaint" and {i.slot for i in job.images} == {"canvas", "mask"}
    controller.handle_event(result_for(job, bounds=[4, 3, 5, 4]))
    assert doc.find(PREVIEW_NAME).bounds().getRect() == (4, 3, 5, 4)
    controller.on_apply()
    applied = doc.names()[-2]
    assert applied.endswith(f"seed {job.params.seed}")
    assert doc.find(applied).bounds().getRect() == (4, 3, 5, 4)


def test_errors_are_shown_in_painter_words_and_transient_ones_retry(setup) -> None:
    controller, network, _, panel, clock = setup
    panel.set_live(True)
    controller.tick()
    job = network.jobs()[0]
    controller.handle_event(ServerMessage(protocol.Error("not_ready", "loading", job.job_id)))
    assert "still loading" in panel.message.property("plain")
    controller.tick()
    assert len(network.jobs()) == 1  # not at once
    clock.now += 3
    controller.tick()
    assert len(network.jobs()) == 2  # the same canvas again, after a pause
    controller.handle_event(
        ServerMessage(protocol.Error("model_error", "The checkpoint is broken.", network.jobs()[1].job_id))
    )
    assert panel.message.property("plain") == "The checkpoint is broken."
    clock.now += 10
    controller.tick()
    assert len(network.jobs()) == 2  # a real error does not loop


def test_disconnect_pauses_live_and_reconnect_resumes(setup) -> None:
    controller, network, _, panel, _ = setup
    panel.set_live(True)
    controller.tick()
    network.connected = False
    controller.handle_event(
        StatusChanged(Status.WAITING, "No backend is running at ws://127.0.0.1:9631.", 2.0)
    )
    assert "Retrying in 2 s" in panel.status.text()
    assert not controller.tracker.busy
    controller.tick()
    assert len(network.jobs()) == 1
    network.connected = True
    controller.handle_event(Connected(WELCOME))
    controller.handle_event(StatusChanged(Status.CONNECTED, "Connected."))
    controller.tick()
    assert len(network.jobs()) == 2  # resumes with the current canvas


def test_hidden_docker_pauses_live(setup) -> None:
    controller, network, _, panel, _ = setup
    panel.set_live(True)
    controller.set_visible(False)
    controller.tick()
    assert network.jobs() == []
    controller.set_visible(True)
    controller.tick()
    assert len(network.jobs()) == 1


def test_cancel_stops_live_and_tells_the_backend(setup) -> None:
    controller, network, _, panel, _ = setup
    panel.set_live(True)
    controller.tick()
    job = network.jobs()[0]
    controller.on_cancel()
    assert isinstance(network.sent[-1][0], protocol.Cancel) and network.sent[-1][0].job_id == job.job_id
    assert not panel.live.isChecked()
    controller.handle_event(result_for(job))
    assert controller.stats["stale"] == 1


def test_scribble_layer_is_sent_and_left_out_of_the_canvas(setup) -> None:
    controller, network, doc, panel, _ = setup
    lines = doc.createNode("lines", "paintlayer")
    lines.setPixelData(b"\x00\x00\x00\xff" * 16, 0, 0, 16, 1)
    doc.rootNode().addChildNode(lines, None)
    controller.slow_tick()
    panel.select_scribble_layer(node_id(lines))
    panel.set_live(True)
    controller.tick()
    (job,) = network.jobs()
    assert [c.kind for c in job.params.controls] == ["scribble"]
    frames = {
        protocol.decode_frame(f, 99, 99).slot: protocol.decode_frame(f, 99, 99) for f in network.sent[0][1:]
    }
    assert frames["scribble"].payload[:4] == b"\x00\x00\x00\xff"
    assert frames["canvas"].payload[:4] == b"\xff\xff\xff\xff"


def test_pose_layer_created_picked_and_sent_as_keypoints(setup) -> None:
    controller, network, doc, panel, _ = setup
    controller.on_create_pose()
    pose_layer = next(n for n in doc.rootNode().childNodes() if n.type() == "vectorlayer")
    assert panel.pose_layer.currentData() == node_id(pose_layer)
    panel.set_live(True)
    controller.tick()
    (job,) = network.jobs()
    (control,) = job.params.controls
    assert control.kind == "pose" and len(control.pose) == 1 and control.pose[0][1] is not None
    assert {i.slot for i in job.images} == {"canvas"}


def test_apply_without_result_explains(setup) -> None:
    controller, _, _, panel, _ = setup
    controller.on_apply()
    assert "Nothing to apply" in panel.message.property("plain")


def test_no_document_is_explained(setup, krita_app) -> None:
    controller, _, _, panel, _ = setup
    krita_app.setActiveDocument(None)
    controller.tick()
    panel.mode.setCurrentIndex(panel.mode.findData(Mode.GENERATE.value))
    controller.on_generate()
    assert "Open or create an image" in panel.message.property("plain")


def test_bugs_never_escape_and_are_shown(setup, monkeypatch) -> None:
    controller, _, _, panel, _ = setup

    def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(controller.results, "apply", broken)
    controller.on_apply()  # must not raise
    assert "went wrong" in panel.message.property("plain")


def test_settings_are_saved_and_restored(setup, krita_app) -> None:
    controller, _, _, panel, _ = setup
    panel.prompt.setPlainText("misty forest")
    panel.address.setText("10.0.0.2:9000")
    controller.shutdown()
    again = Controller(Panel(), krita_app, network_factory=FakeNetwork)
    again.start()
    assert again.panel.settings().prompt == "misty forest"
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
            WELCOME, ready=False, message="Loading the engine; jobs sent now start when it is ready."
        )
        controller.handle_event(Connected(loading))
        controller.handle_event(StatusChanged(Status.CONNECTED, "Connected."))
        assert controller.panel.status.property("state") == "busy"
        assert "Loading the engine" in controller.panel.status.text()
        controller.slow_tick()
        assert isinstance(network.sent[-1][0], protocol.ListModels)
        controller.handle_event(ServerMessage(protocol.ModelList(WELCOME.models, {})))
        assert controller.panel.status.property("state") == "busy"  # still nothing loaded
        controller.handle_event(ServerMessage(protocol.ModelList(WELCOME.models, {"checkpoint": "tiny"})))
        assert controller.panel.status.property("state") == "ok"
        sent = len(network.sent)
        controller.slow_tick()
        assert len(network.sent) == sent  # no more polling once ready
    finally:
        controller.shutdown()


def test_pose_layer_created_while_a_job_runs_stays_above_the_preview(setup) -> None:
    controller, network, doc, panel, _ = setup
    panel.set_live(True)
    controller.tick()
    (job,) = network.jobs()  # sent without any guidance layer
    controller.on_create_pose()
    controller.handle_event(result_for(job))
    assert doc.names()[-2:] == [PREVIEW_NAME, "Pose (Live Diffusion)"]


def test_apply_renders_a_taesd_preview_again_at_full_quality(setup) -> None:
    controller, network, doc, panel, _ = setup
    panel.set_live(True)
    controller.tick()
    (live,) = network.jobs()
    preview_result = result_for(live, b"\x10\x10\x10\xff")
    preview_result.result.params["decoder"] = "taesd"
    controller.handle_event(preview_result)
    layers_before = doc.names()
    panel.prompt.setPlainText("something else")  # typed after the preview arrived, before Apply
    controller.on_apply()
    assert doc.names() == layers_before  # nothing applied yet: the full-quality render is on its way
    full = network.jobs()[-1]
    assert not full.live and full.params.seed == live.params.seed
    assert full.params.to_dict() == live.params.to_dict()  # exactly what made the preview
    paint(doc)  # the painter keeps painting: a newer live frame leaves while the render runs
    controller.tick()
    assert network.jobs()[-1].live
    final = result_for(full, b"\x20\x30\x40\xff")
    final.result.params["decoder"] = "vae"
    controller.handle_event(final)
    applied = doc.find(doc.names()[-2])
    assert applied.name().endswith(f"seed {live.params.seed}")
    assert applied.pixelData(0, 0, 1, 1) == b"\x20\x30\x40\xff"
    assert controller.apply_job is None


def test_apply_of_a_full_quality_result_is_immediate(setup) -> None:
    controller, network, doc, panel, _ = setup
    panel.set_live(True)
    controller.tick()
    (live,) = network.jobs()
    controller.handle_event(result_for(live))  # decoded with the full VAE (no "decoder": "taesd")
    controller.on_apply()
    assert len(network.jobs()) == 1
    assert doc.names()[-2].endswith(f"seed {live.params.seed}")
