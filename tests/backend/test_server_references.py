"""Reference images (IP-Adapter) through the real server: a reference changes the result and the same one
again is served from the encodings cache, a job without references is unchanged by one that had them, a live
job with references runs on the plain path and says why, and missing or wrong files get clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from backend.engine.references import ACCELERATED_OFF
from protocol import JobParams
from protocol.messages import Error, Result
from protocol.references import ReferenceParam
from tests.backend.server_harness import RunningServer, random_canvas, run, running_server
from tests.fixtures.tiny_ip_adapter import TinyReferences, write_odd_adapter, write_tiny_references
from tests.fixtures.tiny_models import TinyModels, build_tiny_models
from tests.fixtures.tiny_sdxl import TinySdxl, build_tiny_sdxl
from tests.protocol_client import Client, JobReply

pytestmark = pytest.mark.slow

SDXL_WIDE = "ip-adapter_sdxl_wide.safetensors"  # SDXL's cross-attention width: an SDXL file by its header
ORPHAN = "ip-adapter_orphan.safetensors"  # reads 20-wide embeddings: no encoder here gives them


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyModels, TinySdxl, TinyReferences]:
    root = tmp_path_factory.mktemp("references") / "models"
    sd15, sdxl, refs = build_tiny_models(root), build_tiny_sdxl(root), write_tiny_references(root)
    write_odd_adapter(refs.path("ipadapter", SDXL_WIDE), cross_width=2048, embed_width=16, seed=71)
    write_odd_adapter(refs.path("ipadapter", ORPHAN), cross_width=32, embed_width=20, seed=72)
    return sd15, sdxl, refs


@pytest.fixture(scope="module")
def server(models: tuple[TinyModels, TinySdxl, TinyReferences]) -> Iterator[RunningServer]:
    sd15, _, _ = models
    with running_server(sd15.root, model_config_dir=sd15.config_dir) as running:
        yield running


def params(checkpoint: str, *references: ReferenceParam, **overrides: Any) -> JobParams:
    base: dict[str, Any] = {"prompt": "a harbour", "checkpoint": checkpoint, "steps": 2, "strength": 0.6,
                            "cfg": 2.0, "seed": 8, "lcm_lora_strength": 0.0}  # fmt: skip
    base.update(overrides)
    return JobParams(**base, references=list(references))


def look(seed: int) -> np.ndarray:
    return random_canvas(40, 32, seed)


def runs(server: RunningServer, *jobs: tuple[JobParams, dict[str, np.ndarray], bool]) -> list[JobReply]:
    canvas = random_canvas(48, 48, 5)

    async def scenario() -> list[JobReply]:
        client = await Client.connect(server.url)
        replies = [await client.run(canvas, p, live=live, controls=images) for p, images, live in jobs]
        await client.close()
        return replies

    return run(scenario())


def result_of(reply: JobReply) -> tuple[Result, bytes]:
    assert isinstance(reply.result, Result), reply.messages
    assert reply.image is not None
    return reply.result, reply.image.tobytes()


def error_of(reply: JobReply) -> str:
    assert isinstance(reply.final, Error), reply.messages
    return reply.final.message


def test_a_reference_changes_the_result_is_cached_and_leaves_no_trace(
    server: RunningServer, models: tuple[TinyModels, TinySdxl, TinyReferences]
) -> None:
    sd15, _, refs = models
    reference = ReferenceParam("look", model=refs.adapter("sd15"), strength=1.0)
    plain, first, again, after = runs(
        server,
        (params(sd15.checkpoint), {}, False),
        (params(sd15.checkpoint, reference), {"look": look(1)}, False),
        (params(sd15.checkpoint, reference), {"look": look(1)}, False),
        (params(sd15.checkpoint), {}, False),
    )
    (_, plain_image), (first_result, first_image) = result_of(plain), result_of(first)
    (again_result, again_image), (_, after_image) = result_of(again), result_of(after)
    assert first_result.params["ip_adapters"] == [refs.adapter("sd15")]
    assert first_result.params["clip_vision"] == [refs.encoder_file]  # the one whose width fits
    assert first_image != plain_image
    assert first_result.params["references_cached"] == 0
    assert again_result.params["references_cached"] == 1
    assert again_image == first_image
    assert after_image == plain_image


def test_default_adapter_plus_encoder_folder_and_live_on_the_plain_path(
    server: RunningServer, models: tuple[TinyModels, TinySdxl, TinyReferences]
) -> None:
    _, sdxl, refs = models
    plus = ReferenceParam("look", model=refs.adapter("sdxl", plus=True))
    styled = ReferenceParam("other", kind="style", model=refs.adapter("sdxl"), strength=0.8)
    (live,) = runs(server, (params(sdxl.checkpoint, plus, styled), {"look": look(2), "other": look(3)}, True))
    assert isinstance(live.result, Result), live.messages
    assert live.result.params["family"] == "sdxl"
    assert live.result.params["accelerated"] is False
    assert ACCELERATED_OFF in live.result.params["accelerated_off"]
    assert live.result.params["clip_vision"] == [refs.encoder_folder, refs.encoder_file]


def test_missing_and_wrong_files_are_refused_clearly(
    server: RunningServer, models: tuple[TinyModels, TinySdxl, TinyReferences]
) -> None:
    sd15, _, refs = models
    image = {"look": look(4)}
    missing, orphan, wide, tiny_sdxl_on_sd15, style = runs(
        server,
        (params(sd15.checkpoint, ReferenceParam("look", model="nope.safetensors")), image, False),
        (params(sd15.checkpoint, ReferenceParam("look", model=ORPHAN)), image, False),
        (params(sd15.checkpoint, ReferenceParam("look", model=SDXL_WIDE)), image, False),
        (params(sd15.checkpoint, ReferenceParam("look", model=refs.adapter("sdxl"))), image, False),
        (params(sd15.checkpoint, ReferenceParam("look", kind="style")), image, False),
    )
    missing, orphan, wide = error_of(missing), error_of(orphan), error_of(wide)
    tiny_sdxl_on_sd15, style = error_of(tiny_sdxl_on_sd15), error_of(style)
    assert "No IP-Adapter named 'nope.safetensors'" in missing and "ipadapter/" in missing
    assert "No CLIP vision encoder fits IP-Adapter" in orphan
    assert "20-wide image embeddings" in orphan and "clip_vision/" in orphan
    assert f"IP-Adapter '{SDXL_WIDE}' is made for SDXL models" in wide
    assert "the checkpoint in use is SD 1.5" in wide
    assert refs.adapter("sdxl") in tiny_sdxl_on_sd15
    assert "doesn't fit this SD 1.5 checkpoint" in tiny_sdxl_on_sd15
    assert "'style' is not available for SD 1.5 checkpoints" in style


def test_model_lists_carry_the_new_kinds(
    server: RunningServer, models: tuple[TinyModels, TinySdxl, TinyReferences]
) -> None:
    _, _, refs = models

    async def scenario() -> dict[str, list[str]]:
        client = await Client.connect(server.url)
        await client.close()
        assert client.welcome is not None
        return client.welcome.models

    listed = run(scenario())
    assert refs.adapter("sd15") in listed["ipadapter"] and SDXL_WIDE in listed["ipadapter"]
    assert listed["clip_vision"] == [refs.encoder_folder, refs.encoder_file]
