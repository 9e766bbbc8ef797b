from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from krita_plugin._compat import protocol
from krita_plugin.backoff import Backoff
from krita_plugin.network import Connected, NetworkClient, ResultReady, ServerMessage, Status, StatusChanged
from krita_plugin.settings import ConnectionSettings
from tests.plugin.fake_backend import FakeBackend, free_port


class Events:
    def __init__(self) -> None:
        self.queue: queue.Queue[object] = queue.Queue()
        self.seen: list[object] = []

    def wait_for(self, test: Callable[[object], bool], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.queue.get(timeout=0.05)
            except queue.Empty:
                continue
            self.seen.append(event)
            if test(event):
                return event
        raise AssertionError(f"no matching event within {timeout}s; saw {self.seen[-10:]}")


def status(kind: Status) -> Callable[[object], bool]:
    return lambda e: isinstance(e, StatusChanged) and e.status is kind


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def client(events: Events):
    client = NetworkClient(events.queue.put, backoff=Backoff(initial=0.05, maximum=0.2, jitter=0))
    yield client
    client.stop()


def job_parts(job_id: str, w: int = 4, h: int = 2) -> tuple[object, ...]:
    request = protocol.JobRequest(
        job_id,
        live=True,
        images=[protocol.ImageSpec("canvas", "bgra8", w, h)],
        bounds=protocol.Bounds(0, 0, w, h),
    )
    frame = protocol.encode_frame(
        protocol.ImageFrame(
            job_id, "canvas", protocol.ImageEncoding.BGRA8, w, h, b"\x10\x20\x30\xff" * (w * h)
        )
    )
    return request, frame


def test_connects_greets_and_gets_a_result(client: NetworkClient, events: Events) -> None:
    backend = FakeBackend(token="secret").start()
    try:
        client.start(ConnectionSettings(f"127.0.0.1:{backend.port}", "secret"))
        welcome = events.wait_for(lambda e: isinstance(e, Connected)).welcome
        assert welcome.models["checkpoints"] == ["tiny.safetensors"]
        events.wait_for(status(Status.CONNECTED))
        hello, header = backend.hellos[0]
        assert hello.protocol_version == protocol.PROTOCOL_VERSION and hello.token == "secret"
        assert header == "Bearer secret"
        assert client.send(*job_parts("job-1"))
        progress = events.wait_for(
            lambda e: isinstance(e, ServerMessage) and isinstance(e.message, protocol.Progress)
        )
        assert progress.message.job_id == "job-1"
        ready = events.wait_for(lambda e: isinstance(e, ResultReady))
        assert ready.result.job_id == "job-1" and ready.result.bounds == [0, 0, 4, 2]
        assert ready.frame.payload == b"\xef\xdf\xcf\xff" * 8
    finally:
        backend.stop()


def test_wrong_token_is_reported_in_painter_words(client: NetworkClient, events: Events) -> None:
    backend = FakeBackend(token="secret").start()
    try:
        client.start(ConnectionSettings(f"127.0.0.1:{backend.port}", "wrong"))
        waiting = events.wait_for(status(Status.WAITING))
        assert "token" in waiting.message
        assert not client.connected
    finally:
        backend.stop()


def test_backend_down_then_up_reconnects_by_itself(client: NetworkClient, events: Events) -> None:
    port = free_port()
    client.start(ConnectionSettings(f"127.0.0.1:{port}"))
    waiting = events.wait_for(status(Status.WAITING))
    assert "No backend is running" in waiting.message and waiting.retry_in is not None
    assert not client.send(*job_parts("job-x"))  # nothing is queued while offline
    backend = FakeBackend(port=port).start()
    try:
        events.wait_for(status(Status.CONNECTED))
        backend.stop()  # the backend restarts...
        events.wait_for(status(Status.WAITING))
        backend = FakeBackend(port=port).start()
        events.wait_for(status(Status.CONNECTED))  # ...and the client comes back on its own
        assert client.send(*job_parts("job-2"))
        events.wait_for(lambda e: isinstance(e, ResultReady) and e.result.job_id == "job-2")
        assert not any(getattr(m, "job_id", None) == "job-x" for m in backend.received)
    finally:
        backend.stop()


def test_changing_the_address_reconnects_at_once(client: NetworkClient, events: Events) -> None:
    first, second = FakeBackend().start(), FakeBackend().start()
    try:
        client.start(ConnectionSettings(f"127.0.0.1:{first.port}"))
        events.wait_for(status(Status.CONNECTED))
        client.start(ConnectionSettings(f"127.0.0.1:{second.port}"))
        events.wait_for(status(Status.CONNECTED))
        assert len(second.hellos) == 1
    finally:
        first.stop()
        second.stop()


def test_stop_ends_the_thread(events: Events) -> None:
    client = NetworkClient(events.queue.put)
    client.start(ConnectionSettings(f"127.0.0.1:{free_port()}"))
    assert client.running
    client.stop()
    assert not client.running
    events.wait_for(status(Status.OFFLINE))


def test_garbage_address_is_explained(client: NetworkClient, events: Events) -> None:
    client.start(ConnectionSettings("ws://bad host name:-5"))
    waiting = events.wait_for(status(Status.WAITING))
    assert waiting.message  # a sentence, not a traceback
    assert "Traceback" not in waiting.message


def test_a_restart_while_the_old_thread_still_closes_keeps_the_new_connection(events: Events) -> None:
    """stop() gives up waiting for a thread stuck in a slow close; a start right after must get a connection
    of its own that the old thread, when it finally exits, neither disconnects nor duplicates."""
    from krita_plugin._compat import connect_websocket

    opened: list[int] = []

    def connect(*args: Any) -> Any:
        inner = connect_websocket(*args)
        first = not opened
        opened.append(1)

        class SlowFirstClose:
            async def __aenter__(self) -> Any:
                return await inner.__aenter__()

            async def __aexit__(self, *exc: Any) -> Any:
                if first:
                    time.sleep(0.8)  # blocks the old network thread past stop()'s timeout
                return await inner.__aexit__(*exc)

        return SlowFirstClose()

    backend = FakeBackend().start()
    client = NetworkClient(
        events.queue.put, connect=connect, backoff=Backoff(initial=0.05, maximum=0.2, jitter=0)
    )
    try:
        settings = ConnectionSettings(f"127.0.0.1:{backend.port}")
        client.start(settings)
        events.wait_for(status(Status.CONNECTED))
        client.stop(timeout=0.1)
        client.start(settings)
        events.wait_for(status(Status.CONNECTED))
        time.sleep(1.2)  # the old thread has finished closing by now
        assert client.connected
        assert len(backend.hellos) == 2  # the old thread did not reconnect beside the new one
        late = [e for e in list(events.queue.queue) if isinstance(e, StatusChanged)]
        assert all(e.status is not Status.OFFLINE for e in late), late
        assert client.send(*job_parts("after-restart"))
        events.wait_for(lambda e: isinstance(e, ResultReady) and e.result.job_id == "after-restart")
    finally:
        client.stop()
        backend.stop()


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
