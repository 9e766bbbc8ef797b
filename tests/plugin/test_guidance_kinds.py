"""The guidance rows come from the protocol's table of control kinds: a kind added there is offered, sent,
left out of the image and remembered by the document with no other plugin change."""

from __future__ import annotations

import pytest

from krita_plugin._compat import protocol
from krita_plugin.controller import Controller
from krita_plugin.document_state import read_state
from krita_plugin.network import Connected, ServerMessage
from krita_plugin.nodes import node_id
from krita_plugin.panel import Panel
from krita_plugin.qt import QComboBox, QDoubleSpinBox, QLabel, QToolButton
from tests.plugin.test_controller import FakeNetwork, pick, started
from tests.plugin.test_panel import DOCKER_WIDTH, _needed_width, not_none

GRAY = b"\x80\x80\x80\xff"
registry = protocol.registry  # tests add throw-away kinds to its CONTROL_KINDS


def register(monkeypatch: pytest.MonkeyPatch, name: str, input_kind: str, label: str) -> None:
    kind = registry.ControlKind(name, input_kind, (name.removeprefix("test_"),), label)
    monkeypatch.setitem(registry.CONTROL_KINDS, name, kind)


def test_a_kind_added_to_the_table_is_offered_sent_left_out_and_remembered(krita_app, monkeypatch) -> None:
    register(monkeypatch, "test_depth", registry.IMAGE, "Depth")
    controller, network, doc, panel, _ = started(krita_app)
    row = panel.guidance_rows["test_depth"]
    assert panel.findChild(QComboBox, "kld_test_depth_layer") is row.layer
    assert panel.findChild(QToolButton, "kld_new_test_depth") is row.new_layer
    assert panel.findChild(QDoubleSpinBox, "kld_test_depth_strength") is row.strength
    labels = [label.text() for label in panel.sections["guidance"].body.findChildren(QLabel)]
    assert labels[:2] == ["Scribble", "Pose"] and labels[-1] == "Depth"  # the table's labels, in its order
    assert labels == [kind.label for kind in registry.CONTROL_KINDS.values()]

    depth = doc.createNode("depth map", "paintlayer")
    depth.setPixelData(GRAY * (16 * 12), 0, 0, 16, 12)
    doc.rootNode().addChildNode(depth, None)
    controller.slow_tick()
    pick(panel, "test_depth", node_id(depth))
    row.strength.setValue(0.6)
    assert read_state(doc).guidance == {"test_depth": node_id(depth)}

    models = {
        "checkpoints": ["tiny.safetensors"],
        "controlnet": ["x-scribble.safetensors", "x-depth.safetensors"],
    }
    controller.handle_event(ServerMessage(protocol.ModelList(models, {})))
    panel.set_live(True)
    controller.check_live()
    (job,) = network.jobs()
    server_view = protocol.decode_message(protocol.encode_message(job), protocol.CLIENT_MESSAGES)
    assert isinstance(server_view, protocol.JobRequest)
    (control,) = server_view.params.controls  # the protocol accepts the job as sent
    assert (control.kind, control.image, control.strength) == ("test_depth", "test_depth", 0.6)
    assert control.model == "x-depth.safetensors"  # picked by the kind's model-name words
    frames = network.frames(job)
    assert frames["test_depth"].payload == GRAY * (16 * 12)
    assert frames["canvas"].payload[:4] == b"\xff\xff\xff\xff"  # the white background, not the depth layer
    assert depth.visible()
    controller.shutdown()

    again = Controller(Panel(), krita_app, network_factory=FakeNetwork)
    again.start()
    again.slow_tick()
    restored = again.panel.guidance_rows["test_depth"].layer.currentData()
    assert restored == node_id(depth)  # read from the document after a restart
    assert again.panel.guidance_rows["scribble"].layer.currentData() == ""
    again.shutdown()


