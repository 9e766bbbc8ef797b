"""Fairness by user, not by connection: one user's many connections don't crowd out another user's one.

Real server, engine and tiny models over real WebSockets; client addresses tell users apart (127.0.0.2 is a
second loopback address). The engine is wrapped only to hold the worker until every job is queued and to
record the order jobs run in: what is asserted is that order, never a timing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from backend.engine import EngineJob, EngineResult
from backend.engine_worker import EngineWorker
from backend.turns import FairTurns
from tests.backend.hardening_client import RawClient
from tests.backend.server_harness import RunningServer, run, running_server
from tests.fixtures.tiny_models import TinyModels

pytestmark = pytest.mark.slow

FLOODERS = 6
JOBS_EACH = 3


class OrderHost(EngineWorker):
    """The real engine; a job with the prompt "hold" waits at the gate; every job's prompt is recorded."""

    gate = threading.Event()
    order: list[str] = []

    def run(
        self, job: EngineJob, on_progress: Callable[[int, int], None], is_cancelled: Callable[[], bool]
    ) -> EngineResult:
        if job.params.prompt == "hold":
            self.gate.wait(60)
        OrderHost.order.append(job.params.prompt)
        return super().run(job, on_progress, is_cancelled)


async def accepted(client: RawClient, count: int) -> None:
    while len(client.messages("accepted")) < count:
        item = await client.receive(timeout=60)
        assert not (isinstance(item, dict) and item.get("type") == "error"), item


def test_a_user_with_many_connections_does_not_crowd_out_a_user_with_one(tiny_models: TinyModels) -> None:
    def params(prompt: str) -> dict[str, object]:
        return {"checkpoint": tiny_models.checkpoint, "prompt": prompt, "steps": 1, "strength": 0.5}

    async def scenario(server: RunningServer) -> None:
        holder = await RawClient.connect(server.url, from_address="127.0.0.3")
        await holder.send_job("hold", params=params("hold"))
        await accepted(holder, 1)
        while server.call(lambda: server.server.scheduler.running) is None:  # the worker is held
            await holder.quiet(0.05)

        flooders = [await RawClient.connect(server.url, from_address="127.0.0.1") for _ in range(FLOODERS)]
        for f, flooder in enumerate(flooders):
            for j in range(JOBS_EACH):
                await flooder.send_job(f"f{j}", params=params(f"flood-{f}-{j}"))
            await accepted(flooder, JOBS_EACH)
        lone = await RawClient.connect(server.url, from_address="127.0.0.2")
        for j in range(JOBS_EACH):
            await lone.send_job(f"l{j}", params=params(f"lone-{j}"))
        await accepted(lone, JOBS_EACH)

        OrderHost.gate.set()
        await lone.until_ended({f"l{j}" for j in range(JOBS_EACH)})
        for flooder in flooders:
            await flooder.until_ended({f"f{j}" for j in range(JOBS_EACH)})
        for client in (holder, lone, *flooders):
            assert not [m for m in client.messages() if m["type"] in ("error", "cancelled")], client.received
            await client.close()

    OrderHost.order = []
    OrderHost.gate.clear()
    try:
        with running_server(
            tiny_models.root, engine_factory=OrderHost, model_config_dir=tiny_models.config_dir
        ) as server:
            run(scenario(server))
    finally:
        OrderHost.gate.set()

    order = OrderHost.order[1:]  # after the held job
    assert OrderHost.order[0] == "hold" and len(order) == (FLOODERS + 1) * JOBS_EACH, OrderHost.order
    lone_at = [i for i, prompt in enumerate(order) if prompt.startswith("lone-")]
    # Two users with work: turns alternate, so at most one flooding job runs before each of the lone
    # client's jobs (round-robin by connection ran six: one per flooding connection).
    assert lone_at == [1, 3, 5], order
    # Within the flooding user, its connections take turns: its first six jobs come from six connections.
    first_floods = [prompt.split("-")[1] for prompt in order if prompt.startswith("flood-")][:FLOODERS]
    assert sorted(first_floods) == [str(f) for f in range(FLOODERS)], order


def test_turns_go_round_users_then_their_connections_and_skip_the_gone() -> None:
    turns = FairTurns()
    queued = {1: 3, 2: 3, 3: 3, 4: 3}  # connections 1-3 are user "a"'s, 4 is "b"'s
    user = {1: "a", 2: "a", 3: "a", 4: "b"}
    for client in queued:
        turns.waiting(user[client], client)
    turns.waiting("a", 1)  # idempotent: no second turn
    order = []
    while (client := turns.take(lambda c: queued.get(c, 0) > 0)) is not None:
        order.append(client)
        queued[client] -= 1
        if client == 2:
            del queued[2]  # connection 2 went away with jobs queued: skipped from now on
        elif queued[client]:
            turns.waiting(user[client], client)
    assert order == [1, 4, 2, 4, 3, 4, 1, 3, 1, 3]
