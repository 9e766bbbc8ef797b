"""Reference images from the painter's side: a layer or a picture file becomes a colour image slot of the job
with its `params.references` entry (kind, strength, start/end, the IP-Adapter file when one is chosen); the
document keeps the references; the painter's layers and undo history stay untouched."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from krita_plugin import references as refs
from krita_plugin._compat import protocol
from krita_plugin.controller import Controller
from krita_plugin.document_state import read_state
from krita_plugin.network import ServerMessage, Status
from krita_plugin.nodes import node_id
from krita_plugin.panel import Panel
from krita_plugin.qt import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QImage,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QToolButton,
)
from tests.plugin.fake_backend import FakeBackend
from tests.plugin.test_controller import FakeNetwork, result_for, started
from tests.plugin.test_panel import DOCKER_WIDTH, _needed_width

BLUE = b"\xff\x00\x00\xff"


def photo_layer(doc: Any, name: str = "Photo", x: int = 2, y: int = 3, w: int = 6, h: int = 4) -> Any:
    """A paint layer with pixels over (x, y, w, h), made active (undo log cleared)."""
    layer = doc.createNode(name, "paintlayer")
    layer.setPixelData(BLUE * (w * h), x, y, w, h)
    doc.rootNode().addChildNode(layer, None)
    doc.setActiveNode(layer)
    doc.undo_log.clear()
    layer.writes = 0
    return layer


def button(panel: Panel, name: str) -> QPushButton:
    found = panel.findChild(QPushButton, name)
    assert found is not None, name
    return found


def child(panel: Panel, kind: type, name: str) -> Any:
    found = panel.findChild(kind, name)
    assert found is not None, name
    return found


def server_view(job: protocol.JobRequest) -> protocol.JobRequest:
    decoded = protocol.decode_message(protocol.encode_message(job), protocol.CLIENT_MESSAGES)
    assert isinstance(decoded, protocol.JobRequest)
    decoded.check_images()
    return decoded


def picture_file(tmp_path: Any, width: int, height: int, name: str = "ref.png") -> str:
    picture = QImage(width, height, QImage.Format.Format_ARGB32)
    picture.fill(0xFF00FF00)  # opaque green
    path = str(tmp_path / name)
    assert picture.save(path)
    return path


def test_the_kinds_are_the_protocols() -> None:
    assert refs.KINDS == protocol.references.REFERENCE_KINDS  # pyright: ignore[reportAttributeAccessIssue]
    assert refs.DEFAULT_STRENGTH == 0.6


def test_the_active_layer_becomes_a_reference_sent_with_its_pixels(krita_app) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    photo = photo_layer(doc)
    names = doc.names()
    button(panel, "kld_add_reference_layer").click()
    assert read_state(doc).references == [
        {"layer": node_id(photo), "kind": "reference", "strength": 0.6, "start": 0.0, "end": 1.0}
    ]
    source = child(panel, QComboBox, "kld_reference_source_0")
    assert source.currentData() == node_id(photo) and source.currentText() == "Photo"

    panel.set_live(True)
    controller.check_live()
    (job,) = network.jobs()
    (reference,) = server_view(job).params.references
    assert reference == protocol.messages.ReferenceParam("reference0", "reference", None, 0.6, 0.0, 1.0)
    frame = network.frames(job)["reference0"]
    assert frame.encoding is protocol.ImageEncoding.BGRA8
    assert (frame.width, frame.height) == (6, 4) and frame.payload == BLUE * 24  # the layer's own extent
    assert doc.undo_log == [] and doc.names() == names and photo.writes == 0 and photo.name() == "Photo"
    controller.shutdown()


def test_editing_a_reference_is_stored_and_sent_again(krita_app) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    photo_layer(doc)
    button(panel, "kld_add_reference_layer").click()
    panel.set_live(True)
    controller.check_live()
    controller.handle_event(result_for(network.jobs()[-1]))

    kind = child(panel, QComboBox, "kld_reference_kind_0")
    kind.setCurrentIndex(kind.findData("style"))
    kind.activated.emit(kind.currentIndex())
    child(panel, QSlider, "kld_reference_strength_0").setValue(85)
    child(panel, QDoubleSpinBox, "kld_reference_start_0").setValue(0.2)
    child(panel, QDoubleSpinBox, "kld_reference_end_0").setValue(0.7)
    (stored,) = read_state(doc).references
    assert (stored["kind"], stored["strength"], stored["start"], stored["end"]) == ("style", 0.85, 0.2, 0.7)
    controller.slow_tick()  # the rows aren't rebuilt under the painter's hand
    assert child(panel, QSlider, "kld_reference_strength_0").value() == 85

    controller.check_live()
    assert len(network.jobs()) == 2
    (reference,) = server_view(network.jobs()[-1]).params.references
    assert (reference.kind, reference.strength, reference.start, reference.end) == ("style", 0.85, 0.2, 0.7)
    controller.shutdown()


def test_a_picture_file_is_read_once_scaled_and_kept_by_path(krita_app, tmp_path, monkeypatch) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    path = picture_file(tmp_path, 1000, 500)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *args, **kwargs: (path, ""))
    files = controller.job_sender.reference_files
    reads: list[str] = []
    monkeypatch.setattr(files, "reader", lambda p: reads.append(p) or refs.read_image_file(p))
    button(panel, "kld_add_reference_file").click()
    assert read_state(doc).references == [
        {"file": path, "kind": "reference", "strength": 0.6, "start": 0.0, "end": 1.0}
    ]
    assert child(panel, QLabel, "kld_reference_source_0").text() == "ref.png"

    panel.set_live(True)
    controller.check_live()
    controller.handle_event(result_for(network.jobs()[-1]))
    controller.on_generate()
    assert len(network.jobs()) == 2 and reads == [path]  # read once, kept for every job
    for job in network.jobs():
        frame = network.frames(job)["reference0"]
        assert (frame.width, frame.height) == (768, 384)  # the long side scaled to 768
        assert frame.payload[:4] == b"\x00\xff\x00\xff"
    controller.shutdown()


def test_several_references_in_order_up_to_the_protocols_limit(krita_app, tmp_path, monkeypatch) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    path = picture_file(tmp_path, 20, 10)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *args, **kwargs: (path, ""))
    first = photo_layer(doc, "First", 0, 0, 4, 4)
    button(panel, "kld_add_reference_layer").click()
    button(panel, "kld_add_reference_file").click()
    photo_layer(doc, "Second", 4, 4, 3, 3)
    button(panel, "kld_add_reference_layer").click()
    button(panel, "kld_add_reference_layer").click()  # the same layer twice is allowed: four in all
    button(panel, "kld_add_reference_file").click()
    assert "At most 4 reference images" in panel.message.property("plain")
    assert len(read_state(doc).references) == 4

    panel.set_live(True)
    controller.check_live()
    (job,) = network.jobs()
    sent = server_view(job).params.references
    assert [r.image for r in sent] == ["reference0", "reference1", "reference2", "reference3"]
    frames = network.frames(job)
    assert [(frames[r.image].width, frames[r.image].height) for r in sent] == [
        (4, 4),
        (20, 10),
        (3, 3),
        (3, 3),
    ]

    child(panel, QToolButton, "kld_remove_reference_0").click()
    stored = read_state(doc).references
    assert stored[0].get("file") == path and all(e.get("layer") != node_id(first) for e in stored)
    controller.shutdown()


def test_the_ipadapter_picker_follows_the_servers_lists(krita_app) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    picker = child(panel, QComboBox, "kld_reference_model")
    assert not picker.isVisibleTo(
        panel.reference_rows
    )  # this server lists no IP-Adapter files (an older one)
    models = {"checkpoints": ["tiny.safetensors"], "ipadapter": ["ip-adapter_sd15.safetensors"]}
    controller.handle_event(ServerMessage(protocol.ModelList(models, {})))
    assert picker.isVisibleTo(panel.reference_rows)
    assert [picker.itemData(i) for i in range(picker.count())] == ["", "ip-adapter_sd15.safetensors"]

    photo_layer(doc)
    button(panel, "kld_add_reference_layer").click()
    panel.set_live(True)
    controller.check_live()
    assert network.jobs()[-1].params.references[0].model is None  # the server's pick
    controller.handle_event(result_for(network.jobs()[-1]))
    picker.setCurrentIndex(1)
    controller.check_live()
    assert network.jobs()[-1].params.references[0].model == "ip-adapter_sd15.safetensors"
    assert panel.settings().reference_model == "ip-adapter_sd15.safetensors"  # saved with the settings
    controller.shutdown()


def test_the_picker_offers_the_ipadapters_of_the_checkpoints_family(krita_app) -> None:
    controller, _, _, panel, _ = started(krita_app)
    models = {
        "checkpoints": ["a15.safetensors", "axl.safetensors"],
        "ipadapter": ["ip-adapter_sd15.safetensors", "ip-adapter_sdxl.safetensors", "unknown.bin"],
    }
    families = {
        "checkpoints": {"a15.safetensors": "sd15", "axl.safetensors": "sdxl"},
        "ipadapter": {"ip-adapter_sd15.safetensors": "sd15", "ip-adapter_sdxl.safetensors": "sdxl"},
    }
    controller.handle_event(ServerMessage(protocol.ModelList(models, {}, families=families)))
    picker = child(panel, QComboBox, "kld_reference_model")
    offered = lambda: [picker.itemData(i) for i in range(picker.count())]  # noqa: E731
    panel.checkpoint.setCurrentIndex(panel.checkpoint.findData("axl.safetensors"))
    assert offered() == ["", "ip-adapter_sdxl.safetensors", "unknown.bin"]
    panel.checkpoint.setCurrentIndex(panel.checkpoint.findData("a15.safetensors"))
    assert offered() == ["", "ip-adapter_sd15.safetensors", "unknown.bin"]
    controller.shutdown()


def test_style_and_composition_are_offered_for_the_families_that_take_them(krita_app) -> None:
    """SD 1.5 checkpoints take reference images as "reference" only: the other kinds are greyed out in every
    row (a stored choice still shows); an SDXL checkpoint, or a family the plugin doesn't know, offers all."""
    controller, _, _, panel, _ = started(krita_app)
    models = {"checkpoints": ["a15.safetensors", "axl.safetensors", "odd.safetensors"], "ipadapter": []}
    families = {
        "checkpoints": {"a15.safetensors": "sd15", "axl.safetensors": "sdxl", "odd.safetensors": "flux"}
    }
    controller.handle_event(ServerMessage(protocol.ModelList(models, {}, families=families)))
    photo_layer(krita_app.activeDocument())
    button(panel, "kld_add_reference_layer").click()
    kind = child(panel, QComboBox, "kld_reference_kind_0")

    def offered() -> list[str]:
        items = cast("Any", kind.model())
        return [kind.itemData(i) for i in range(kind.count()) if items.item(i).isEnabled()]

    panel.checkpoint.setCurrentIndex(panel.checkpoint.findData("a15.safetensors"))
    assert offered() == ["reference"]
    panel.checkpoint.setCurrentIndex(panel.checkpoint.findData("axl.safetensors"))
    assert offered() == ["reference", "style", "composition"]
    panel.checkpoint.setCurrentIndex(panel.checkpoint.findData("odd.safetensors"))
    assert offered() == ["reference", "style", "composition"]
    panel.checkpoint.setCurrentIndex(panel.checkpoint.findData("a15.safetensors"))
    button(panel, "kld_add_reference_layer").click()  # a row made while SD 1.5 is chosen
    second = child(panel, QComboBox, "kld_reference_kind_1")
    assert not cast("Any", second.model()).item(second.findData("style")).isEnabled()
    controller.shutdown()