def test_the_plus_button_adds_the_layer_the_kind_needs(krita_app, monkeypatch) -> None:
    register(monkeypatch, "test_depth", registry.IMAGE, "Depth")
    register(monkeypatch, "test_hands", registry.KEYPOINTS, "Hands")
    controller, network, doc, panel, _ = started(krita_app)
    panel.guidance_rows["test_depth"].new_layer.click()
    depth = doc.find("Depth (Live Diffusion)")
    assert depth.type() == "paintlayer" and doc.activeNode() is depth  # made to be painted on
    assert panel.guidance_rows["test_depth"].layer.currentData() == node_id(depth)

    doc.setActiveNode(doc.find("Painting"))
    panel.guidance_rows["test_hands"].new_layer.click()
    hands = doc.find("Hands (Live Diffusion)")
    assert hands.type() == "vectorlayer" and doc.activeNode() is doc.find("Painting")  # joints move anyway
    assert panel.guidance_rows["test_hands"].layer.currentData() == node_id(hands)
    assert read_state(doc).guidance == {"test_depth": node_id(depth), "test_hands": node_id(hands)}
    assert "joints" in panel.message.property("plain")

    panel.set_live(True)
    controller.check_live()
    (job,) = network.jobs()
    assert [(c.kind, c.image) for c in job.params.controls] == [
        ("test_depth", "test_depth"),
        ("test_hands", None),
    ]
    figures = job.params.controls[1].pose
    assert figures is not None and len(figures) == 1  # the new layer's figure, as keypoints
    assert {image.slot for image in job.images} == {"canvas", "test_depth"}
    controller.shutdown()


def test_more_guidance_than_a_job_can_carry_is_explained(krita_app, monkeypatch) -> None:
    for name in ("test_a", "test_b", "test_c", "test_d"):
        register(monkeypatch, name, registry.IMAGE, name.upper())
    controller, network, doc, panel, _ = started(krita_app)
    lines = doc.createNode("lines", "paintlayer")
    doc.rootNode().addChildNode(lines, None)
    controller.slow_tick()
    for kind in ("scribble", "test_a", "test_b", "test_c", "test_d"):
        pick(panel, kind, node_id(lines))
    panel.set_live(True)
    controller.check_live()
    assert network.jobs() == []
    assert "At most 4 guidance layers" in panel.message.property("plain")
    panel.guidance_rows["test_d"].layer.setCurrentIndex(0)  # None
    controller.check_live()
    assert len(network.jobs()[0].params.controls) == 4
    controller.shutdown()


def test_the_panel_fits_the_docker_with_many_kinds(qapp, monkeypatch) -> None:
    kinds = [
        ("test_canny", "Canny edges"), ("test_lineart", "Line art"), ("test_depth", "Depth"),
        ("test_normal", "Normal map"), ("test_softedge", "Soft edge"), ("test_seg", "Segmentation"),
        ("test_mlsd", "Straight lines"), ("test_tile", "Tile"), ("test_shuffle", "Shuffle"),
        ("test_lineart_anime", "Anime line art"),
    ]  # fmt: skip
    for name, label in kinds:
        register(monkeypatch, name, registry.IMAGE, label)
    panel = Panel()
    panel.sections["guidance"].set_expanded(True)
    panel.set_layer_choices({name: [("{1}", "A layer with a long long name " * 3)] for name, _ in kinds})
    assert len(panel.guidance_rows) == len(registry.CONTROL_KINDS) and len(registry.CONTROL_KINDS) >= 12
    assert _needed_width(panel) <= DOCKER_WIDTH
    panel.resize(DOCKER_WIDTH, 900)
    panel.show()
    qapp.processEvents()
    assert not not_none(panel.horizontalScrollBar()).isVisible()
    strength = panel.guidance_rows["test_lineart_anime"].strength
    assert strength.mapTo(panel.body, strength.rect().topRight()).x() <= not_none(panel.viewport()).width()


def test_kinds_the_backend_does_not_list_are_not_offered(krita_app, monkeypatch) -> None:
    """An older backend knows fewer kinds: their rows are hidden and a layer chosen there is not sent (the
    backend would refuse the whole job)."""
    register(monkeypatch, "test_depth", registry.IMAGE, "Depth")
    controller, network, doc, panel, _ = started(krita_app)
    depth = doc.createNode("depth map", "paintlayer")
    depth.setPixelData(GRAY * (16 * 12), 0, 0, 16, 12)
    doc.rootNode().addChildNode(depth, None)
    controller.slow_tick()
    pick(panel, "test_depth", node_id(depth))
    older = protocol.Welcome(
        1, "older", "cpu", {"checkpoints": ["tiny.safetensors"]}, {}, ["lcm"], protocol.Limits(), True,
        control_kinds=["scribble", "pose"],
    )  # fmt: skip
    controller.handle_event(Connected(older))
    row = panel.guidance_rows["test_depth"]
    assert not row.offered and row.holder is not None and row.holder.isHidden()
    assert "test_depth" not in panel.settings().guidance
    panel.set_live(True)
    controller.check_live()
    (job,) = network.jobs()
    assert job.params.controls == [] and "test_depth" not in network.frames(job)
    scribble = panel.guidance_rows["scribble"].holder
    assert scribble is not None and not scribble.isHidden()
