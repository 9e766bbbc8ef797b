"""The shipped TLS example (deploy/haproxy.cfg's commented `bind :443 ssl crt ...`), turned on with a test
certificate of a studio's own CA: the plugin connects with a wss:// address and that CA file, through a real
HAProxy, to a worker (a stand-in speaking the protocol), and is told the worker's name by HAProxy."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from krita_plugin.backoff import Backoff
from krita_plugin.network import Connected, NetworkClient, ResultReady
from krita_plugin.settings import SESSION_KEY, ConnectionSettings
from tests.plugin.balanced_backend import Worker, make_certificates, openssl_available
from tests.plugin.test_network import job_parts
from tests.pool.harness import HAProxy, config_with_ports, free_port, haproxy_binary, with_tls_example


@pytest.fixture
def tls_pool(tmp_path: Path) -> Iterator[tuple[int, Path, Worker]]:
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("HAProxy is not installed (Debian: apt-get install haproxy): this test runs a real one")
    if not openssl_available():
        pytest.skip("the openssl command is not installed (it makes the test certificates)")
    certificates = make_certificates(tmp_path)
    tls_port = free_port()
    worker = Worker(name="stand-in").start()  # the shipped file's first worker, gpu0; gpu1 stays down
    config = tmp_path / "haproxy.cfg"
    text = config_with_ports(free_port(), (worker.port, free_port()))
    config.write_text(with_tls_example(text, tls_port, certificates.combined()))
    haproxy = HAProxy(binary, config, tmp_path / "haproxy.log").start()
    try:
        yield tls_port, certificates.ca, worker
    except BaseException:
        print(haproxy.log_tail())
        raise
    finally:
        haproxy.stop()
        worker.stop()


def test_wss_through_haproxys_tls_termination(tls_pool: tuple[int, Path, Worker]) -> None:
    port, ca, worker = tls_pool
    events: queue.Queue[object] = queue.Queue()
    client = NetworkClient(events.put, backoff=Backoff(initial=0.1, maximum=0.5, jitter=0))
    try:
        client.start(ConnectionSettings(f"wss://localhost:{port}", ca_file=str(ca)))
        connected = wait_for(events, lambda e: isinstance(e, Connected))
        assert connected.served_by == "gpu0"  # HAProxy's name for the worker, not the worker's own
        assert worker.session_keys[-1] == SESSION_KEY  # the session key went through to the worker
        assert client.send(*job_parts("through-tls"))
        ready = wait_for(events, lambda e: isinstance(e, ResultReady))
        assert ready.result.job_id == "through-tls"
    finally:
        client.stop()


def wait_for(events: queue.Queue[object], test: Callable[[object], bool], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    seen: list[object] = []
    while time.monotonic() < deadline:
        try:
            event = events.get(timeout=0.05)
        except queue.Empty:
            continue
        seen.append(event)
        if test(event):
            return event
    raise AssertionError(f"no matching event within {timeout} s; saw {seen[-8:]}")
