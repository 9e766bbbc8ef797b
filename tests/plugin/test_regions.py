"""Regions from the painter's side: "Add region" makes the active layer a region, its prompt box feeds the
job's `params.regions` with the layer's coverage as a gray8 mask slot, the document keeps them, and neither
the layers nor the undo history change."""

from __future__ import annotations

from typing import Any

from krita_plugin._compat import protocol
from krita_plugin.controller import Controller
from krita_plugin.document_state import read_state
from krita_plugin.network import Status, StatusChanged
from krita_plugin.nodes import node_id
from krita_plugin.panel import Panel
from krita_plugin.qt import QLabel, QLineEdit, QPushButton, QToolButton
from krita_plugin.regions import add_region, capture_regions, set_region_prompt
from tests.plugin.fake_krita import Selection
from tests.plugin.test_controller import FakeNetwork, result_for, started
from tests.plugin.test_panel import DOCKER_WIDTH, _needed_width

RED = b"\x00\x00\xff\xff"
W, H = 16, 12  # the krita_app fixture's document


def region_layer(doc: Any, name: str = "Sky", x: int = 0, y: int = 0, w: int = 8, h: int = 6) -> Any:
    """A paint layer opaque over (x, y, w, h) and transparent elsewhere, made active (undo log cleared)."""
    layer = doc.createNode(name, "paintlayer")
    layer.setPixelData(RED * (w * h), x, y, w, h)
    doc.rootNode().addChildNode(layer, None)
    doc.setActiveNode(layer)
    doc.undo_log.clear()
    layer.writes = 0
    return layer


def type_prompt(panel: Panel, index: int, text: str) -> None:
    """The painter types into a region's prompt box (textEdited: what typing emits, unlike setText)."""
    box = panel.findChild(QLineEdit, f"kld_region_prompt_{index}")
    assert box is not None, f"no prompt box {index}"
    box.setText(text)
    box.textEdited.emit(text)


def add_button(panel: Panel) -> QPushButton:
    button = panel.findChild(QPushButton, "kld_add_region")
    assert button is not None
    return button


def server_view(job: protocol.JobRequest) -> protocol.JobRequest:
    """The job as the backend decodes it (the protocol's own checks included)."""
    decoded = protocol.decode_message(protocol.encode_message(job), protocol.CLIENT_MESSAGES)
    assert isinstance(decoded, protocol.JobRequest)
    decoded.check_images()
    return decoded


def expected_mask(x: int, y: int, w: int, h: int) -> bytes:
    return bytes(255 if x <= px < x + w and y <= py < y + h else 0 for py in range(H) for px in range(W))


def test_a_region_is_sent_as_its_layers_coverage_with_its_prompt(krita_app) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    sky = region_layer(doc, "Sky", 0, 0, 8, 6)
    names = doc.names()
    add_button(panel).click()
    label = panel.findChild(QLabel, "kld_region_label_0")
    assert label is not None and "Sky" in label.text()
    type_prompt(panel, 0, "a stormy sky")
    assert read_state(doc).regions == [{"layer": node_id(sky), "prompt": "a stormy sky"}]

    panel.set_live(True)
    controller.check_live()
    (job,) = network.jobs()
    decoded = server_view(job)
    assert [(r.mask, r.prompt) for r in decoded.params.regions] == [("region0", "a stormy sky")]
    mask = network.frames(job)["region0"]
    assert mask.encoding is protocol.ImageEncoding.GRAY8 and (mask.width, mask.height) == (W, H)
    assert mask.payload == expected_mask(0, 0, 8, 6)  # 255 where the layer is opaque, 0 elsewhere
    # The painter's layers and undo history are as they were: the region lives in the annotation only.
    assert doc.undo_log == [] and doc.names() == names and sky.name() == "Sky" and sky.writes == 0
    controller.shutdown()


def test_live_sends_again_when_a_region_prompt_or_its_layer_changes(krita_app) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    sky = region_layer(doc)
    add_button(panel).click()
    type_prompt(panel, 0, "sky")
    panel.set_live(True)
    controller.check_live()
    controller.handle_event(result_for(network.jobs()[-1]))
    controller.check_live()
    assert len(network.jobs()) == 1  # nothing changed: nothing sent

    type_prompt(panel, 0, "sunset sky")
    controller.check_live()
    assert len(network.jobs()) == 2
    assert [r.prompt for r in network.jobs()[-1].params.regions] == ["sunset sky"]
    controller.handle_event(result_for(network.jobs()[-1]))

    sky.setPixelData(RED * 4, 10, 8, 2, 2)  # painting on the region layer grows the region
    controller.check_live()
    assert len(network.jobs()) == 3
    mask = network.frames(network.jobs()[-1])["region0"].payload
    assert mask[8 * W + 10] == 255 and mask[9 * W + 11] == 255
    controller.shutdown()


