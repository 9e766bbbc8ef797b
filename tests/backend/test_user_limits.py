"""Per-user limits (backend/user_limits.py): queued final jobs per user across all its connections, images per
minute per user, and `busy` errors that say when to try again (`retry_after`).

The accounting alone first, with a fake clock; then the real server, engine and tiny models over real
WebSockets, users told apart by access tokens. The engine is wrapped only to hold the worker at named prompts
and to record the order jobs run in: what is asserted is that order and the replies, never a timing. The
per-minute budget runs on a clock the test moves (nobody sleeps for a minute).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from backend.engine import EngineJob, EngineResult
from backend.engine_worker import EngineWorker
from backend.user_limits import MAX_QUEUE_WAIT_S, UserLimits, UserLimitSettings, WorkPace
from protocol import Limits
from tests.backend.hardening_client import RawClient
from tests.backend.server_harness import RunningServer, run, running_server
from tests.fixtures.tiny_models import TinyModels

TOKENS = ("alice-secret", "bob-secret", "carol-secret")


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


# --- the accounting alone ----------------------------------------------------------------------------------


def test_queued_jobs_are_capped_per_user_and_live_frames_always_pass() -> None:
    limits = UserLimits(UserLimitSettings(max_queued_jobs=3))
    assert limits.check("token:0", live=False, images=1, queued=2) is None
    refusal = limits.check("token:0", live=False, images=1, queued=3, waiting_users=2)
    assert refusal is not None and "3 jobs waiting" in refusal.message
    assert refusal.retry_after >= 1.0
    # A live painter is never refused by these limits, however full their queue.
    assert limits.check("token:0", live=True, images=1, queued=99) is None


def test_images_per_minute_count_each_image_and_say_exactly_when_they_fit_again() -> None:
    clock = FakeClock()
    limits = UserLimits(UserLimitSettings(images_per_minute=10), clock=clock)
    limits.charge("a", 4, live=False)  # a batch of 4 counts 4
    clock.now += 20
    limits.charge("a", 4, live=False)
    limits.charge("a", 1, live=True)  # live frames are not counted
    assert limits.spent("a") == 8
    assert limits.check("a", live=False, images=2, queued=0) is None  # 8 + 2 = 10: just fits
    refusal = limits.check("a", live=False, images=4, queued=0)
    # 8 + 4 is 2 over: the first batch (4 images, asked for 20 s ago) ages out in 40 s.
    assert refusal is not None and refusal.retry_after == pytest.approx(40.0)
    assert "fit again in 40 s" in refusal.message
    assert limits.check("b", live=False, images=4, queued=0) is None  # another user is unaffected
    clock.now += refusal.retry_after
    assert limits.check("a", live=False, images=4, queued=0) is None
    assert limits.spent("a") == 4


def test_a_job_larger_than_the_whole_budget_waits_for_an_empty_window_not_forever() -> None:
    clock = FakeClock()
    limits = UserLimits(UserLimitSettings(images_per_minute=4), clock=clock)
    assert limits.check("a", live=False, images=8, queued=0) is None  # nothing else in the window
    limits.charge("a", 8, live=False)
    clock.now += 15
    refusal = limits.check("a", live=False, images=8, queued=0)
    assert refusal is not None and refusal.retry_after == pytest.approx(45.0)
    clock.now += 45
    assert limits.check("a", live=False, images=8, queued=0) is None


def test_users_whose_images_aged_out_take_no_memory() -> None:
    clock = FakeClock()
    limits = UserLimits(UserLimitSettings(images_per_minute=10), clock=clock)
    for address in range(100):
        limits.charge(f"address:10.0.0.{address}", 1, live=False)
    clock.now += 61
    limits.charge("address:10.0.1.1", 1, live=False)  # a new user sweeps the quiet ones out
    assert limits.spent("address:10.0.0.5") == 0
    assert limits.users_tracked == 1


def test_the_queue_wait_hint_follows_the_jobs_timed_and_the_users_waiting() -> None:
    pace = WorkPace()
    assert pace.wait_hint() == 2.0  # nothing timed yet
    pace.ran(3.0)
    assert pace.wait_hint(1) == 3.0 and pace.wait_hint(4) == 12.0
    pace.ran(float("nan"))  # a job without a time changes nothing
    assert pace.typical_s == 3.0
    pace.ran(0.01)
    assert pace.wait_hint(1) == 3.0  # an exponential average: one quick job moves it a little (2.4 s, up)
    assert pace.wait_hint(1000) == MAX_QUEUE_WAIT_S  # a hint never reads as "never"


# --- through the server ------------------------------------------------------------------------------------


class GateHost(EngineWorker):
    """The real engine; a job whose prompt has a gate waits at it; every job's prompt is recorded in order."""

    gates: dict[str, threading.Event] = {}
    order: list[str] = []

    def run(
        self, job: EngineJob, on_progress: Callable[[int, int], None], is_cancelled: Callable[[], bool]
    ) -> EngineResult:
        gate = GateHost.gates.get(job.params.prompt)
        if gate is not None:
            gate.wait(60)
        GateHost.order.append(job.params.prompt)
        return super().run(job, on_progress, is_cancelled)


