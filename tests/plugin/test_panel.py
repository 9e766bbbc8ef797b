from __future__ import annotations

from typing import TypeVar

from krita_plugin._compat import protocol
from krita_plugin.model_lists import ModelListing
from krita_plugin.panel import Panel
from krita_plugin.qt import Qt
from krita_plugin.settings import ControlLayerChoice, GenerationSettings


def test_settings_round_trip_through_the_widgets(qapp) -> None:
    panel = Panel()
    panel.set_models(
        ModelListing({"checkpoints": ["a.safetensors", "b.safetensors"], "loras": ["s.safetensors"]}),
        ["lcm", "euler"],
    )
    wanted = GenerationSettings(
        prompt="a cat", negative_prompt="dog", strength=0.35, seed=99, seed_locked=True,
        steps=6, cfg=1.5, sampler="euler", checkpoint="b.safetensors", lora="s.safetensors",
        lora_strength=0.5, resolution=1.5, batch=4,
        guidance={
            **{kind: ControlLayerChoice("", 1.0) for kind in protocol.CONTROL_KINDS},  # every row has one
            "scribble": ControlLayerChoice("", 0.7), "pose": ControlLayerChoice("", 1.2),
        },
    )  # fmt: skip
    panel.set_settings(wanted)
    assert panel.settings() == wanted


DOCKER_WIDTH = 260  # Krita's default docker width

T = TypeVar("T")


def not_none(part: T | None) -> T:
    """A scroll area's scrollbar or viewport: Qt's stubs allow None, a built panel always has them."""
    assert part is not None
    return part


def _needed_width(panel: Panel) -> int:
    """The docker width needed with no horizontal scrolling: the body, the vertical scrollbar, the frame."""
    return (
        panel.body.minimumSizeHint().width()
        + not_none(panel.verticalScrollBar()).sizeHint().width()
        + 2 * panel.frameWidth()
    )


def test_the_panel_fits_the_default_docker_width_whatever_it_shows(qapp) -> None:
    panel = Panel()
    for section in panel.sections.values():
        section.set_expanded(True)
    long_name = "a very long checkpoint name that painters really do have v2 final final.safetensors"
    panel.set_models(ModelListing({"checkpoints": [long_name], "loras": [long_name]}), ["lcm"])
    panel.set_layer_choices(
        {"scribble": [("{1}", "Scribble layer with a long long name " * 3)], "pose": [("{2}", "Pose " * 20)]}
    )
    panel.set_message(
        "A long error message that has to wrap over several lines in the narrow docker. " * 3, True
    )
    panel.set_status("Connected (cuda:0 NVIDIA GeForce RTX 4090 float16) — loading dreamshaper_8…", "busy")
    assert _needed_width(panel) <= DOCKER_WIDTH
    panel.resize(DOCKER_WIDTH, 900)
    panel.show()
    qapp.processEvents()
    assert not not_none(panel.horizontalScrollBar()).isVisible()
    assert panel.cancel.isVisible() and panel.strength_label.isVisible()
    assert panel.cancel.geometry().right() <= not_none(panel.viewport()).width()


def test_messages_do_not_move_the_widgets_below(qapp) -> None:
    panel = Panel()
    panel.resize(DOCKER_WIDTH, 900)
    panel.show()
    panel.set_message("")
    qapp.processEvents()
    before = panel.sections["generation"].mapTo(panel.body, panel.sections["generation"].rect().topLeft())
    panel.set_message("Done in 42 ms. Apply keeps it as a layer.")
    qapp.processEvents()
    after = panel.sections["generation"].mapTo(panel.body, panel.sections["generation"].rect().topLeft())
    assert before == after


def test_prompt_and_actions_come_first(qapp) -> None:
    panel = Panel()
    panel.resize(DOCKER_WIDTH, 900)
    panel.show()
    qapp.processEvents()

    def top(widget) -> int:
        return widget.mapTo(panel.body, widget.rect().topLeft()).y()

    assert top(panel.prompt) < top(panel.live) == top(panel.generate) < top(panel.result_view)
    assert top(panel.result_view) < top(panel.apply) < top(panel.sections["generation"])
    assert top(panel.sections["guidance"]) < top(panel.sections["backend"])
    assert not panel.sections["backend"].body.isVisibleTo(panel)  # address and token folded away


