"""The plugin's connection behind a balancer (issue 15): the session key a balancer hashes on, the worker it
names, a "going away" close followed by an at-once reconnect, and wss:// addresses with the system's or a
custom certificate authority."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from krita_plugin.backoff import Backoff
from krita_plugin.network import Connected, NetworkClient, ResultReady, Status, StatusChanged
from krita_plugin.settings import SESSION_KEY, ConnectionSettings
from tests.plugin.balanced_backend import Certificates, Worker, make_certificates, openssl_available
from tests.plugin.fake_backend import free_port
from tests.plugin.test_network import Events, job_parts, status


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def client(events: Events) -> Iterator[NetworkClient]:
    client = NetworkClient(events.queue.put, backoff=Backoff(initial=0.05, maximum=0.2, jitter=0))
    yield client
    client.stop()


@pytest.fixture
def slow_client(events: Events) -> Iterator[NetworkClient]:
    """A slow backoff: a reconnect faster than it shows the "going away" path, not the backoff, at work."""
    client = NetworkClient(events.queue.put, backoff=Backoff(initial=3.0, maximum=5.0, jitter=0))
    yield client
    client.stop()


def test_the_session_key_goes_with_every_upgrade_and_the_worker_is_named(
    client: NetworkClient, events: Events
) -> None:
    worker = Worker(name="gpu1").start()
    try:
        client.start(ConnectionSettings(f"127.0.0.1:{worker.port}"))
        connected = events.wait_for(lambda e: isinstance(e, Connected))
        assert connected.served_by == "gpu1"
        assert worker.session_keys == [SESSION_KEY] and len(SESSION_KEY) >= 16
        client.reconnect_now()
        events.wait_for(lambda e: isinstance(e, Connected))
        assert worker.session_keys == [SESSION_KEY, SESSION_KEY]  # the same key: the same worker
    finally:
        worker.stop()


def test_going_away_reconnects_at_once_to_whoever_serves_the_address_now(
    slow_client: NetworkClient, events: Events
) -> None:
    """A draining worker closes with 1001; the balancer's address then leads to another worker. The plugin
    reconnects within a fraction of a second, not after its backoff (3 s here), and names the new worker."""
    client = slow_client
    first = Worker(name="gpu0").start()
    second: Worker | None = None
    try:
        client.start(ConnectionSettings(f"127.0.0.1:{first.port}"))
        assert events.wait_for(lambda e: isinstance(e, Connected)).served_by == "gpu0"
        events.wait_for(status(Status.CONNECTED))
        second = Worker(name="gpu1", port=first.port)
        gone = time.monotonic()
        first.go_away()
        second.start()  # the balancer's next pick, on the same address
        waiting = events.wait_for(status(Status.WAITING))
        assert "shutting down" in waiting.message and waiting.retry_in is not None and waiting.retry_in < 0.5
        assert events.wait_for(lambda e: isinstance(e, Connected)).served_by == "gpu1"
        assert time.monotonic() - gone < 2.0
        assert client.send(*job_parts("after-failover"))
        events.wait_for(lambda e: isinstance(e, ResultReady) and e.result.job_id == "after-failover")
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_lost_connection_is_not_taken_for_going_away(slow_client: NetworkClient, events: Events) -> None:
    worker = Worker().start()
    try:
        slow_client.start(ConnectionSettings(f"127.0.0.1:{worker.port}"))
        events.wait_for(status(Status.CONNECTED))
        worker.crash()
        waiting = events.wait_for(status(Status.WAITING))
        assert "shutting down" not in waiting.message and waiting.retry_in == pytest.approx(3.0)
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("typed", "url", "secure"),
    [
        ("wss://gpu.example.org:443", "wss://gpu.example.org:443", True),
        ("WSS://Pool.Example.org:8443/", "wss://Pool.Example.org:8443/", True),
        ("https://pool.example.org:443", "wss://pool.example.org:443", True),
        ("http://10.0.0.2", "ws://10.0.0.2:9631", False),
        ("wss://[::1]", "wss://[::1]:9631", True),
        ("pool.example.org", "ws://pool.example.org:9631", False),
    ],
)
def test_wss_addresses(typed: str, url: str, secure: bool) -> None:
    settings = ConnectionSettings(typed)
    assert settings.url == url and settings.secure is secure


# --- TLS ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if not openssl_available():
        pytest.skip("the openssl command is not installed (it makes the test certificates)")
    return make_certificates(tmp_path_factory.mktemp("tls"))


def test_wss_with_the_studios_ca_file_connects(
    client: NetworkClient, events: Events, certificates: Certificates
) -> None:
    worker = Worker(name="tls-worker", tls=certificates.server_context()).start()
    try:
        client.start(ConnectionSettings(f"wss://localhost:{worker.port}", ca_file=str(certificates.ca)))
        assert events.wait_for(lambda e: isinstance(e, Connected)).served_by == "tls-worker"
        assert client.send(*job_parts("over-tls"))
        events.wait_for(lambda e: isinstance(e, ResultReady) and e.result.job_id == "over-tls")
    finally:
        worker.stop()


def test_wss_without_the_ca_is_refused_and_names_the_setting(
    client: NetworkClient, events: Events, certificates: Certificates
) -> None:
    """Only the system's authorities are trusted without the CA file: a private CA's certificate is refused
    (never silently accepted), in words that say what to set."""
    worker = Worker(tls=certificates.server_context()).start()
    try:
        client.start(ConnectionSettings(f"wss://localhost:{worker.port}"))
        waiting = events.wait_for(status(Status.WAITING))
        assert "certificate" in waiting.message and "CA file" in waiting.message
        assert not client.connected and worker.hellos == []
    finally:
        worker.stop()


def test_an_unreadable_ca_file_is_explained(client: NetworkClient, events: Events, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    client.start(ConnectionSettings(f"wss://localhost:{free_port()}", ca_file=str(missing)))
    waiting = events.wait_for(
        lambda e: isinstance(e, StatusChanged) and e.status is Status.WAITING and "CA file" in e.message
    )
    assert "nowhere.pem" in waiting.message


def test_plain_ws_to_a_tls_port_is_explained(
    client: NetworkClient, events: Events, certificates: Certificates
) -> None:
    worker = Worker(tls=certificates.server_context()).start()
    try:
        client.start(ConnectionSettings(f"ws://localhost:{worker.port}"))
        waiting = events.wait_for(status(Status.WAITING))
        assert waiting.message and "Traceback" not in waiting.message and worker.hellos == []
    finally:
        worker.stop()


def test_wss_to_a_plain_port_is_explained(client: NetworkClient, events: Events) -> None:
    worker = Worker().start()
    try:
        client.start(ConnectionSettings(f"wss://localhost:{worker.port}"))
        waiting = events.wait_for(status(Status.WAITING))
        assert "plain ws://" in waiting.message and worker.hellos == []
    finally:
        worker.stop()


def test_no_backend_free_is_told_as_such_and_retried(client: NetworkClient, events: Events) -> None:
    worker = Worker(full=True).start()
    try:
        client.start(ConnectionSettings(f"127.0.0.1:{worker.port}"))
        waiting = events.wait_for(status(Status.WAITING))
        assert "No backend at" in waiting.message and "can take the connection now" in waiting.message
        worker.full = False  # a worker became ready
        events.wait_for(status(Status.CONNECTED))
    finally:
        worker.stop()
