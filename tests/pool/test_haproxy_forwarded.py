"""The shipped deploy/haproxy.cfg (`option forwardfor`) with a real HAProxy and a real worker started with
`--trusted-proxy 127.0.0.1`: the worker counts each painter by the painter's own address, not HAProxy's,
and a painter can't pass itself off as another by sending X-Forwarded-For of its own.

Painters connect from different loopback addresses (127.0.0.5, 127.0.0.6 ...) to HAProxy on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.pool.harness import HAProxy, WorkerProcess, config_with_ports, free_port, haproxy_binary

pytestmark = pytest.mark.slow


async def open_as(url: str, address: str, claimed: str | None = None) -> ClientConnection | int:
    """A connection from `address` (claiming `claimed` in X-Forwarded-For), or the HTTP status refusing it."""
    headers = [("X-Forwarded-For", claimed)] if claimed is not None else []
    try:
        return await connect(url, local_addr=(address, 0), additional_headers=headers, open_timeout=10)
    except InvalidStatus as refused:
        return refused.response.status_code


def test_workers_behind_haproxy_count_each_painter_by_its_own_address(tmp_path: Path, tiny_models) -> None:
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("HAProxy is not installed (Debian: apt-get install haproxy)")
    frontend, worker_port, unused_port = free_port(), free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(config_with_ports(frontend, (worker_port, unused_port)))
    # One connection per address: behind HAProxy without the trusted proxy, the second painter is refused.
    worker = WorkerProcess(
        tiny_models.root, tiny_models.config_dir, worker_port, tmp_path / "worker.log",
        ("--trusted-proxy", "127.0.0.1", "--max-connections-per-address", "1"),
    )  # fmt: skip
    haproxy = HAProxy(binary, config, tmp_path / "haproxy.log")

    async def scenario(url: str) -> None:
        alice = await open_as(url, "127.0.0.5")
        assert isinstance(alice, ClientConnection), alice
        # Bob is another painter, though HAProxy's address is the one the worker sees.
        bob = await open_as(url, "127.0.0.6", claimed="127.0.0.5")  # his claim to be Alice is not believed
        assert isinstance(bob, ClientConnection), bob
        # Alice's second connection is over her cap (HAProxy retries the 503, then passes it on).
        assert await open_as(url, "127.0.0.5", claimed="203.0.113.1") == 503
        await alice.close()
        await bob.close()

    try:
        worker.start().wait_ready()
        haproxy.start()
        asyncio.run(asyncio.wait_for(wait_then(scenario, f"ws://127.0.0.1:{frontend}"), 60))
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert "connected from 127.0.0.5 (peer ('127.0.0.1'" in log, log[-3000:]
        assert "connected from 127.0.0.6 (peer ('127.0.0.1'" in log, log[-3000:]
        assert "203.0.113.1" not in log and "connected from 127.0.0.1 " not in log, log[-3000:]
    except BaseException:
        print(worker.log_tail(), haproxy.log_tail(), sep="\n")
        raise
    finally:
        haproxy.stop()
        worker.stop()


async def wait_then(scenario: Callable[[str], Awaitable[None]], url: str) -> None:
    """Until HAProxy's first health checks passed the upgrade may be refused; then run the scenario."""
    for _ in range(100):
        try:
            probe = await open_as(url, "127.0.0.9")
        except OSError:  # HAProxy is not listening yet
            probe = 0
        if isinstance(probe, ClientConnection):
            await probe.close()
            await asyncio.sleep(0.2)  # the probe's connection is released by the worker
            break
        await asyncio.sleep(0.2)
    await scenario(url)