def test_references_are_kept_by_the_document_and_deleted_layers_drop_out(krita_app) -> None:
    controller, _, doc, panel, _ = started(krita_app)
    photo = photo_layer(doc)
    button(panel, "kld_add_reference_layer").click()
    child(panel, QSlider, "kld_reference_strength_0").setValue(40)
    controller.shutdown()

    again = Controller(Panel(), krita_app, network_factory=FakeNetwork)  # Krita restarted
    again.start()
    again.slow_tick()
    assert child(again.panel, QSlider, "kld_reference_strength_0").value() == 40
    assert child(again.panel, QComboBox, "kld_reference_source_0").currentData() == node_id(photo)

    photo.remove()
    again.slow_tick()
    assert again.panel.findChild(QSlider, "kld_reference_strength_0") is None
    assert refs.capture_references(doc, refs.FileImages()) == []
    doc.rootNode().addChildNode(photo, None)  # the deletion undone: the same layer, the same reference
    again.slow_tick()
    assert child(again.panel, QSlider, "kld_reference_strength_0").value() == 40
    again.shutdown()


def test_a_missing_file_is_shown_and_left_out(krita_app, tmp_path) -> None:
    doc = krita_app.activeDocument()
    gone = str(tmp_path / "gone.png")
    refs.add_reference(doc, refs.ReferenceEntry(path=gone))
    panel = Panel()
    controller = Controller(panel, krita_app, network_factory=FakeNetwork)
    controller.start()
    controller.slow_tick()
    assert child(panel, QLabel, "kld_reference_source_0").text() == "gone.png (missing)"
    assert refs.capture_references(doc, controller.job_sender.reference_files) == []
    controller.shutdown()


