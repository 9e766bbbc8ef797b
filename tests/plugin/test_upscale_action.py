"""The panel's Upscale in fake Krita: what it sends (the selection's box at full resolution, the upscale
params, the upscale model it picks) and where the answer lands (a new layer in the document enlarged by the
factor, at the selection's place times the factor)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from krita_plugin._compat import protocol
from krita_plugin.network import Connected, ResultReady, ServerMessage
from krita_plugin.upscaling import pick_upscaler
from tests.plugin.fake_krita import Selection
from tests.plugin.test_controller import WELCOME, started

RED = b"\x00\x00\xff\xff"  # BGRA


def connect_with_upscalers(controller: Any, names: list[str]) -> None:
    models = {**WELCOME.models, "upscale_models": names}
    controller.handle_event(
        Connected(replace(WELCOME, models=models, control_kinds=list(protocol.CONTROL_KINDS)))
    )


def upscale_result(job: protocol.JobRequest, factor: int, fill: bytes = RED) -> ResultReady:
    assert job.bounds is not None
    x, y, w, h = job.bounds.to_list()
    pw, ph = w * factor, h * factor
    params = {**job.params.to_dict(), "upscaler": "RealESRGAN_x2plus.pth", "tiles": 1}
    result = protocol.Result(job.job_id, [x, y, w, h], pw, ph, "bgra8", params, {"total": 1.0})
    frame = protocol.ImageFrame(job.job_id, "result", protocol.ImageEncoding.BGRA8, pw, ph, fill * (pw * ph))
    return ResultReady(result, frame)


def test_upscaling_a_selection_2x_puts_a_layer_of_twice_its_size_at_twice_its_place(krita_app: Any) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    try:
        connect_with_upscalers(controller, ["4x-UltraSharp.pth", "RealESRGAN_x2plus.pth"])
        doc.find("Painting").setPixelData(b"\x10\x20\x30\xff" * 4, 5, 3, 2, 2)
        selection = Selection()
        selection.select(4, 2, 6, 5, 255)
        doc.setSelection(selection)
        panel.upscale_factor.setCurrentIndex(panel.upscale_factor.findData(2))
        panel.upscale_strength.setValue(0.25)
        panel.upscale.click()

        job = network.jobs()[-1]
        assert job.mode == "upscale" and not job.live
        assert job.bounds is not None and job.bounds.to_list() == [4, 2, 6, 5]  # the selection's box
        assert job.params.upscale == protocol.UpscaleParam(2.0, None, "RealESRGAN_x2plus.pth", True)
        assert job.params.strength == 0.25
        canvas = network.frames(job)["canvas"]
        assert (canvas.width, canvas.height) == (6, 5)  # full resolution, no mask
        assert canvas.payload[(1 * 6 + 1) * 4 :][:4] == b"\x10\x20\x30\xff"  # the painting's pixel at (5, 3)
        assert [name for name, _ in doc.undo_log] == []  # nothing changes before the answer

        progress = protocol.Progress(job.job_id, 1, 4)
        controller.handle_event(ServerMessage(progress))
        assert panel.progress.maximum() == 4 and panel.progress.value() == 1

        controller.handle_event(upscale_result(job, 2))
        assert (doc.width(), doc.height()) == (32, 24)  # the 16 x 12 document, twice as large
        layer = doc.find("Upscaled 2x (Live Diffusion)")
        assert doc.names() == ["Background", "Painting", "Upscaled 2x (Live Diffusion)"]
        assert layer.pixelData(8, 4, 12, 10) == RED * (12 * 10)  # at (4, 2) x 2, 6 x 5 x 2
        assert layer.pixelData(7, 4, 1, 1) == b"\x00" * 4 and layer.pixelData(20, 4, 1, 1) == b"\x00" * 4
        assert doc.activeNode() is doc.find("Painting")  # the painter's active layer stays
        assert [name for name, _ in doc.undo_log] == ["scale image", "add"]
        assert "Upscaled 2x with RealESRGAN_x2plus.pth, refined" in panel.message.property("plain")
    finally:
        controller.shutdown()


def test_upscaling_the_whole_image_4x_without_upscale_models_or_refine(krita_app: Any) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    try:
        connect_with_upscalers(controller, [])
        panel.upscale_factor.setCurrentIndex(panel.upscale_factor.findData(4))
        panel.upscale_refine.setChecked(False)
        assert not panel.upscale_strength.isEnabled()
        panel.upscale.click()
        job = network.jobs()[-1]
        assert job.bounds is not None and job.bounds.to_list() == [0, 0, 16, 12]
        assert job.params.upscale == protocol.UpscaleParam(4.0, None, None, False)  # Lanczos
        controller.handle_event(upscale_result(job, 4))
        assert (doc.width(), doc.height()) == (64, 48)
        assert doc.find("Upscaled 4x (Live Diffusion)").pixelData(0, 0, 64, 48) == RED * (64 * 48)
    finally:
        controller.shutdown()


def test_a_failed_or_too_large_upscale_changes_nothing(krita_app: Any) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    try:
        small = replace(WELCOME, limits=protocol.Limits(max_upscale_side=40))
        controller.handle_event(Connected(small))
        panel.upscale_factor.setCurrentIndex(panel.upscale_factor.findData(4))
        panel.upscale.click()  # 16 x 4 = 64 > 40
        assert network.jobs() == []
        assert "would be over 40 pixels" in panel.message.property("plain")
        panel.upscale_factor.setCurrentIndex(panel.upscale_factor.findData(2))
        panel.upscale.click()
        job = network.jobs()[-1]
        error = protocol.Error("model_error", "The GPU ran out of memory.", job.job_id)
        controller.handle_event(ServerMessage(error))
        assert (doc.width(), doc.height()) == (16, 12) and doc.names() == ["Background", "Painting"]
        assert not controller.upscales.owns(job.job_id)
    finally:
        controller.shutdown()


def test_the_upscale_model_is_the_one_named_for_the_factor() -> None:
    names = ["4x-UltraSharp.pth", "RealESRGAN_x2plus.pth", "span.safetensors"]
    assert pick_upscaler(names, 2) == "RealESRGAN_x2plus.pth"
    assert pick_upscaler(names, 4) == "4x-UltraSharp.pth"
    assert pick_upscaler(["span.safetensors"], 2) == "span.safetensors"
    assert pick_upscaler([], 4) is None
