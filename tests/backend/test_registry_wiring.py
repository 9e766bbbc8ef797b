"""The registries end to end: a control kind or sampler added to protocol/registry.py reaches the real
server's welcome and validation and the plugin's choices; each registered name has an implementation."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from websockets.asyncio.client import connect

from backend.engine.controlnet import HINT_MAKERS, choose_controlnet
from backend.engine.samplers import SAMPLER_SPECS, SamplerFactory
from backend.model_files import ModelStore
from protocol import PROTOCOL_VERSION, ControlKind, ControlParam, Sampler, registry
from tests.backend.server_harness import run, running_server

DEPTH = ControlKind("test_depth", registry.IMAGE, ("depth",), "Depth (test)")
DPM = Sampler("test_dpm", "DPM (test)")
DEPTH_FILE = "control_v11f1p_sd15_depth.safetensors"


def test_every_protocol_sampler_has_a_scheduler() -> None:
    import diffusers

    assert set(SAMPLER_SPECS) == set(registry.SAMPLERS)
    config = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear"}
    for name in registry.SAMPLERS:
        spec = SAMPLER_SPECS[name]
        scheduler = SamplerFactory().scheduler(name, config)
        assert isinstance(scheduler, getattr(diffusers, spec.scheduler))
        assert all(scheduler.config[key] == value for key, value in spec.config.items()), name
        # The table's step options and timesteps are ones the scheduler takes (a typo would fail every job).
        assert set(spec.step_options) <= set(inspect.signature(scheduler.step).parameters), name
        if spec.timesteps == "trailing":
            assert "timesteps" in inspect.signature(scheduler.set_timesteps).parameters, name
        schedule = SamplerFactory().schedule(name, config, 4, 1.0, torch.device("cpu"))
        assert len(schedule) == 4 * schedule.order, name
    with pytest.raises(ValueError, match="Unknown sampler 'ddim'"):
        SamplerFactory().scheduler("ddim", config)


def test_every_protocol_control_kind_has_a_hint_maker() -> None:
    assert set(HINT_MAKERS) == set(registry.CONTROL_KINDS)
    lines = np.zeros((8, 8, 4), dtype=np.uint8)
    lines[2, :, 3] = 255  # one white stroke on a transparent layer
    for make_hint in HINT_MAKERS.values():
        hint = make_hint(lines)
        assert hint.shape == (8, 8, 3) and hint.dtype == np.uint8


def test_the_engine_picks_a_controlnet_by_the_registrys_words(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "controlnet"
    folder.mkdir(parents=True)
    for name in ("control_v11p_sd15_lineart.safetensors", "control_v11p_sd15_openpose.safetensors"):
        (folder / name).write_bytes(b"")
    store = ModelStore(tmp_path / "models")
    # Before the registry the engine knew only "scribble" and the plugin also "sketch" and "lineart".
    assert choose_controlnet(store, ControlParam("scribble")) == "control_v11p_sd15_lineart.safetensors"
    assert choose_controlnet(store, ControlParam("pose")) == "control_v11p_sd15_openpose.safetensors"


async def welcome_and_reply(url: str, job: dict) -> tuple[dict, dict]:
    async with connect(url) as socket:
        await socket.send(json.dumps({"type": "hello", "protocol_version": PROTOCOL_VERSION}))
        welcome = json.loads(await socket.recv())
        await socket.send(json.dumps(job))
        return welcome, json.loads(await socket.recv())


def job_with(sampler: str, kind: str) -> dict:
    return {
        "type": "job",
        "job_id": "j1",
        "params": {"sampler": sampler, "controls": [{"kind": kind, "image": "lines"}]},
        "images": [
            {"slot": "canvas", "encoding": "bgra8", "width": 8, "height": 8},
            {"slot": "lines", "encoding": "bgra8", "width": 8, "height": 8},
        ],
    }


def test_a_kind_and_a_sampler_added_to_the_registry_reach_the_welcome_validation_and_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    pytest.importorskip("krita_plugin.qt")  # the plugin's panel and the fake Krita document need Qt
    app = request.getfixturevalue("qapp")
    models = tmp_path / "models"
    (models / "controlnet").mkdir(parents=True)
    (models / "controlnet" / DEPTH_FILE).write_bytes(b"")  # listed; no checkpoint, so no job ever runs

    with running_server(models) as server:
        welcome, reply = run(welcome_and_reply(server.url, job_with("test_dpm", "test_depth")))
    assert "test_dpm" not in welcome["samplers"] and "test_depth" not in welcome["control_kinds"]
    assert reply["type"] == "error" and reply["code"] == "bad_message"

    built_in = list(registry.CONTROL_KINDS)
    # The whole change: one entry in each table of protocol/registry.py.
    monkeypatch.setitem(registry.CONTROL_KINDS, DEPTH.name, DEPTH)
    monkeypatch.setitem(registry.SAMPLERS, DPM.name, DPM)

    with running_server(models) as server:
        welcome, reply = run(welcome_and_reply(server.url, job_with("test_dpm", "test_depth")))
    assert welcome["samplers"] == list(registry.SAMPLERS) and welcome["samplers"][-1] == "test_dpm"
    assert welcome["control_kinds"] == [*built_in, "test_depth"]
    # Validation took the job; it ends only because this models folder has no checkpoint.
    assert reply["type"] == "error" and reply["code"] == "no_model", reply

    from krita_plugin.guidance import layer_choices
    from krita_plugin.model_lists import ModelListing
    from krita_plugin.panel import Panel
    from krita_plugin.request_builder import control_model
    from tests.plugin import fake_krita

    panel = Panel()
    panel.set_models(ModelListing(welcome["models"]), welcome["samplers"])
    app.processEvents()
    offered = [(panel.sampler.itemData(i), panel.sampler.itemText(i)) for i in range(panel.sampler.count())]
    assert ("test_dpm", "DPM (test)") in offered
    assert control_model(welcome["models"], "test_depth") == DEPTH_FILE
    fake_krita.Krita._instance = None
    doc = fake_krita.Krita.instance().createDocument(16, 12, "test", "RGBA", "U8", "", 72.0)
    layer = doc.createNode("Depth sketch", "paintlayer")
    doc.rootNode().addChildNode(layer, None)
    assert "Depth sketch" in [label for _, label in layer_choices(doc).of("test_depth")]


def test_every_model_family_of_the_protocol_has_a_backend_row() -> None:
    from backend.model_families import FAMILIES
    from protocol.registry import MODEL_FAMILIES

    assert set(FAMILIES) == set(MODEL_FAMILIES)
    for name, info in MODEL_FAMILIES.items():
        assert (FAMILIES[name].label, FAMILIES[name].native_side) == (info.label, info.native_side)
