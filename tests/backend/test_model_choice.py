"""Model choice that never breaks a working setup (issue 12): the default checkpoint (a job's
`checkpoint: null`) is a usable, non-inpainting checkpoint of a family the backend runs, or the one a job last
named and loaded; a job naming a file that can't be used leaves the loaded checkpoint loaded; symlinked model
files are listed and used like symlinked folders while names that leave a folder are still refused; and the
model lists say each file's family.

Real server, engine and tiny models over a real WebSocket (tests/backend/fake_headers.py for files whose
header is all that is read).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.model_files import ModelStore
from protocol import Error, JobParams, ListModels, LoraParam, ModelList, Result, Welcome, decode_message
from protocol.messages import SERVER_MESSAGES, encode_message
from tests.backend.fake_headers import (
    controlnet,
    kohya_lora,
    sd15_checkpoint,
    sdxl_checkpoint,
    sdxl_refiner,
    write_safetensors,
)
from tests.backend.server_harness import RunningServer, random_canvas, run, running_server
from tests.fixtures.tiny_models import TinyModels
from tests.protocol_client import Client


def put(root: Path, kind: str, name: str, source: Path) -> Path:
    target = root / kind / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    return target


def job(checkpoint: str | None = None, **overrides: Any) -> JobParams:
    return JobParams(**{"checkpoint": checkpoint, "steps": 1, "strength": 0.5, "seed": 1, **overrides})


async def list_models(client: Client) -> ModelList:
    await client.socket.send(encode_message(ListModels()))
    while True:
        reply = await client.receive()
        if isinstance(reply, ModelList):
            return reply


def checkpoint_loads(server: RunningServer) -> int:
    """Checkpoints the server's model cache has read from disk (attempts that failed included)."""

    def count() -> int:
        models = server.server.engine._models
        assert models is not None, "the engine has not started"
        return models.load_counts["checkpoint"]

    return server.call(count)


def loaded_checkpoint(server: RunningServer) -> str | None:
    return server.call(lambda: server.server.engine.loaded().get("checkpoint"))


@pytest.fixture
def models(tmp_path: Path, tiny_models: TinyModels) -> Path:
    """Checkpoints a ComfyUI user could have, sorted so that unfit ones come first."""
    root = tmp_path / "models"
    checkpoint = tiny_models.path("checkpoints", tiny_models.checkpoint)
    write_safetensors(root / "checkpoints" / "aa-sdxl-refiner.safetensors", sdxl_refiner())
    put(root, "checkpoints", "ab-lora-here.safetensors", tiny_models.path("loras", tiny_models.style_lora))
    inpainting = tiny_models.path("checkpoints", tiny_models.inpaint_checkpoint)
    put(root, "checkpoints", "ac-inpainting.safetensors", inpainting)
    put(root, "checkpoints", "b-good.safetensors", checkpoint)
    put(root, "checkpoints", "c-other.safetensors", checkpoint)
    put(root, "loras", tiny_models.style_lora, tiny_models.path("loras", tiny_models.style_lora))
    return root


@pytest.mark.slow
def test_the_default_skips_checkpoints_that_cant_serve_it(models: Path, tiny_models: TinyModels) -> None:
    async def scenario(url: str) -> tuple[Welcome, Any]:
        client = await Client.connect(url)
        assert client.welcome is not None
        reply = await client.run(random_canvas(32, 32), job())
        await client.close()
        return client.welcome, reply

    with running_server(models, model_config_dir=tiny_models.config_dir, preload=False) as server:
        welcome, reply = run(scenario(server.url))
    assert welcome.default_checkpoint == "b-good.safetensors", welcome
    marks = welcome.unusable["checkpoints"]
    assert set(marks) == {"aa-sdxl-refiner.safetensors", "ab-lora-here.safetensors"}, marks
    assert "SDXL refiner" in marks["aa-sdxl-refiner.safetensors"]
    assert "LoRA" in marks["ab-lora-here.safetensors"]
    # The inpainting checkpoint is usable (and listed so), just not the default for plain img2img.
    assert welcome.families["checkpoints"]["ac-inpainting.safetensors"] == "sd15"
    assert isinstance(reply.final, Result), reply.messages
    assert reply.final.params["checkpoint"] == "b-good.safetensors"


