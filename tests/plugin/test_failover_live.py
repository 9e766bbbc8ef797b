"""Live mode through a failover (issue 15): when the connection is lost or the backend goes away and the
plugin reconnects (to another worker, behind a balancer), the current canvas is sent again by itself, with no
stroke or click; and the status line names the worker serving."""

from __future__ import annotations

from dataclasses import replace

from krita_plugin.network import Connected, Status, StatusChanged
from tests.plugin.test_controller import WELCOME, paint, result_for, started


def reconnect(controller, network, served_by: str) -> None:
    network.connected = True
    controller.handle_event(StatusChanged(Status.CONNECTING, "Connecting to ws://127.0.0.1:9631…"))
    controller.handle_event(Connected(WELCOME, served_by))
    controller.handle_event(StatusChanged(Status.CONNECTED, "Connected."))


def lose(controller, network, message: str, retry_in: float) -> None:
    network.connected = False
    controller.handle_event(StatusChanged(Status.WAITING, message, retry_in))


def test_the_live_frame_is_resent_after_a_failover_without_a_click(qapp, krita_app) -> None:
    controller, network, doc, panel, _ = started(krita_app)
    try:
        panel.set_live(True)
        controller.check_live()
        qapp.processEvents()  # what turning live on posted has run: nothing is pending
        first = network.jobs()[0]
        lose(controller, network, "The backend is shutting down; reconnecting…", 0.2)
        assert panel.status.property("state") == "bad" and "0 s" not in panel.status.text()
        assert not controller.tracker.busy  # the lost job will never answer: nothing waits for it
        reconnect(controller, network, "gpu1")
        assert len(network.jobs()) == 1  # sent from the event loop's next turn, not from inside the event
        qapp.processEvents()
        assert len(network.jobs()) == 2, "the current canvas goes again without a stroke"
        again = network.jobs()[1]
        assert again.live and again.job_id != first.job_id
        assert network.frames(again)["canvas"].payload == network.frames(first)["canvas"].payload
        assert "gpu1" in panel.status.text() and panel.status.property("state") == "ok"
        # Its result is shown as usual, and live goes on from there: a stroke sends, no stroke doesn't.
        controller.handle_event(result_for(again))
        assert controller.stats["results"] == 1
        qapp.processEvents()
        controller.check_live()
        assert len(network.jobs()) == 2
        paint(doc)
        controller.check_live()
        assert len(network.jobs()) == 3
    finally:
        controller.shutdown()


def test_a_result_of_the_lost_connection_is_never_shown(qapp, krita_app) -> None:
    """A job sent before the failover can't answer on the new connection; if anything with its id comes, it
    is stale. The resent frame is the one that counts."""
    controller, network, _, panel, _ = started(krita_app)
    try:
        panel.set_live(True)
        controller.check_live()
        qapp.processEvents()
        lost = network.jobs()[0]
        lose(controller, network, "The backend closed the connection (it may be restarting).", 0.5)
        reconnect(controller, network, "gpu0")
        qapp.processEvents()
        resent = network.jobs()[1]
        controller.handle_event(result_for(lost))
        assert controller.stats["stale"] == 1 and controller.stats["results"] == 0
        controller.handle_event(result_for(resent))
        assert controller.stats["results"] == 1
    finally:
        controller.shutdown()


def test_live_off_sends_nothing_on_reconnect(qapp, krita_app) -> None:
    controller, network, _, _, _ = started(krita_app)
    try:
        lose(controller, network, "Lost the backend.", 0.5)
        reconnect(controller, network, "gpu0")
        qapp.processEvents()
        assert network.jobs() == []
    finally:
        controller.shutdown()


def test_the_status_line_names_the_worker_and_the_device(qapp, krita_app) -> None:
    controller, network, _, panel, _ = started(krita_app)
    try:
        lose(controller, network, "Lost the backend.", 0.5)
        network.connected = True
        controller.handle_event(Connected(replace(WELCOME, device="cuda:1 (float16)"), "gpu1"))
        controller.handle_event(StatusChanged(Status.CONNECTED, "Connected."))
        assert panel.status.property("plain") == "Ready (gpu1 · cuda:1 (float16))"
        # Connected directly (no balancer naming a worker): the device alone, as before.
        controller.handle_event(Connected(replace(WELCOME, device="cpu"), ""))
        controller.handle_event(StatusChanged(Status.CONNECTED, "Connected."))
        assert panel.status.property("plain") == "Ready (cpu)"
    finally:
        controller.shutdown()
