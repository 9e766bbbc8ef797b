"""A server that refuses work as `busy` with a `retry_after` hint (backend/user_limits.py, a full queue): live
mode resends the refused frame after the hint, never before it, by itself, and says so in the status line; a
Generate refused as busy is not resent, and its message says how long to wait.

The real controller and panel over the fake Krita, with a fake network and a fake clock (no waiting).
"""

from __future__ import annotations

from krita_plugin._compat import protocol
from krita_plugin.live_state import LiveState
from krita_plugin.network import ServerMessage
from tests.plugin.test_controller import Clock, result_for, setup  # noqa: F401 - `setup` is a fixture

BUSY_TEXT = "You have 16 jobs waiting for the worker."


def test_a_live_frame_refused_as_busy_goes_again_after_the_hint_not_before(setup) -> None:  # noqa: F811
    controller, network, _, panel, clock = setup
    panel.set_live(True)
    controller.check_live()
    first = network.jobs()[0]
    controller.handle_event(ServerMessage(protocol.Error("busy", BUSY_TEXT, first.job_id, retry_after=5.0)))
    assert panel.status.property("plain") == "Server busy — trying again in 5 s"
    assert panel.status.property("state") == "busy"

    clock.now += 3  # before the hint: neither a stroke nor the timer sends it
    controller.check_live()
    controller.slow_tick()
    assert len(network.jobs()) == 1
    assert panel.status.property("plain") == "Server busy — trying again in 2 s"  # counting down

    clock.now += 2.5  # past the hint: the timer resends the same canvas though the painter is idle
    controller.slow_tick()
    assert len(network.jobs()) == 2
    again = network.jobs()[1]
    assert again.job_id != first.job_id and again.live
    assert network.frames(again)["canvas"].payload == network.frames(first)["canvas"].payload
    assert "busy" not in panel.status.property("plain")  # the line is back to the connection's state

    controller.handle_event(result_for(again))
    clock.now += 10
    controller.slow_tick()
    assert len(network.jobs()) == 2  # served: nothing more is resent until the canvas changes


def test_turning_live_off_during_the_wait_ends_the_busy_status_and_the_resend(setup) -> None:  # noqa: F811
    controller, network, _, panel, clock = setup
    panel.set_live(True)
    controller.check_live()
    job = network.jobs()[0]
    controller.handle_event(ServerMessage(protocol.Error("busy", BUSY_TEXT, job.job_id, retry_after=5.0)))
    assert panel.status.property("plain").startswith("Server busy")
    panel.set_live(False)
    controller.slow_tick()
    assert panel.status.property("state") == "ok" and not panel.status.property("plain").startswith("Server")
    clock.now += 10
    controller.slow_tick()
    assert len(network.jobs()) == 1


def test_a_busy_live_frame_without_a_hint_waits_the_old_short_pause(setup) -> None:  # noqa: F811
    controller, network, _, panel, clock = setup
    panel.set_live(True)
    controller.check_live()
    controller.handle_event(ServerMessage(protocol.Error("busy", "Queue full.", network.jobs()[0].job_id)))
    clock.now += 1
    controller.slow_tick()
    assert len(network.jobs()) == 1
    clock.now += 1.5
    controller.slow_tick()
    assert len(network.jobs()) == 2


def test_a_generate_refused_as_busy_shows_the_wait_and_is_not_resent(setup) -> None:  # noqa: F811
    controller, network, _, panel, clock = setup
    controller.on_generate()
    job = network.jobs()[0]
    controller.handle_event(ServerMessage(protocol.Error("busy", BUSY_TEXT, job.job_id, retry_after=12.2)))
    assert panel.message.property("plain") == f"Server busy — try again in 13 s. {BUSY_TEXT}"
    assert not controller.tracker.busy  # the job is over: Generate can be pressed again
    clock.now += 60
    controller.slow_tick()
    assert len(network.jobs()) == 1  # the painter decides when to generate again
    assert not panel.status.property("plain").startswith("Server busy")


def test_live_state_holds_a_refused_frame_until_its_wait_is_over() -> None:
    clock = Clock()
    live = LiveState(clock=clock)
    live.sent("a", "canvas-1")
    assert live.retry_in() is None  # nothing refused
    live.ended("a", retry_in=4.0, reason="busy")
    assert live.retry_in() == 4.0 and live.retry_reason == "busy"
    assert not live.should_send("canvas-1")
    clock.now += 4.0
    assert live.retry_in() == 0.0 and live.should_send("canvas-1")
    live.sent("b", "canvas-1")
    assert live.retry_in() is None  # sent again: nothing waits any more
    live.ended("b", retry_in=1.0, reason="busy")
    live.reset()
    assert live.retry_in() is None
