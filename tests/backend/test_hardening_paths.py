"""Messages to clients name model files relative to the models folder, never by the server's absolute paths;
the server's log keeps the full paths. Real server, engine and tiny models over a real WebSocket."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from backend.redact import PathRedactor
from tests.backend.hardening_client import RawClient
from tests.backend.server_harness import run, running_server
from tests.fixtures.tiny_models import TinyModels

# An absolute POSIX path: a slash that starts a word (not inside `checkpoints/x` or `ws://`), then a name.
ABSOLUTE = re.compile(r"(?<![\w.~:/-])/[\w.-]+/")


def assert_no_server_path(text: str, *roots: Path) -> None:
    for root in roots:
        assert str(root) not in text and str(root.resolve()) not in text, text
    assert not ABSOLUTE.search(text), text


@pytest.fixture
def models(tmp_path: Path, tiny_models: TinyModels) -> Path:
    """A working checkpoint, one whose diffusers folder is broken (its loader's error quotes a file's full
    path), and a name that points outside the models folder."""
    root = tmp_path / "srv" / "models"
    (root / "checkpoints").mkdir(parents=True)
    shutil.copy(
        tiny_models.path("checkpoints", tiny_models.checkpoint), root / "checkpoints" / "good.safetensors"
    )
    broken = root / "checkpoints" / "zz-broken-diffusers"
    for part in ("unet", "vae", "text_encoder"):  # complete as far as the model lists can tell
        (broken / part).mkdir(parents=True)
        (broken / part / "config.json").write_text("{}")
        (broken / part / "model.safetensors").write_bytes(b"")
    (broken / "model_index.json").write_text("{}")
    (broken / "unet" / "config.json").write_text("{ not json")
    (root / "checkpoints" / "outside.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    (tmp_path / "elsewhere.safetensors").write_bytes(b"\0" * 16)
    return root


@pytest.mark.slow
def test_errors_name_files_relative_to_the_models_folder(
    models: Path, tiny_models: TinyModels, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def scenario(url: str) -> dict[str, dict[str, Any]]:
        client = await RawClient.connect(url)
        errors = {}
        for job_id, checkpoint in (
            ("missing", "missing.safetensors"),  # model_not_found: "put checkpoints in <folder>"
            ("outside", "../elsewhere.safetensors"),  # unsafe_name: a name that leaves the folder
            ("broken", "zz-broken-diffusers"),  # model_error from the loader, quoting a config file
        ):
            await client.send_job(job_id, params={"checkpoint": checkpoint, "steps": 1, "strength": 0.5})
            await client.until_ended({job_id})
            (errors[job_id],) = client.ends_of(job_id)
        await client.close()
        return errors

    with running_server(models, model_config_dir=tiny_models.config_dir, preload=False) as server:
        errors = run(scenario(server.url))

    assert [errors[j]["code"] for j in ("missing", "outside", "broken")] == [
        "model_not_found",
        "unsafe_name",
        "model_error",
    ], errors
    for error in errors.values():
        assert_no_server_path(error["message"], models, tiny_models.config_dir)
    assert "in checkpoints/" in errors["missing"]["message"], errors["missing"]
    assert "zz-broken-diffusers" in errors["broken"]["message"], errors["broken"]
    # The server's own log keeps where the files are.
    assert str(models / "checkpoints") in caplog.text


def test_the_welcome_and_no_model_errors_name_no_server_path(tmp_path: Path) -> None:
    models = tmp_path / "home" / "painter" / "models"
    models.mkdir(parents=True)

    async def scenario(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
        client = await RawClient.connect(url)
        welcome = client.received[0]
        await client.send_job("j", params={"steps": 1, "strength": 0.5})
        await client.until_ended({"j"})
        await client.close()
        assert isinstance(welcome, dict)
        return welcome, client.ends_of("j")[0]

    with running_server(models, preload=False) as server:
        welcome, error = run(scenario(server.url))
    assert "No checkpoint found" in welcome["message"], welcome
    assert "in checkpoints/" in welcome["message"] and "in loras/" in welcome["message"], welcome
    assert_no_server_path(welcome["message"], models)
    assert error["code"] == "no_model"
    assert_no_server_path(error["message"], models)


def test_the_redactor_keeps_names_and_drops_folders() -> None:
    redact = PathRedactor([Path("/srv/ai/models")]).redact
    assert redact("Put checkpoints in /srv/ai/models/checkpoints/.") == "Put checkpoints in checkpoints/."
    assert (
        redact("x is not readable ([Errno 13] Permission denied: '/srv/ai/models/loras/sub/x.safetensors')")
        == "x is not readable ([Errno 13] Permission denied: 'loras/sub/x.safetensors')"
    )
    assert redact("see /srv/ai/models.") == "see the models folder."
    assert redact("config at '/opt/app/configs/unet/config.json' is bad") == "config at 'config.json' is bad"
    assert redact(r"C:\Users\bob\models\x.ckpt failed") == "x.ckpt failed"
    unchanged = "checkpoints/sub/x.safetensors at ws://127.0.0.1:9631/, 1/2 of it, and/or"
    assert redact(unchanged) == unchanged
