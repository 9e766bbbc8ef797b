"""A guidance row's "from image" in the fake Krita: the button sends the image as a `control_image` job, and
the control image that comes back becomes a new guidance layer of that kind, chosen in its row; the
painter's layers, active layer and undo history are untouched beyond the one "Add Layer"."""

from __future__ import annotations

from dataclasses import replace

from krita_plugin._compat import protocol
from krita_plugin.document_state import read_state
from krita_plugin.network import Connected, ResultReady, ServerMessage
from krita_plugin.nodes import node_id
from krita_plugin.qt import QToolButton
from tests.plugin.test_controller import WELCOME, paint, pick, started

WIDTH, HEIGHT = 16, 12  # the fake document's size
RED = b"\x00\x00\xff\xff"  # BGRA


def line_pixels(width: int, height: int) -> bytes:
    """A line layer as the backend sends canny edges: black lines (alpha 255) on an empty layer."""
    pixels = bytearray(width * height * 4)
    for x in range(width):
        pixels[(height // 2 * width + x) * 4 + 3] = 255
    return bytes(pixels)


def answer(job: protocol.JobRequest, pixels: bytes, width: int = WIDTH, height: int = HEIGHT) -> ResultReady:
    assert job.bounds is not None
    params = {**job.params.to_dict(), "mode": "control_image", "annotator": "canny (100, 200)"}
    result = protocol.Result(
        job.job_id, job.bounds.to_list(), width, height, "bgra8", params, {"total": 0.01}
    )
    frame = protocol.ImageFrame(job.job_id, "result", protocol.ImageEncoding.BGRA8, width, height, pixels)
    return ResultReady(result, frame)


def test_from_image_sends_the_image_and_adds_the_layer_it_gets_back(krita_app) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    paint(doc, RED)
    scribble = doc.createNode("my scribble", "paintlayer")
    scribble.setPixelData(b"\x00\x00\x00\xff" * 4, 0, 0, 4, 1)
    doc.rootNode().addChildNode(scribble, None)
    controller.slow_tick()
    pick(panel, "scribble", node_id(scribble))  # a guidance layer: left out of the image, as generations do
    painting = doc.find("Painting")
    doc.undo_log.clear()

    button = panel.findChild(QToolButton, "kld_canny_from_image")
    assert button is panel.guidance_rows["canny"].from_image and button is not None and not button.isHidden()
    assert panel.guidance_rows["normal"].from_image is None  # no annotator for normal maps
    button.click()
    (job,) = network.jobs()
    server_view = protocol.decode_message(protocol.encode_message(job), protocol.CLIENT_MESSAGES)
    assert isinstance(server_view, protocol.JobRequest)  # the protocol's validation takes it as sent
    assert (server_view.mode, server_view.params.control_kind, server_view.live) == (
        "control_image",
        "canny",
        False,
    )
    assert server_view.params.controls == [] and [i.slot for i in server_view.images] == ["canvas"]
    canvas = network.frames(job)["canvas"].payload
    assert canvas[(2 * WIDTH + 2) * 4 : (2 * WIDTH + 3) * 4] == RED  # the painting
    assert canvas[:4] == b"\xff\xff\xff\xff"  # not the scribble layer over it
    assert "Making a canny layer" in panel.message.property("plain")
    assert doc.undo_log == []  # nothing in the document until the answer

    controller.handle_event(answer(job, line_pixels(WIDTH, HEIGHT)))
    added = doc.find("Canny from image (Live Diffusion)")
    assert doc.rootNode().childNodes()[-1] is added  # on top
    assert added.pixelData(0, 0, WIDTH, HEIGHT) == line_pixels(WIDTH, HEIGHT)
    assert panel.guidance_rows["canny"].layer.currentData() == node_id(added)  # chosen in its row
    state = read_state(doc)
    assert state.guidance["canny"] == node_id(added) and node_id(added) in state.guidance_layers
    assert doc.undo_log == [("add", added.name())]  # one undo step: adding the layer
    assert doc.activeNode() is painting and painting.writes == 1 and scribble.writes == 1  # only the test's
    assert "Canny layer made from the image" in panel.message.property("plain")

    panel.set_live(True)
    controller.check_live()  # the new layer guides the next frame as a canny control
    live = network.jobs()[-1]
    assert [(c.kind, c.image) for c in live.params.controls] == [("scribble", "scribble"), ("canny", "canny")]
    assert network.frames(live)["canny"].payload == line_pixels(WIDTH, HEIGHT)
    controller.shutdown()


def test_a_smaller_answer_is_scaled_to_the_document(krita_app) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    panel.guidance_rows["depth"].from_image.click()  # type: ignore[union-attr]
    (job,) = network.jobs()
    gray = b"\x80\x80\x80\xff"
    controller.handle_event(answer(job, gray * (8 * 6), 8, 6))
    added = doc.find("Depth from image (Live Diffusion)")
    assert added.pixelData(0, 0, WIDTH, HEIGHT) == gray * (WIDTH * HEIGHT)
    assert panel.guidance_rows["depth"].layer.currentData() == node_id(added)
    controller.shutdown()


def test_a_failed_request_says_why_and_adds_nothing(krita_app) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    names = doc.names()
    panel.guidance_rows["depth"].from_image.click()  # type: ignore[union-attr]
    (job,) = network.jobs()
    why = "Depth from the image needs a depth estimator: put a Depth Anything model folder in annotators/"
    controller.handle_event(ServerMessage(protocol.Error("model_not_found", why, job.job_id)))
    assert "Depth Anything" in panel.message.property("plain") and panel.message.property("error")
    assert doc.names() == names and doc.undo_log == []
    assert not controller.control_images.pending
    controller.shutdown()


def test_an_older_backend_gets_no_from_image_buttons(krita_app) -> None:
    controller, _, _, panel, _ = started(krita_app)
    row = panel.guidance_rows["lineart"]
    assert row.from_image is not None and not row.from_image.isHidden()
    controller.handle_event(Connected(replace(WELCOME, modes=[])))  # a welcome without `modes`
    assert row.from_image.isHidden() and not row.new_layer.isHidden()
    controller.shutdown()