@pytest.mark.slow
def test_the_default_follows_the_checkpoint_last_used(models: Path, tiny_models: TinyModels) -> None:
    async def scenario(server: RunningServer) -> None:
        client = await Client.connect(server.url)
        chosen = await client.run(random_canvas(32, 32), job("c-other.safetensors"))
        assert isinstance(chosen.final, Result), chosen.messages
        loads = checkpoint_loads(server)
        # A job naming none gets the painter's checkpoint, as it is loaded: nothing is read again.
        default = await client.run(random_canvas(32, 32), job(), live=True)
        assert isinstance(default.final, Result), default.messages
        assert default.final.params["checkpoint"] == "c-other.safetensors"
        assert checkpoint_loads(server) == loads
        assert (await list_models(client)).default_checkpoint == "c-other.safetensors"
        # Once that file can't be used, the default goes back to the first usable one.
        (models / "checkpoints" / "c-other.safetensors").write_bytes(b"half a download")
        assert (await list_models(client)).default_checkpoint == "b-good.safetensors"
        await client.close()

    with running_server(models, model_config_dir=tiny_models.config_dir, preload=False) as server:
        run(scenario(server))


@pytest.mark.slow
def test_a_failed_switch_keeps_the_working_checkpoint_loaded(models: Path, tiny_models: TinyModels) -> None:
    # A file whose header is a checkpoint's but whose weights don't fit: only loading it tells.
    tensors = load_file(str(models / "checkpoints" / "b-good.safetensors"))
    tensors["model.diffusion_model.out.2.weight"] = torch.zeros(4, 32, 1, 1)  # a 3x3 convolution
    save_file(tensors, str(models / "checkpoints" / "misfit.safetensors"))
    good = models / "checkpoints" / "b-good.safetensors"
    (models / "checkpoints" / "half.safetensors").write_bytes(good.read_bytes()[:5000])

    async def scenario(server: RunningServer) -> None:
        client = await Client.connect(server.url)
        working = await client.run(random_canvas(32, 32), job("c-other.safetensors"), live=True)
        assert isinstance(working.final, Result), working.messages
        loads = checkpoint_loads(server)
        for name, tried in (("misfit.safetensors", 1), ("half.safetensors", 0)):
            failed = await client.run(random_canvas(32, 32), job(name), live=True)
            assert isinstance(failed.final, Error) and failed.final.code == "model_error", failed.messages
            assert name in failed.final.message
            # The loader read the misfit (its header can't tell); the half download never got that far.
            assert checkpoint_loads(server) == loads + tried
            loads += tried
            assert loaded_checkpoint(server) == "c-other.safetensors"
        # The next frames, named or default, run on the model that stayed loaded: no reload.
        for checkpoint in ("c-other.safetensors", None):
            frame = await client.run(random_canvas(32, 32), job(checkpoint, seed=2), live=True)
            assert isinstance(frame.final, Result), frame.messages
            assert frame.final.params["checkpoint"] == "c-other.safetensors"
        assert checkpoint_loads(server) == loads
        await client.close()

    with running_server(models, model_config_dir=tiny_models.config_dir, preload=False) as server:
        run(scenario(server))


@pytest.mark.slow
def test_symlinked_lora_files_are_listed_and_used(tmp_path: Path, tiny_models: TinyModels) -> None:
    root = tmp_path / "models"
    put(root, "checkpoints", "good.safetensors", tiny_models.path("checkpoints", tiny_models.checkpoint))
    style = tiny_models.path("loras", tiny_models.style_lora)
    elsewhere = put(tmp_path, "elsewhere", "style.safetensors", style)
    (root / "loras").mkdir()
    (root / "loras" / "linked.safetensors").symlink_to(elsewhere)
    (root / "loras" / "pack").symlink_to(elsewhere.parent, target_is_directory=True)

    async def scenario(url: str) -> tuple[Welcome, dict[str, Any]]:
        client = await Client.connect(url)
        assert client.welcome is not None
        ends: dict[str, Any] = {}
        for name in ("linked.safetensors", "pack/style.safetensors", "../elsewhere/style.safetensors"):
            ends[name] = (await client.run(random_canvas(32, 32), job(loras=[LoraParam(name)]))).final
        await client.close()
        return client.welcome, ends

    with running_server(root, model_config_dir=tiny_models.config_dir, preload=False) as server:
        welcome, ends = run(scenario(server.url))
    assert {"linked.safetensors", "pack/style.safetensors"} <= set(welcome.models["loras"]), welcome.models
    assert "loras" not in welcome.unusable, welcome.unusable
    for name in ("linked.safetensors", "pack/style.safetensors"):
        assert isinstance(ends[name], Result), ends[name]
        assert [lora["name"] for lora in ends[name].params["loras"]] == [name]
    refused = ends["../elsewhere/style.safetensors"]
    assert isinstance(refused, Error) and refused.code == "unsafe_name", refused