def test_several_regions_a_group_and_what_is_not_sent(krita_app) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    sky = region_layer(doc, "Sky", 0, 0, 16, 4)
    add_button(panel).click()
    group = doc.createNode("Figures", "grouplayer")
    doc.rootNode().addChildNode(group, None)
    figure = doc.createNode("figure", "paintlayer")
    figure.setPixelData(RED * 16, 4, 6, 4, 4)
    group.addChildNode(figure, None)
    doc.setActiveNode(group)
    add_button(panel).click()
    hidden = region_layer(doc, "Hidden", 12, 8, 4, 4)
    add_button(panel).click()
    region_layer(doc, "Unprompted", 0, 10, 4, 2)
    add_button(panel).click()
    for index, text in enumerate(("sky", "two knights", "a dragon")):
        type_prompt(panel, index, text)
    hidden.setVisible(False)
    panel.set_live(True)
    controller.check_live()
    (job,) = network.jobs()
    decoded = server_view(job)
    # The hidden region and the one without a prompt change nothing: not sent.
    assert [(r.mask, r.prompt) for r in decoded.params.regions] == [
        ("region0", "sky"),
        ("region1", "two knights"),
    ]
    frames = network.frames(job)
    assert frames["region0"].payload == expected_mask(0, 0, 16, 4)
    assert frames["region1"].payload == expected_mask(4, 6, 4, 4)  # the group's coverage
    assert [e["layer"] for e in read_state(doc).regions] == [
        node_id(sky),
        node_id(group),
        node_id(hidden),
        node_id(doc.find("Unprompted")),
    ]
    controller.shutdown()


def test_inpaint_sends_every_region_cropped_like_the_canvas(krita_app) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    region_layer(doc, "Sky", 0, 0, 8, 6)
    add_button(panel).click()
    type_prompt(panel, 0, "sky")
    selection = Selection()
    selection.select(10, 8, 3, 3, 255)  # away from the region: the backend decides, the plugin sends it
    doc.setSelection(selection)
    controller.on_generate()
    (job,) = network.jobs()
    assert job.mode == "inpaint" and [r.mask for r in server_view(job).params.regions] == ["region0"]
    canvas, region = network.frames(job)["canvas"], network.frames(job)["region0"]
    assert (region.width, region.height) == (canvas.width, canvas.height)
    controller.shutdown()


def test_the_mask_follows_the_captures_crop_and_scale(krita_app) -> None:
    doc = krita_app.activeDocument()
    sky = region_layer(doc, "Sky", 0, 0, 8, 12)
    add_region(doc)
    set_region_prompt(doc, node_id(sky), "sky")
    (full,) = capture_regions(doc, (4, 0, 8, 12), (8, 12))  # half of it in the region
    assert full.mask == bytes(255 if col < 4 else 0 for _row in range(12) for col in range(8))
    (scaled,) = capture_regions(doc, (0, 0, 16, 12), (8, 6))  # sent at half size
    assert len(scaled.mask) == 8 * 6
    # Qt 5 scales gray pixels to RGB32: the mask must still be one byte a pixel, the region's left half.
    assert scaled.mask == bytes(255 if col < 4 else 0 for _row in range(6) for col in range(8))


def test_regions_are_kept_by_the_document_and_deleted_layers_drop_out(krita_app) -> None:
    controller, _, doc, panel, _ = started(krita_app)
    sky = region_layer(doc)
    add_button(panel).click()
    type_prompt(panel, 0, "sky")

    other = krita_app.createDocument(16, 12, "other", "RGBA", "U8", "", 72.0)
    krita_app.setActiveDocument(other)
    controller.slow_tick()
    assert panel.findChild(QLineEdit, "kld_region_prompt_0") is None  # the other document has none
    krita_app.setActiveDocument(doc)
    controller.slow_tick()
    box = panel.findChild(QLineEdit, "kld_region_prompt_0")
    assert box is not None and box.text() == "sky"
    controller.shutdown()

    again = Controller(Panel(), krita_app, network_factory=FakeNetwork)  # Krita restarted
    again.start()
    again.slow_tick()
    box = again.panel.findChild(QLineEdit, "kld_region_prompt_0")
    assert box is not None and box.text() == "sky"

    sky.remove()
    again.slow_tick()
    assert again.panel.findChild(QLineEdit, "kld_region_prompt_0") is None
    again.network.connected = True
    again.handle_event(StatusChanged(Status.CONNECTED, "Connected."))
    again.panel.set_live(True)
    again.check_live()
    assert again.network.jobs()[-1].params.regions == []
    doc.rootNode().addChildNode(sky, None)  # the deletion undone: the same layer, the same region
    again.slow_tick()
    box = again.panel.findChild(QLineEdit, "kld_region_prompt_0")
    assert box is not None and box.text() == "sky"
    again.shutdown()


def test_remove_and_refusals(krita_app) -> None:
    controller, _, doc, panel, _ = started(krita_app)
    sky = region_layer(doc)
    add_button(panel).click()
    add_button(panel).click()  # the same layer again: still one region
    assert len(read_state(doc).regions) == 1
    remove = panel.findChild(QToolButton, "kld_remove_region_0")
    assert remove is not None
    remove.click()
    assert read_state(doc).regions == [] and panel.findChild(QLineEdit, "kld_region_prompt_0") is None
    assert sky.name() == "Sky" and doc.undo_log == []

    selection_mask = doc.createNode("Selection", "selectionmask")
    doc.setActiveNode(selection_mask)
    add_button(panel).click()
    assert panel.message.property("error") and "paint layer or a group" in panel.message.property("plain")
    controller.shutdown()


def test_the_regions_section_fits_the_docker(krita_app) -> None:
    controller, _, doc, panel, _ = started(krita_app)
    region_layer(doc, "A layer with a rather long name indeed, longer than the docker")
    add_button(panel).click()
    panel.sections["regions"].set_expanded(True)
    assert _needed_width(panel) <= DOCKER_WIDTH
    controller.shutdown()
