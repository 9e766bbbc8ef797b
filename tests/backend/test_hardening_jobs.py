"""Every job a careless or hostile client sends ends with exactly one coded answer carrying its id.

Through the real server and engine (tiny models) over a real WebSocket, with a raw client that sends what
a well-behaved one never would.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol import Limits, Result
from tests.backend.hardening_client import RawClient, canvas_frame, job_message
from tests.backend.server_harness import RunningServer, run, running_server
from tests.backend.test_server_jobs import SlowStepsWorker as ServerJobsSlowWorker
from tests.fixtures.tiny_models import TinyModels

pytestmark = pytest.mark.slow

# An error reply stays this small whatever the input was (the longest of our own sentences is ~400).
MAX_ERROR_JSON = 2000


def assert_short(error: dict[str, Any]) -> None:
    assert len(json.dumps(error)) < MAX_ERROR_JSON, f"{len(json.dumps(error))} bytes: {str(error)[:300]}"


def only_end(client: RawClient, job_id: str) -> dict[str, Any]:
    ends = client.ends_of(job_id)
    assert len(ends) == 1, ends
    return ends[0]


LONG = "n" * 300


@pytest.mark.parametrize(
    "params",
    [
        {"checkpoint": LONG},
        {"checkpoint": "x" * 500},
        {"checkpoint": "sub/" + "y" * 256 + ".safetensors"},
        {"checkpoint": "é" * 200},  # 200 characters, 400 bytes: too long for a file name in UTF-8
        {"loras": [{"name": LONG + ".safetensors"}]},
        {"lcm_lora": LONG},
        {"vae": LONG},
        {"controls": [{"kind": "scribble", "model": LONG, "image": "canvas"}]},
    ],
    ids=lambda p: next(iter(p)),
)
def test_overlong_model_names_are_refused_with_the_job_id(
    server: RunningServer, params: dict[str, Any]
) -> None:
    async def scenario() -> None:
        client = await RawClient.connect(server.url)
        await client.send_job("long-name", params={"steps": 1, **params})
        await client.until_ended({"long-name"}, timeout=30)
        await client.send_json({"type": "list_models"})  # the connection still works
        await client.quiet()
        error = only_end(client, "long-name")
        assert error["type"] == "error" and error["code"] in ("model_not_found", "unsafe_name"), error
        assert_short(error)
        assert client.messages("models"), client.received
        assert not [m for m in client.messages("error") if m is not error], client.received
        await client.close()

    run(scenario())


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_lone_surrogate_in_a_prompt_is_bad_input_not_an_internal_error(
    server: RunningServer, tiny_models: TinyModels, field: str
) -> None:
    async def scenario() -> None:
        client = await RawClient.connect(server.url)
        params = {
            "checkpoint": tiny_models.checkpoint,
            "steps": 1,
            "cfg": 2.0,
            field: "a castle \ud800 at dusk",
        }
        # json.dumps writes the surrogate as the escape \ud800, which JSON allows and Python decodes as is.
        await client.send_job("surrogate", params=params)
        await client.until_ended({"surrogate"})
        await client.quiet()
        error = only_end(client, "surrogate")
        assert (error["type"], error["code"]) == ("error", "bad_message"), error
        assert field in error["message"]
        assert client.messages("error") == [error], client.received  # its frame was dropped quietly
        await client.close()

    run(scenario())


def test_result_bounds_past_the_protocol_range_are_refused_up_front(
    server: RunningServer, tiny_models: TinyModels
) -> None:
    """bounds + canvas beyond 2^30 would give a result the project's own decoder rejects."""

    async def scenario() -> None:
        client = await RawClient.connect(server.url)
        params = {"checkpoint": tiny_models.checkpoint, "steps": 1, "strength": 0.0}
        await client.send_job("far", params=params, bounds=[2**30 - 8, 0, 16, 16])
        await client.send_job("edge", params=params, bounds=[2**30 - 16, -(2**30), 16, 16])
        await client.until_ended({"far", "edge"})
        error = only_end(client, "far")
        assert (error["type"], error["code"]) == ("error", "bad_message"), error
        result = only_end(client, "edge")
        assert result["type"] == "result", result
        assert Result.from_dict(result, Limits()).bounds == [2**30 - 16, -(2**30), 16, 16]
        await client.close()

    run(scenario())


def test_huge_inputs_get_short_errors(server: RunningServer) -> None:
    async def scenario() -> None:
        client = await RawClient.connect(server.url)
        await client.send_json({"type": "x" * 5_000_000})
        unknown_type = await client.receive()
        assert isinstance(unknown_type, dict) and unknown_type["code"] == "unknown_type"
        assert_short(unknown_type)

        keys = {f"unknown_field_{i}": 0 for i in range(100_000)}
        await client.send_json({**job_message("many-keys"), **keys})
        many_keys = await client.receive()
        assert isinstance(many_keys, dict) and many_keys["code"] == "bad_message"
        assert many_keys["job_id"] == "many-keys"  # the client can tell which of its jobs this ends
        assert_short(many_keys)

        await client.send_json(job_message("long-choice", mode="m" * 9000))
        long_choice = await client.receive()
        assert isinstance(long_choice, dict) and long_choice["job_id"] == "long-choice"
        assert_short(long_choice)
        await client.close()

    run(scenario())


class SlowStepsWorker(ServerJobsSlowWorker):
    step_pause_s = 0.3


def test_a_duplicate_job_id_is_refused_without_ending_the_running_job(tiny_models: TinyModels) -> None:
    async def scenario(url: str) -> None:
        client = await RawClient.connect(url)
        params = {"checkpoint": tiny_models.checkpoint, "steps": 4}
        await client.send_job("dup", params=params)
        while not client.messages("progress"):
            await client.receive()
        # The same id again while it runs: refused, and its frame dropped without a second complaint.
        await client.send_json(job_message("dup", params=params))
        await client.socket.send(canvas_frame("dup"))
        await client.until_ended({"dup"})
        await client.quiet(1.0)
        errors = client.messages("error")
        assert [e["code"] for e in errors] == ["duplicate_job"], client.received
        # Not tied to "dup": a client would take that for the running job's end, which is the result.
        assert errors[0]["job_id"] is None and "dup" in errors[0]["message"]
        assert only_end(client, "dup")["type"] == "result"
        await client.close()

    with running_server(
        tiny_models.root, engine_factory=SlowStepsWorker, model_config_dir=tiny_models.config_dir
    ) as slow:
        run(scenario(slow.url))