def bearer(token: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


async def reply_to(client: RawClient, job_id: str) -> dict[str, Any]:
    """The first `accepted` or terminal message for `job_id`."""
    while True:
        item = await client.receive(timeout=60)
        if isinstance(item, dict) and item.get("job_id") == job_id and item["type"] != "progress":
            return item


async def hold_worker(server: RunningServer, holder: RawClient, params: dict[str, object]) -> None:
    await holder.send_job("hold", params=params)
    assert (await reply_to(holder, "hold"))["type"] == "accepted"
    while running_job(server) != "hold":
        await holder.quiet(0.05)


def running_job(server: RunningServer) -> str | None:
    running = server.call(lambda: server.server.scheduler.running)
    return running.job_id if running is not None else None


def gated_server(tiny_models: TinyModels, gates: tuple[str, ...], **overrides: Any) -> Any:
    GateHost.order = []
    GateHost.gates = {name: threading.Event() for name in gates}
    return running_server(
        tiny_models.root,
        engine_factory=GateHost,
        model_config_dir=tiny_models.config_dir,
        token=TOKENS[0],
        more_tokens=TOKENS[1:],
        **overrides,
    )


def open_all_gates() -> None:
    for gate in GateHost.gates.values():
        gate.set()


@pytest.mark.slow
def test_two_connections_of_one_token_share_the_queued_jobs_cap_and_another_user_is_unaffected(
    tiny_models: TinyModels,
) -> None:
    def params(prompt: str) -> dict[str, object]:
        return {"checkpoint": tiny_models.checkpoint, "prompt": prompt, "steps": 1, "strength": 0.5}

    async def scenario(server: RunningServer) -> None:
        holder = await RawClient.connect(server.url, **bearer("carol-secret"))
        await hold_worker(server, holder, params("hold"))  # running: not counted as queued for Carol

        first = await RawClient.connect(server.url, **bearer("alice-secret"))
        second = await RawClient.connect(server.url, **bearer("alice-secret"))
        for job_id in ("a1", "a2"):
            await first.send_job(job_id, params=params(job_id))
            assert (await reply_to(first, job_id))["type"] == "accepted"
        await second.send_job("a3", params=params("a3"))
        assert (await reply_to(second, "a3"))["type"] == "accepted"
        # Alice's fourth queued job, on either connection, is over her cap of 3.
        await second.send_job("a4", params=params("a4"))
        refused = await reply_to(second, "a4")
        assert refused["type"] == "error" and refused["code"] == "busy", refused
        assert "3 jobs waiting" in refused["message"]
        assert isinstance(refused["retry_after"], (int, float)) and refused["retry_after"] >= 1
        # A live frame of hers still goes: live frames are bounded by supersession, never by this cap.
        await first.send_job("live", params=params("alice-live"), live=True)
        assert (await reply_to(first, "live"))["type"] == "accepted"

        bob = await RawClient.connect(server.url, **bearer("bob-secret"))
        for job_id in ("b1", "b2", "b3"):
            await bob.send_job(job_id, params=params(job_id))
            assert (await reply_to(bob, job_id))["type"] == "accepted"  # his own cap, untouched by hers

        open_all_gates()
        await first.until_ended({"a1", "a2", "live"})
        await second.until_ended({"a3"})
        await bob.until_ended({"b1", "b2", "b3"})
        await holder.until_ended({"hold"})
        for client, job_ids in ((first, ("a1", "a2", "live")), (second, ("a3",)), (bob, ("b1", "b2", "b3"))):
            assert [client.ends_of(job_id)[0]["type"] for job_id in job_ids] == ["result"] * len(job_ids)
        # Once the queue drained, Alice may queue again.
        await second.send_job("a5", params=params("a5"))
        assert (await reply_to(second, "a5"))["type"] == "accepted"
        await second.until_ended({"a5"})
        for client in (holder, first, second, bob):
            await client.close()

    try:
        with gated_server(tiny_models, ("hold",), user_limits=UserLimitSettings(max_queued_jobs=3)) as server:
            run(scenario(server))
    finally:
        open_all_gates()
    assert "a4" not in GateHost.order


@pytest.mark.slow
def test_images_per_minute_refusal_says_when_and_a_job_after_that_wait_is_accepted(
    tiny_models: TinyModels,
) -> None:
    clock = FakeClock()

    def params(prompt: str, batch: int = 1) -> dict[str, object]:
        return {
            "checkpoint": tiny_models.checkpoint,
            "prompt": prompt,
            "steps": 1,
            "strength": 0.5,
            "batch": batch,
        }

    async def scenario(server: RunningServer) -> None:
        def on_the_test_clock() -> None:
            server.server.user_limits = UserLimits(server.server.config.user_limits, clock=clock)

        server.call(on_the_test_clock)
        alice = await RawClient.connect(server.url, **bearer("alice-secret"))
        other = await RawClient.connect(server.url, **bearer("alice-secret"))  # her second connection
        await alice.send_job("g1", params=params("g1", batch=3))  # 3 of her 4 images this minute
        await alice.until_ended({"g1"})
        assert alice.ends_of("g1")[0]["count"] == 3
        clock.now += 10
        await other.send_job("g2", params=params("g2", batch=2))  # 3 + 2 > 4, from another connection
        refused = await reply_to(other, "g2")
        assert refused["type"] == "error" and refused["code"] == "busy", refused
        assert refused["retry_after"] == pytest.approx(50.0)  # g1's images age out 60 s after it was queued
        # Live frames neither count nor are refused.
        await other.send_job("live", params=params("alice-live"), live=True)
        await other.until_ended({"live"})
        assert other.ends_of("live")[0]["type"] == "result"
        # Bob has his own budget.
        bob = await RawClient.connect(server.url, **bearer("bob-secret"))
        await bob.send_job("b1", params=params("b1", batch=4))
        await bob.until_ended({"b1"})
        assert bob.ends_of("b1")[0]["type"] == "result"

        clock.now += refused["retry_after"]  # the wait the server asked for, on its clock
        await other.send_job("g2-again", params=params("g2", batch=2))
        await other.until_ended({"g2-again"})
        assert other.ends_of("g2-again")[0]["type"] == "result"
        for client in (alice, other, bob):
            await client.close()

    with gated_server(tiny_models, (), user_limits=UserLimitSettings(images_per_minute=4)) as server:
        run(scenario(server))


@pytest.mark.slow
def test_a_live_painter_is_served_in_turn_while_another_user_has_the_most_jobs_queued(
    tiny_models: TinyModels,
) -> None:
    def params(prompt: str) -> dict[str, object]:
        return {"checkpoint": tiny_models.checkpoint, "prompt": prompt, "steps": 1, "strength": 0.5}

    async def scenario(server: RunningServer) -> None:
        holder = await RawClient.connect(server.url, **bearer("carol-secret"))
        await hold_worker(server, holder, params("hold"))

        noisy = await RawClient.connect(server.url, **bearer("alice-secret"))
        for index in range(4):
            await noisy.send_job(f"n{index}", params=params(f"noisy-{index}"))
            assert (await reply_to(noisy, f"n{index}"))["type"] == "accepted"
        await noisy.send_job("n4", params=params("noisy-4"))
        refused = await reply_to(noisy, "n4")  # her maximum is queued: the fifth is refused, not queued
        assert refused["code"] == "busy" and refused["retry_after"] >= 1, refused

        painter = await RawClient.connect(server.url, **bearer("bob-secret"))
        await painter.send_job("f1", params=params("frame-1"), live=True)
        assert (await reply_to(painter, "f1"))["type"] == "accepted"

        GateHost.gates["hold"].set()
        # The worker now runs noisy-0, frame-1, then noisy-1, which waits at its gate: the painter sends
        # the next frame meanwhile, as a painter does once the last one came back.
        await painter.until_ended({"f1"})
        while running_job(server) != "n1":
            await painter.quiet(0.05)
        await painter.send_job("f2", params=params("frame-2"), live=True)
        assert (await reply_to(painter, "f2"))["type"] == "accepted"
        GateHost.gates["noisy-1"].set()
        await painter.until_ended({"f2"})
        await noisy.until_ended({f"n{index}" for index in range(4)})
        await holder.until_ended({"hold"})
        for client in (painter, noisy):
            assert not [m for m in client.messages() if m["type"] == "cancelled"], client.received
        for client in (holder, noisy, painter):
            await client.close()

    try:
        with gated_server(
            tiny_models, ("hold", "noisy-1"), user_limits=UserLimitSettings(max_queued_jobs=4)
        ) as server:
            run(scenario(server))
    finally:
        open_all_gates()
    # Each frame waits for at most one of the noisy user's jobs (one round of turns), however many she queued.
    assert GateHost.order == ["hold", "noisy-0", "frame-1", "noisy-1", "noisy-2", "frame-2", "noisy-3"]


@pytest.mark.slow
def test_a_full_connection_queue_and_full_image_memory_are_busy_with_a_retry_after(
    tiny_models: TinyModels,
) -> None:
    def params(prompt: str) -> dict[str, object]:
        return {"checkpoint": tiny_models.checkpoint, "prompt": prompt, "steps": 1, "strength": 0.5}

    job_bytes = 16 * 16 * 4  # each job here: one 16x16 RGBA canvas

    async def scenario(server: RunningServer) -> None:
        holder = await RawClient.connect(server.url, **bearer("carol-secret"))
        await hold_worker(server, holder, params("hold"))
        alice = await RawClient.connect(server.url, **bearer("alice-secret"))
        for index in range(8):  # the scheduler's cap per connection
            await alice.send_job(f"a{index}", params=params(f"a{index}"))
            assert (await reply_to(alice, f"a{index}"))["type"] == "accepted"
        await alice.send_job("a8", params=params("a8"))
        full = await reply_to(alice, "a8")
        assert full["code"] == "busy" and "Too many jobs waiting" in full["message"], full
        assert full["retry_after"] >= 1

        bob = await RawClient.connect(server.url, **bearer("bob-secret"))
        for index in range(3):  # 1 + 8 + 3 jobs' images: the server's whole budget
            await bob.send_job(f"b{index}", params=params(f"b{index}"))
            assert (await reply_to(bob, f"b{index}"))["type"] == "accepted"
        await bob.send_job("b3", params=params("b3"))
        memory = await reply_to(bob, "b3")
        assert memory["code"] == "busy" and "queued images" in memory["message"], memory
        assert memory["retry_after"] >= 1

        open_all_gates()
        await alice.until_ended({f"a{index}" for index in range(8)})
        await bob.until_ended({f"b{index}" for index in range(3)})
        for client in (holder, alice, bob):
            await client.close()

    limits = Limits(max_queued_image_bytes=10 * job_bytes, max_total_queued_image_bytes=12 * job_bytes)
    try:
        with gated_server(tiny_models, ("hold",), limits=limits) as server:
            run(scenario(server))
    finally:
        open_all_gates()


def test_the_command_line_sets_the_limits_and_the_defaults_leave_one_painter_alone() -> None:
    from backend.cli import build_parser, config_from_args

    given = ["--max-queued-jobs-per-user", "4", "--images-per-minute-per-user", "30"]
    config = config_from_args(build_parser().parse_args(given))
    assert config.user_limits == UserLimitSettings(max_queued_jobs=4, images_per_minute=30)
    defaults = config_from_args(build_parser().parse_args([])).user_limits
    # A painter has one connection, which queues at most 8 jobs (the scheduler's cap per connection), and
    # Generate with a batch of 8 every 5 s is 96 images a minute: neither default is reached by one painter.
    assert defaults.max_queued_jobs >= 16 and defaults.images_per_minute >= 96