def test_the_model_lists_say_each_files_family(tmp_path: Path, tiny_models: TinyModels) -> None:
    root = tmp_path / "models"
    put(root, "checkpoints", "sd15.safetensors", tiny_models.path("checkpoints", tiny_models.checkpoint))
    write_safetensors(root / "checkpoints" / "xl-base.safetensors", sdxl_checkpoint())
    write_safetensors(root / "loras" / "sd15-style.safetensors", kohya_lora(768))
    write_safetensors(root / "loras" / "xl-style.safetensors", kohya_lora(2048))
    write_safetensors(root / "loras" / "sd2-style.safetensors", kohya_lora(1024))
    put(root, "loras", "tiny.safetensors", tiny_models.path("loras", tiny_models.style_lora))
    write_safetensors(root / "controlnet" / "xl-canny.safetensors", controlnet(2048))
    expected = {
        "checkpoints": {"sd15.safetensors": "sd15", "xl-base.safetensors": "sdxl"},
        "loras": {"sd15-style.safetensors": "sd15", "xl-style.safetensors": "sdxl"},
        "controlnet": {"xl-canny.safetensors": "sdxl"},
    }

    async def scenario(url: str) -> tuple[Welcome, ModelList]:
        client = await Client.connect(url)
        assert client.welcome is not None
        listing = await list_models(client)
        await client.close()
        return client.welcome, listing

    with running_server(root, model_config_dir=tiny_models.config_dir, preload=False) as server:
        welcome, listing = run(scenario(server.url))
    for message in (welcome, listing):
        assert message.families == expected, message.families
        assert message.default_checkpoint == "sd15.safetensors"
        # An SDXL checkpoint is no longer marked; an SD2 LoRA is, naming what it is for.
        marked = {kind: set(marks) for kind, marks in message.unusable.items()}
        assert marked == {"loras": {"sd2-style.safetensors"}}, message.unusable
        assert message.unusable["loras"]["sd2-style.safetensors"].startswith("made for SD 2.x")


def test_the_default_among_files_judged_by_their_headers(tmp_path: Path) -> None:
    root = tmp_path / "models"
    checkpoints = root / "checkpoints"
    write_safetensors(checkpoints / "a-refiner.safetensors", sdxl_refiner())
    write_safetensors(checkpoints / "b-inpainting.safetensors", sd15_checkpoint(in_channels=9))
    store = ModelStore(root)
    # An inpainting checkpoint serves plain img2img only when nothing else can.
    assert store.default_checkpoint() == "b-inpainting.safetensors"
    write_safetensors(checkpoints / "c-xl.safetensors", sdxl_checkpoint())
    assert store.default_checkpoint() == "c-xl.safetensors"
    store.last_used_checkpoint = "b-inpainting.safetensors"  # named by a job and loaded: the painter's
    assert store.default_checkpoint() == "b-inpainting.safetensors"
    store.last_used_checkpoint = "gone.safetensors"
    assert store.default_checkpoint() == "c-xl.safetensors"
    for name in ("b-inpainting.safetensors", "c-xl.safetensors"):
        (checkpoints / name).unlink()
    assert store.default_checkpoint() is None
    message = store.no_checkpoint_error().message
    assert message.startswith("No checkpoint can be used ('a-refiner.safetensors': an SDXL refiner"), message


def test_the_protocol_reads_families_and_older_lists_without_them() -> None:
    old = {"type": "models", "models": {"checkpoints": ["a"]}, "loaded": {}}
    decoded = decode_message(json.dumps(old), SERVER_MESSAGES)
    assert isinstance(decoded, ModelList)
    assert (decoded.families, decoded.default_checkpoint) == ({}, None)
    new = {
        **old,
        "families": {"checkpoints": {"a": "sdxl", "b": "SD XL!", "c": 3}, "loras": "nonsense"},
        "default_checkpoint": "a",
    }
    decoded = decode_message(json.dumps(new), SERVER_MESSAGES)
    assert isinstance(decoded, ModelList)
    assert (decoded.families, decoded.default_checkpoint) == ({"checkpoints": {"a": "sdxl"}}, "a")
    welcome = {
        "type": "welcome", "protocol_version": 1, "server": "s", "device": "cpu", "models": {}, "loaded": {},
        "samplers": [], "limits": {}, "ready": True, "families": {"loras": {"x.safetensors": "sd15"}},
    }  # fmt: skip
    decoded = decode_message(json.dumps(welcome), SERVER_MESSAGES)
    assert isinstance(decoded, Welcome) and decoded.families == {"loras": {"x.safetensors": "sd15"}}
    assert decoded.default_checkpoint is None
