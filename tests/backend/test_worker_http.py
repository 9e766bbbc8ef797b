"""Plain HTTP beside the WebSocket: /healthz over a model load and /metrics after real jobs, read as a
balancer and Prometheus read them (Prometheus' own text parser)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from backend.config import ServerConfig
from backend.engine_worker import EngineWorker
from backend.scheduler import Scheduler
from protocol import Cancelled, Error, ImageSpec, JobParams, JobRequest, Result, encode_message
from tests.backend.held_worker import HeldWorker
from tests.backend.http_probe import health, http_get, sample, scrape, wait_until_loaded
from tests.backend.server_harness import RunningServer, run, running_server
from tests.backend.server_harness import random_canvas as canvas
from tests.fixtures.tiny_models import TinyModels
from tests.protocol_client import Client

pytestmark = pytest.mark.slow


class GatedLoadWorker(EngineWorker):
    """The real engine, whose start (torch, the default checkpoint's load) waits until the test opens the
    gate: the worker thread takes its work in order, so the load queues behind the wait."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.gate = threading.Event()

    def start_loading(self, scheduler: Scheduler[Any]) -> None:
        scheduler.run_in_worker(lambda: self.gate.wait(60))
        super().start_loading(scheduler)


def engine_of(server: RunningServer) -> Any:
    return server.server.engine


def test_healthz_is_503_loading_until_the_checkpoint_is_loaded_then_200_ready(
    tiny_models: TinyModels,
) -> None:
    with running_server(
        tiny_models.root, engine_factory=GatedLoadWorker, model_config_dir=tiny_models.config_dir
    ) as server:
        status, body = health(server.port)
        assert status == 503
        assert body["state"] == "loading" and body["models"] == {} and body["device"] == "starting"
        assert "Loading" in body["message"]
        engine_of(server).gate.set()
        status, body = wait_until_loaded(server.port)
        assert status == 200, body
        # The default checkpoint was preloaded before it said ready.
        assert body["models"]["checkpoint"] == engine_of(server).store.default_checkpoint()
        assert body["device"].startswith("cpu") and body["message"] == "Ready."


def test_healthz_says_failed_when_the_engine_cannot_start(tiny_models: TinyModels) -> None:
    with running_server(
        tiny_models.root, model_config_dir=tiny_models.config_dir, device="no-such-device"
    ) as server:
        status, body = wait_until_loaded(server.port)
        assert (status, body["state"]) == (503, "failed"), body
        assert "no-such-device" in body["message"] and body["models"] == {}


def test_probes_need_no_token_show_none_and_are_answered_at_the_connection_cap(
    tiny_models: TinyModels,
) -> None:
    token = "s3cret-probe-token"
    with running_server(
        tiny_models.root, model_config_dir=tiny_models.config_dir, token=token, max_connections=1,
        preload=False,
    ) as server:  # fmt: skip
        assert wait_until_loaded(server.port)[0] == 200

        async def scenario() -> None:
            client = await Client.connect(server.url, token=token)  # the one connection allowed
            status, _, health_text = await asyncio.to_thread(http_get, server.port, "/healthz")
            assert status == 200 and token not in health_text
            status, _, metrics_text = await asyncio.to_thread(http_get, server.port, "/metrics")
            assert status == 200 and token not in metrics_text
            # The WebSocket itself is still capped (and still wants the token).
            with pytest.raises(InvalidStatus) as refused:
                await connect(server.url)
            assert refused.value.response.status_code == 503
            await client.close()

        run(scenario(), timeout=60)


def job_json_only(job_id: str, checkpoint: str) -> JobRequest:
    """A job whose JSON is sent but whose canvas never is: it waits for its image until cancelled."""
    images = [ImageSpec("canvas", "rgba8", 8, 8)]
    return JobRequest(job_id, "img2img", False, JobParams(checkpoint=checkpoint), images)


def test_metrics_count_jobs_by_outcome_and_time_frames_and_jobs(tiny_models: TinyModels) -> None:
    params = JobParams(prompt="an apple", checkpoint=tiny_models.checkpoint, steps=2, strength=0.5)

    async def scenario(server: RunningServer) -> str:
        client = await Client.connect(server.url)
        for seed in (1, 2):
            reply = await client.run(canvas(24, 16, seed), params)
            assert isinstance(reply.final, Result), reply.messages
        live = await client.run(canvas(24, 16, 3), params, live=True)
        assert isinstance(live.final, Result), live.messages
        missing = await client.run(canvas(8, 8), JobParams(checkpoint="no-such-model.safetensors"))
        assert isinstance(missing.final, Error), missing.messages
        await client.socket.send(encode_message(job_json_only("never-sent", tiny_models.checkpoint)))
        await client.cancel("never-sent")
        cancelled = await client.wait_for(["never-sent"])
        assert isinstance(cancelled["never-sent"].final, Cancelled)
        during = await asyncio.to_thread(scrape, server.port)
        assert sample(during, "kld_connected_clients") == 1
        await client.close()
        return missing.final.code

    with running_server(tiny_models.root, model_config_dir=tiny_models.config_dir) as server:
        assert wait_until_loaded(server.port)[0] == 200
        error_code = run(scenario(server), timeout=120)
        samples = scrape(server.port)
    assert sample(samples, "kld_jobs_total", outcome="result", code="") == 3
    assert sample(samples, "kld_jobs_total", outcome="error", code=error_code) == 1
    assert sample(samples, "kld_jobs_total", outcome="cancelled", code="cancelled") == 1
    assert sample(samples, "kld_frame_latency_seconds_count") == 1
    assert sample(samples, "kld_job_latency_seconds_count") == 2  # refused and cancelled jobs never ran
    assert 0 < sample(samples, "kld_job_latency_seconds_sum") < 120
    assert sample(samples, "kld_frame_latency_seconds_bucket", le="+Inf") == 1
    assert sample(samples, "kld_worker_state", state="ready") == 1
    assert sample(samples, "kld_worker_state", state="loading") == 0
    assert sample(samples, "kld_queue_depth", kind="live") == 0
    assert sample(samples, "process_resident_memory_bytes") > 0
    # A CPU worker has no device memory to report.
    assert not any(name == "kld_device_memory_bytes" for name, _ in samples)


def test_metrics_show_queue_depth_per_kind_and_each_server_keeps_its_own(tiny_models: TinyModels) -> None:
    params = JobParams(checkpoint=tiny_models.checkpoint)

    async def scenario(server: RunningServer, other: RunningServer) -> None:
        first, second = await Client.connect(server.url), await Client.connect(server.url)
        engine: HeldWorker = engine_of(server)
        held = await first.send_job(canvas(8, 8), params)
        await asyncio.to_thread(engine.started.wait, 30)
        queued_final = await first.send_job(canvas(8, 8, 1), params)
        queued_live = await second.send_job(canvas(8, 8, 2), params, live=True)
        deadline = time.monotonic() + 30
        while sum(server.call(server.server.scheduler.queued_by_kind).values()) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        now = await asyncio.to_thread(scrape, server.port)
        assert sample(now, "kld_queue_depth", kind="final") == 1
        assert sample(now, "kld_queue_depth", kind="live") == 1
        assert sample(now, "kld_running_jobs", kind="final") == 1
        assert sample(now, "kld_running_jobs", kind="live") == 0
        assert sample(now, "kld_connected_clients") == 2
        elsewhere = await asyncio.to_thread(scrape, other.port)
        assert sample(elsewhere, "kld_connected_clients") == 0
        assert sample(elsewhere, "kld_queue_depth", kind="final") == 0
        engine.release.set()
        replies = await first.wait_for([held, queued_final])
        replies.update(await second.wait_for([queued_live]))
        assert all(isinstance(reply.final, Result) for reply in replies.values())
        live_image = replies[queued_live].image
        assert live_image is not None and np.array_equal(live_image, canvas(8, 8, 2))  # its own canvas back
        await first.close()
        await second.close()

    with (
        running_server(tiny_models.root, engine_factory=HeldWorker, preload=False) as server,
        running_server(tiny_models.root, preload=False) as other,
    ):
        assert wait_until_loaded(server.port)[0] == 200
        run(scenario(server, other), timeout=120)
        after = scrape(server.port)
        untouched = scrape(other.port)
    assert sample(after, "kld_jobs_total", outcome="result", code="") == 3
    assert sample(after, "kld_queue_depth", kind="final") == 0
    assert not any(name == "kld_jobs_total" for name, _ in untouched)
