"""Model files changed on disk under a running server: no crash, and the change is noticed.

safetensors memory-maps files; a tensor that stays a view of the mapping turns into SIGBUS (the process dies
without a log line) once the file is truncated, which `cp`, `curl -o` and `rsync --inplace` all do. The
server runs in a subprocess here, so a crash shows up as a dead process instead of killing pytest.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from protocol import Error, JobParams, LoraParam
from tests.backend.server_harness import random_canvas, run
from tests.fixtures.tiny_models import TinyModels
from tests.protocol_client import Client

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


class ServerProcess:
    """`python -m backend` on a free loopback port, its log collected by a thread so it never blocks."""

    def __init__(self, models: Path, config_dir: Path) -> None:
        command = [
            sys.executable, "-m", "backend", "--port", "0", "--device", "cpu", "--accelerate", "off",
            "--models-dir", str(models), "--model-config", str(config_dir),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.log: list[str] = []
        assert self.process.stderr is not None
        port: int | None = None
        for line in self.process.stderr:
            self.log.append(line)
            found = re.search(r"listening on ws://[^:]+:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port is not None, "".join(self.log)
        self.url = f"ws://127.0.0.1:{port}"
        self._drain = threading.Thread(target=self._read_log, daemon=True)
        self._drain.start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def own_models(tiny_models: TinyModels, tmp_path: Path) -> TinyModels:
    """A private copy: these tests damage files."""
    root = tmp_path / "models"
    shutil.copytree(tiny_models.root, root)
    return TinyModels(root=root, config_dir=tiny_models.config_dir)


@pytest.fixture
def server_process(own_models: TinyModels) -> Iterator[ServerProcess]:
    server = ServerProcess(own_models.root, own_models.config_dir)
    try:
        yield server
    finally:
        server.stop()


def job_params(models: TinyModels, lora_strength: float) -> JobParams:
    return JobParams(
        prompt="a red apple",
        checkpoint=models.checkpoint,
        loras=[LoraParam(models.style_lora, lora_strength, lora_strength)],
        steps=2,
        strength=0.6,
    )


def rewrite_in_place(path: Path, data: bytes) -> None:
    """What `cp new old` does: the same inode, truncated, then written (here: stopped part-way or not)."""
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


def ended(reply: Any) -> tuple[str, str | None]:
    final = reply.final
    if isinstance(final, Error):
        return ("error", final.code)
    return (type(final).__name__.lower(), None)


def test_a_model_file_truncated_in_place_under_a_loaded_model_does_not_kill_the_server(
    server_process: ServerProcess, own_models: TinyModels
) -> None:
    checkpoint = own_models.path("checkpoints", own_models.checkpoint)
    lora = own_models.path("loras", own_models.style_lora)
    originals = {checkpoint: checkpoint.read_bytes(), lora: lora.read_bytes()}
    image = random_canvas(32, 32)

    async def scenario() -> None:
        client = await Client.connect(server_process.url)
        first = await client.run(image, job_params(own_models, 0.5))
        assert first.result is not None, first.messages

        # A copy stopped a few KB in: both files now end long before the weights the model was built from.
        for path, data in originals.items():
            rewrite_in_place(path, data[:4096])
        # A new strength re-fuses the LoRA (reading its cached tensors) and the job runs the UNet.
        try:
            damaged = await client.run(image, job_params(own_models, 0.7))
        except ConnectionClosed:
            server_process.process.wait(10)
            pytest.fail(f"the server died (exit status {server_process.process.returncode})")
        # The change was noticed: the job is refused with a model error, not run on stale or missing weights.
        assert ended(damaged) == ("error", "model_error"), damaged.messages
        assert isinstance(damaged.final, Error) and damaged.final.job_id == damaged.job_id

        # The copy finished: the same content is back, under a new mtime; the next job works again.
        for path, data in originals.items():
            rewrite_in_place(path, data)
        healed = await client.run(image, job_params(own_models, 0.7))
        assert healed.result is not None, healed.messages
        await client.close()

    run(scenario(), timeout=240)
    assert server_process.alive()


def test_a_model_file_replaced_in_place_with_other_weights_is_reloaded(
    server_process: ServerProcess, own_models: TinyModels
) -> None:
    """`rsync --inplace` of a new version: the next job uses the new weights, not the old ones in memory."""
    from safetensors.torch import load_file, save

    checkpoint = own_models.path("checkpoints", own_models.checkpoint)
    tensors = load_file(str(checkpoint))
    for key, tensor in tensors.items():
        if key.startswith("model.diffusion_model.out."):
            tensors[key] = tensor * 3  # another version of the model: same names and shapes, other weights
    new_version = save(tensors)
    image = random_canvas(32, 32)
    params = JobParams(prompt="a red apple", checkpoint=own_models.checkpoint, steps=2, strength=0.6)

    async def scenario() -> None:
        client = await Client.connect(server_process.url)
        before = await client.run(image, params)
        again = await client.run(image, params)
        assert before.image is not None and again.image is not None, before.messages
        assert (before.image == again.image).all()  # deterministic: a difference below means new weights
        rewrite_in_place(checkpoint, new_version)
        after = await client.run(image, params)
        assert after.image is not None, after.messages
        assert not (after.image == before.image).all()
        await client.close()

    run(scenario(), timeout=240)
    assert server_process.alive()
