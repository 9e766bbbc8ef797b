"""Listed model files are usable or marked with why not: the welcome's and `models` answer's lists keep every
name, and `unusable` gives a reason for files whose header already shows the loader will refuse them.

Real server, engine and tiny models over a real WebSocket; every mark is checked against the real loader
(a job naming the file fails with model_error), and every unmarked tiny model is one the other tests run.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from backend.model_check import unusable_reason
from protocol import ModelList, Welcome, decode_message
from protocol.messages import SERVER_MESSAGES
from tests.backend.hardening_client import RawClient
from tests.backend.server_harness import run, running_server
from tests.fixtures.ldm_writer import save_tensors
from tests.fixtures.tiny_models import TinyModels

# kind -> name -> a word its reason must contain
EXPECTED_MARKS = {
    "checkpoints": {
        "garbage.safetensors": "damaged",
        "zz-old.ckpt": "not a PyTorch file",
        "half.safetensors": "shorter than its header",
        "lora-here.safetensors": "LoRA",
        "sdxl.safetensors": "SDXL",
        "half-diffusers": "incomplete diffusers folder",
    },
    "loras": {"checkpoint-here.safetensors": "checkpoint", "loha.safetensors": "LoHa"},
    "controlnet": {"lora-here.safetensors": "LoRA"},
    "vae": {"lora-here.safetensors": "not a VAE"},
}


@pytest.fixture
def models(tmp_path: Path, tiny_models: TinyModels) -> Path:
    root = tmp_path / "models"

    def put(kind: str, name: str, source: Path) -> Path:
        target = root / kind / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
        return target

    checkpoint = tiny_models.path("checkpoints", tiny_models.checkpoint)
    lora = tiny_models.path("loras", tiny_models.style_lora)
    # Usable: each must stay unmarked.
    put("checkpoints", "good.safetensors", checkpoint)
    put("checkpoints", "tiny-diffusers", tiny_models.path("checkpoints", tiny_models.diffusers_checkpoint))
    put("loras", "lcm-lora.safetensors", tiny_models.path("loras", tiny_models.lcm_lora))
    put("controlnet", "scribble.safetensors", tiny_models.path("controlnet", tiny_models.controlnet_scribble))
    put("vae", "vae.safetensors", tiny_models.path("vae", tiny_models.vae))
    # Unusable, known from the header alone.
    (root / "checkpoints" / "garbage.safetensors").write_bytes(bytes(range(256)) * 4)
    half = checkpoint.read_bytes()
    (root / "checkpoints" / "half.safetensors").write_bytes(half[: len(half) // 2])  # a cut-off download
    put("checkpoints", "lora-here.safetensors", lora)
    save_tensors(root / "checkpoints" / "sdxl.safetensors", {"conditioner.embedders.0.x": torch.zeros(2)})
    (root / "checkpoints" / "half-diffusers").mkdir()
    (root / "checkpoints" / "half-diffusers" / "model_index.json").write_text("{}")
    put("loras", "checkpoint-here.safetensors", checkpoint)
    save_tensors(
        root / "loras" / "loha.safetensors", {"lora_unet_down_blocks_0.hada_w1_a": torch.zeros(2, 2)}
    )
    put("controlnet", "lora-here.safetensors", lora)
    put("vae", "lora-here.safetensors", lora)
    # Not a torch.save file at all (tests/backend/test_model_check_ckpt.py judges real ones).
    (root / "checkpoints" / "zz-old.ckpt").write_bytes(b"not a pickle")
    return root


def marks(message: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {kind: dict(entries) for kind, entries in message["unusable"].items() if entries}


@pytest.mark.slow
def test_listed_files_that_cant_be_used_are_marked_with_why(models: Path, tiny_models: TinyModels) -> None:
    async def scenario(url: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
        client = await RawClient.connect(url)
        welcome = client.received[0]
        await client.send_json({"type": "list_models"})
        listing = await client.receive()
        # Each mark agrees with the loader: a job naming the file fails with model_error.
        jobs: dict[str, dict[str, Any]] = {}
        base = {"checkpoint": "good.safetensors", "steps": 1, "strength": 0.5}
        for kind, names in EXPECTED_MARKS.items():
            for name in names:
                params: dict[str, Any] = {
                    "checkpoints": {**base, "checkpoint": name},
                    "loras": {**base, "loras": [{"name": name}]},
                    "controlnet": {
                        **base,
                        "controls": [{"kind": "scribble", "model": name, "image": "canvas"}],
                    },
                    "vae": {**base, "vae": name},
                }[kind]
                job_id = f"{kind}-{len(jobs)}"
                await client.send_job(job_id, params=params)
                await client.until_ended({job_id})
                jobs[f"{kind}/{name}"] = client.ends_of(job_id)[0]
        await client.send_job("good", params=base)
        await client.until_ended({"good"})
        jobs["good"] = client.ends_of("good")[0]
        await client.close()
        assert isinstance(welcome, dict) and isinstance(listing, dict)
        return welcome, listing, jobs

    with running_server(models, model_config_dir=tiny_models.config_dir, preload=False) as server:
        welcome, listing, jobs = run(scenario(server.url))

    for message in (welcome, listing):
        # The lists name every file as before (clients that don't know `unusable` see no change)...
        for kind, names in EXPECTED_MARKS.items():
            assert set(names) <= set(message["models"][kind]), (kind, message["models"])
        assert "zz-old.ckpt" in message["models"]["checkpoints"]
        # ...and `unusable` says which can't be used, and why.
        found = marks(message)
        assert {k: set(v) for k, v in found.items()} == {k: set(v) for k, v in EXPECTED_MARKS.items()}, found
        for kind, names in EXPECTED_MARKS.items():
            for name, word in names.items():
                assert word in found[kind][name], (kind, name, found[kind][name])
                assert len(found[kind][name]) < 200 and str(models) not in found[kind][name]
    for what, end in jobs.items():
        if what == "good":
            assert end["type"] == "result", end
        else:
            assert (end["type"], end.get("code")) == ("error", "model_error"), (what, end)


@pytest.mark.slow
def test_a_mark_goes_once_the_file_is_fixed(models: Path, tiny_models: TinyModels) -> None:
    """Headers are read once per file version: a download that finishes is seen at the next listing."""
    half = models / "checkpoints" / "half.safetensors"

    async def listing(url: str) -> dict[str, Any]:
        client = await RawClient.connect(url)
        await client.send_json({"type": "list_models"})
        reply = await client.receive()
        await client.close()
        assert isinstance(reply, dict)
        return reply

    with running_server(models, model_config_dir=tiny_models.config_dir, preload=False) as server:
        assert "half.safetensors" in marks(run(listing(server.url)))["checkpoints"]
        shutil.copy(tiny_models.path("checkpoints", tiny_models.checkpoint), half)
        assert "half.safetensors" not in marks(run(listing(server.url)))["checkpoints"]


def test_the_protocol_reads_unusable_and_older_messages_without_it() -> None:
    listing = {"type": "models", "models": {"checkpoints": ["a", "b"]}, "loaded": {}}
    old = decode_message(json.dumps(listing), SERVER_MESSAGES)
    assert isinstance(old, ModelList) and old.unusable == {}
    marked = {**listing, "unusable": {"checkpoints": {"b": "damaged", "c": 3}, "loras": "nonsense"}}
    new = decode_message(json.dumps(marked), SERVER_MESSAGES)
    assert isinstance(new, ModelList) and new.unusable == {"checkpoints": {"b": "damaged"}}
    assert new.models == {"checkpoints": ["a", "b"]}
    welcome = {
        "type": "welcome", "protocol_version": 1, "server": "s", "device": "cpu", "models": {}, "loaded": {},
        "samplers": [], "limits": {}, "ready": True, "unusable": {"vae": {"x.safetensors": "not a VAE"}},
    }  # fmt: skip
    decoded = decode_message(json.dumps(welcome), SERVER_MESSAGES)
    assert isinstance(decoded, Welcome) and decoded.unusable == {"vae": {"x.safetensors": "not a VAE"}}


def crafted(header: Any, data: bytes = b"", length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x01\x02", "too short"),
        (crafted({}, length=1 << 40), "cut short"),
        (crafted([1, 2]), "not valid"),
        (crafted({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "not valid"),
        (crafted({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "not valid"),
        (crafted({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 4), "shorter"),
        (crafted({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "not valid"),
    ],
)
def test_damaged_headers_are_reasons_not_exceptions(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    for kind in ("checkpoints", "loras", "controlnet", "vae"):
        reason = unusable_reason(kind, path)
        assert reason is not None and "damaged" in reason and why in reason, reason