def test_model_lists_keep_the_choice_and_hide_the_lcm_lora(qapp) -> None:
    panel = Panel()
    panel.set_models(
        ModelListing({"checkpoints": ["a", "b"], "loras": ["lcm-lora-sd15.safetensors", "ink.safetensors"]}),
        [],
    )
    panel.checkpoint.setCurrentIndex(panel.checkpoint.findData("b"))
    panel.set_models(ModelListing({"checkpoints": ["b", "c"], "loras": []}), [])
    assert panel.checkpoint.currentData() == "b"
    panel.set_models(ModelListing({"checkpoints": ["c"], "loras": []}), [])
    assert panel.checkpoint.currentData() == ""  # gone: back to the backend's default
    panel.set_models(
        ModelListing({"checkpoints": [], "loras": ["lcm-lora-sd15.safetensors", "ink.safetensors"]}), []
    )
    assert [panel.lora.itemData(i) for i in range(panel.lora.count())] == ["", "ink.safetensors"]


def test_layer_choices_refresh_without_spurious_changes(qapp) -> None:
    panel = Panel()
    changes = []
    panel.settings_changed.connect(lambda: changes.append(1))
    panel.set_layer_choices({"scribble": [("{1}", "lines")]})
    panel.select_guidance({"scribble": "{1}"})
    changes.clear()
    panel.set_layer_choices({"scribble": [("{1}", "lines")]})
    assert changes == []
    panel.set_layer_choices({})  # the layer was deleted
    assert panel.settings().choice("scribble").node_id == "" and changes


def test_messages_are_escaped(qapp) -> None:
    panel = Panel()
    panel.set_message("<b>not bold</b>", error=True)
    assert "&lt;b&gt;" in panel.message.text()
    assert panel.message.property("plain") == "<b>not bold</b>"


def test_model_pickers_show_families_grey_out_unusable_files_and_fit_loras_to_the_checkpoint(qapp) -> None:
    panel = Panel()
    listing = ModelListing(
        models={"checkpoints": ["base15.safetensors", "refiner.safetensors", "xl.safetensors"],
                "loras": ["ink15.safetensors", "inkxl.safetensors", "lcm-lora-sdxl.safetensors",
                          "odd.safetensors"]},
        families={"checkpoints": {"base15.safetensors": "sd15", "xl.safetensors": "sdxl"},
                  "loras": {"ink15.safetensors": "sd15", "inkxl.safetensors": "sdxl"}},
        unusable={"checkpoints": {"refiner.safetensors": "the SDXL refiner: not supported"}},
        default_checkpoint="xl.safetensors",
    )  # fmt: skip
    panel.set_models(listing, [])
    texts = [panel.checkpoint.itemText(i) for i in range(panel.checkpoint.count())]
    assert texts == [
        "Backend default (xl.safetensors · SDXL)", "base15.safetensors · SD 1.5", "refiner.safetensors",
        "xl.safetensors · SDXL",
    ]  # fmt: skip
    refiner = panel.checkpoint.findData("refiner.safetensors")
    items = not_none(panel.checkpoint.model())
    assert not bool(items.flags(items.index(refiner, 0)) & Qt.ItemFlag.ItemIsEnabled)
    assert (
        panel.checkpoint.itemData(refiner, Qt.ItemDataRole.ToolTipRole) == "the SDXL refiner: not supported"
    )

    def loras() -> list[str]:
        return [panel.lora.itemData(i) for i in range(panel.lora.count())]

    assert loras() == ["", "inkxl.safetensors", "odd.safetensors"]  # the default is SDXL; odd may fit
    panel.checkpoint.setCurrentIndex(panel.checkpoint.findData("base15.safetensors"))
    assert loras() == ["", "ink15.safetensors", "odd.safetensors"]
