from __future__ import annotations

from krita_plugin.panel import Panel
from krita_plugin.settings import ControlLayerChoice, GenerationSettings, Mode


def test_settings_round_trip_through_the_widgets(qapp) -> None:
    panel = Panel()
    panel.set_models(
        {"checkpoints": ["a.safetensors", "b.safetensors"], "loras": ["s.safetensors"]}, ["lcm", "euler"]
    )
    wanted = GenerationSettings(
        mode=Mode.INPAINT, prompt="a cat", negative_prompt="dog", strength=0.35, seed=99, seed_locked=True,
        steps=6, cfg=1.5, sampler="euler", checkpoint="b.safetensors", lora="s.safetensors",
        lora_strength=0.5,
        scribble=ControlLayerChoice("", 0.7), pose=ControlLayerChoice("", 1.2),
    )  # fmt: skip
    panel.set_settings(wanted)
    assert panel.settings() == wanted


def test_mode_switches_between_live_and_generate_buttons(qapp) -> None:
    panel = Panel()
    panel.show()
    assert panel.live.isVisible() and not panel.generate.isVisible()
    panel.live.setChecked(True)
    panel.mode.setCurrentIndex(panel.mode.findData(Mode.INPAINT.value))
    assert not panel.live.isVisible() and panel.generate.isVisible()
    assert not panel.live.isChecked()  # leaving live mode turns live off
    assert panel.generate.text() == "Inpaint"


def test_model_lists_keep_the_choice_and_hide_the_lcm_lora(qapp) -> None:
    panel = Panel()
    panel.set_models(
        {"checkpoints": ["a", "b"], "loras": ["lcm-lora-sd15.safetensors", "ink.safetensors"]}, []
    )
    panel.checkpoint.setCurrentIndex(panel.checkpoint.findData("b"))
    panel.set_models({"checkpoints": ["b", "c"], "loras": []}, [])
    assert panel.checkpoint.currentData() == "b"
    panel.set_models({"checkpoints": ["c"], "loras": []}, [])
    assert panel.checkpoint.currentData() == ""  # gone: back to the backend's default
    panel.set_models({"checkpoints": [], "loras": ["lcm-lora-sd15.safetensors", "ink.safetensors"]}, [])
    assert [panel.lora.itemData(i) for i in range(panel.lora.count())] == ["", "ink.safetensors"]


def test_layer_choices_refresh_without_spurious_changes(qapp) -> None:
    panel = Panel()
    changes = []
    panel.settings_changed.connect(lambda: changes.append(1))
    panel.set_layer_choices([("{1}", "lines")], [])
    panel.select_scribble_layer("{1}")
    changes.clear()
    panel.set_layer_choices([("{1}", "lines")], [])
    assert changes == []
    panel.set_layer_choices([], [])  # the layer was deleted
    assert panel.settings().scribble.node_id == "" and changes


def test_messages_are_escaped(qapp) -> None:
    panel = Panel()
    panel.set_message("<b>not bold</b>", error=True)
    assert "&lt;b&gt;" in panel.message.text()
    assert panel.message.property("plain") == "<b>not bold</b>"