@pytest.mark.parametrize(
    ("saved", "expected"),
    [
        ({"layer": "{a}", "kind": "bogus", "strength": 9, "start": 0.8, "end": 0.1},
         refs.ReferenceEntry("{a}", "", "reference", 2.0, 0.8, 0.8)),
        ({"file": "/x.png", "strength": "high"},
         refs.ReferenceEntry("", "/x.png", "reference", 0.6, 0.0, 1.0)),
        ({"kind": "style"}, None),
    ],
)  # fmt: skip
def test_stored_entries_are_read_defensively(saved, expected) -> None:
    assert refs.ReferenceEntry.from_json(saved) == expected


def test_the_references_section_fits_the_docker(krita_app) -> None:
    controller, _, doc, panel, _ = started(krita_app)
    photo_layer(doc, "A reference layer with a long, long name that would not fit")
    button(panel, "kld_add_reference_layer").click()
    controller.handle_event(
        ServerMessage(protocol.ModelList({"ipadapter": ["ip-adapter-plus_sdxl_vit-h.bin"]}, {}))
    )
    panel.sections["references"].set_expanded(True)
    assert _needed_width(panel) <= DOCKER_WIDTH
    controller.shutdown()


def test_references_and_regions_reach_a_backend_over_the_wire(krita_app) -> None:
    """Through the real network client to the fake backend: the job it decodes carries both kinds of slot,
    passes the protocol's image checks, and its result comes back."""
    backend = FakeBackend().start()
    panel = Panel()
    panel.address.setText(f"127.0.0.1:{backend.port}")
    controller = Controller(panel, krita_app)
    try:
        controller.start()
        wait(controller, lambda: controller.status is Status.CONNECTED)
        doc = krita_app.activeDocument()
        photo_layer(doc)
        button(panel, "kld_add_reference_layer").click()
        button(panel, "kld_add_region").click()
        box = child(panel, QLineEdit, "kld_region_prompt_0")
        box.setText("a blue door")
        box.textEdited.emit("a blue door")
        panel.set_live(True)
        controller.check_live()
        wait(controller, lambda: controller.history.selected(node_id(doc.rootNode())) is not None)
        (job,) = [m for m in backend.received if isinstance(m, protocol.JobRequest)]
        job.check_images()
        assert [r.image for r in job.params.references] == ["reference0"]
        assert [(r.mask, r.prompt) for r in job.params.regions] == [("region0", "a blue door")]
        frames = {f.slot: f for f in backend.received if isinstance(f, protocol.ImageFrame)}
        assert set(frames) == {"canvas", "reference0", "region0"}
        mask = frames["region0"].payload
        assert mask[3 * 16 + 2] == 255 and mask[0] == 0  # the photo layer covers (2, 3, 6, 4)
    finally:
        controller.shutdown()
        backend.stop()


def wait(controller: Controller, done: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        controller.pump()
        time.sleep(0.01)
