"""Regression tests for plugin bugs found in review."""

from __future__ import annotations

import asyncio
import importlib
import json
import queue
import random
import threading
import time
from typing import Any

import pytest

from krita_plugin._compat import protocol
from krita_plugin.backoff import Backoff
from krita_plugin.capture import image_without
from krita_plugin.controller import Controller
from krita_plugin.network import Connected, NetworkClient
from krita_plugin.nodes import node_id
from krita_plugin.persistence import SETTINGS_GROUP
from krita_plugin.settings import MAX_SEED, ConnectionSettings
from tests.plugin.fake_krita import Document
from tests.plugin.test_controller import FakeNetwork

RED = b"\x00\x00\xff\xff"
BLUE = b"\xff\x00\x00\xff"
GREEN = b"\x00\xff\x00\xff"


def test_backoff_keeps_its_pace_after_hours_of_failed_attempts() -> None:
    # With the backend off, the network thread retries every ~10 s: 1024 attempts is under three hours.
    # 2.0 ** 1024 overflows a float; the exception killed the network thread and auto-reconnect with it.
    backoff = Backoff(rng=random.Random(1))
    for _ in range(1100):
        delay = backoff.next_delay()
    assert 0 < delay <= backoff.maximum * (1 + backoff.jitter)


@pytest.mark.parametrize(
    "saved",
    [
        '{"seed": -1099511627776}',
        '{"seed": 1099511627776}',
        '{"steps": 1000000000000}',
        '{"strength": NaN}',
        '{"strength": 1e308}',
        '{"cfg": Infinity, "lora_strength": -Infinity}',
    ],
)
def test_odd_saved_settings_do_not_stop_the_plugin_from_starting(krita_app, saved: str) -> None:
    from krita_plugin.panel import Panel

    krita_app.writeSetting(SETTINGS_GROUP, "generation", saved)
    panel = Panel()
    controller = Controller(panel, krita_app, network_factory=FakeNetwork)
    try:
        controller.start()
        assert controller.network.started  # the connection was started...
        assert all(timer.isActive() for timer in controller._timers)  # ...and live mode's timers run
        settings = panel.settings()
        assert 0 <= settings.seed <= MAX_SEED and 1 <= settings.steps <= 50
        assert 0.0 <= settings.strength <= 1.0
        json.loads(settings.to_json())  # what is saved next time is plain JSON again
    finally:
        controller.shutdown()


def test_a_scribble_layer_inside_a_group_is_left_out_of_the_image(qapp) -> None:
    doc = Document(6, 4)
    group = doc.createNode("sketches", "grouplayer")
    doc.rootNode().addChildNode(group, None)
    lines = doc.createNode("lines", "paintlayer")
    lines.setPixelData(RED * 24, 0, 0, 6, 4)
    group.addChildNode(lines, None)
    white = b"\xff" * (6 * 4 * 4)
    assert doc.pixelData(0, 0, 6, 4) != white
    assert image_without(doc, {node_id(lines)}) == white  # the scribble guides; it is not painted in
    assert lines.visible()  # shown again afterwards


def test_closing_a_window_stops_its_dockers_connection(krita_app) -> None:
    from krita_plugin import safe
    from krita_plugin.panel import Panel
    from krita_plugin.qt import BINDING, QObject

    sip = importlib.import_module(f"{BINDING}.sip")

    window = QObject()  # Krita deletes a window's dockers (and their controllers) when the window closes
    controller = Controller(Panel(), krita_app, network_factory=FakeNetwork, parent=window)
    network = controller.network
    controller.start()
    sink = controller._show_bug
    sip.delete(window)
    assert network.stopped  # no network thread reconnecting forever for a docker that is gone
    assert sink not in safe._sinks


class SlowGreetings:
    """Backends that answer the plugin's hello only once `greet` is set; records every address dialled."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.greet = threading.Event()

    def __call__(self, url: str, headers: dict[str, str], max_size: int, open_timeout: float) -> Any:
        self.urls.append(url)
        return _SlowSocket(self)


class _SlowSocket:
    def __init__(self, owner: SlowGreetings) -> None:
        self.owner = owner
        self.closed = False

    async def __aenter__(self) -> _SlowSocket:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.closed = True

    async def send(self, data: Any) -> None:
        pass

    async def recv(self) -> str:
        while not self.owner.greet.is_set():
            await asyncio.sleep(0.01)
        welcome = protocol.Welcome(1, "fake", "cpu", {}, {}, ["lcm"], protocol.Limits(), True)
        return protocol.encode_message(welcome)

    def __aiter__(self) -> _SlowSocket:
        return self

    async def __anext__(self) -> Any:
        while not self.closed:
            await asyncio.sleep(0.01)
        raise StopAsyncIteration

    async def close(self) -> None:
        self.closed = True


def test_an_address_changed_during_the_handshake_is_the_one_that_stays_connected() -> None:
    events: queue.Queue[object] = queue.Queue()
    backends = SlowGreetings()
    client = NetworkClient(events.put, backoff=Backoff(initial=0.05, maximum=0.2, jitter=0), connect=backends)
    try:
        client.start(ConnectionSettings("old-host:1"))
        deadline = time.monotonic() + 5
        while not backends.urls and time.monotonic() < deadline:
            time.sleep(0.01)
        client.start(ConnectionSettings("new-host:2"))  # Connect pressed while the old backend is greeting
        time.sleep(0.1)
        backends.greet.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
            backends.urls[-1] == "ws://new-host:2" and client.connected
        ):
            time.sleep(0.01)
        assert backends.urls[-1] == "ws://new-host:2" and client.connected
        assert any(isinstance(e, Connected) for e in list(events.queue))
    finally:
        client.stop()
