"""Live waits for Krita to finish rendering the stroke that just ended without blocking Krita's UI thread:
the check is repeated from the event loop until the image is idle, then the canvas is sent once."""

from __future__ import annotations

import time

from krita_plugin import idle_wait
from tests.plugin.test_controller import paint, result_for, setup  # noqa: F401 - the fixture


def run_events(qapp, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        qapp.processEvents()
        time.sleep(0.002)


def test_a_busy_krita_is_asked_again_and_the_canvas_sent_once_idle(setup, qapp) -> None:  # noqa: F811
    controller, network, doc, panel, _ = setup
    panel.set_live(True)
    controller.check_live()
    controller.handle_event(result_for(network.jobs()[0]))
    paint(doc)
    doc.busy_checks = 5  # Krita still renders the stroke for five more looks
    controller.check_live()
    controller.check_live()  # a second poke meanwhile starts no second wait
    assert len(network.jobs()) == 1 and controller.idle.pending
    run_events(qapp, 0.3)
    assert len(network.jobs()) == 2 and not controller.idle.pending
    assert not doc.locked  # the idle check never leaves the image locked
    assert doc.busy_checks == 0


def test_a_krita_busy_for_long_is_waited_for_and_the_stroke_still_sent(
    setup,  # noqa: F811
    qapp,
    monkeypatch,
) -> None:
    controller, network, doc, panel, _ = setup
    monkeypatch.setattr(idle_wait, "FAST_RETRIES", 3)
    panel.set_live(True)
    controller.check_live()
    controller.handle_event(result_for(network.jobs()[0]))
    paint(doc)
    doc.busy_checks = 1000  # busy for longer than the quick looks: then it waits for Krita (waitForDone)
    controller.check_live()
    run_events(qapp, 0.2)
    assert len(network.jobs()) == 2 and not controller.idle.pending  # the stroke went all the same
    assert doc.busy_checks == 0 and not doc.locked
