"""--trusted-proxy: behind HAProxy (`option forwardfor`) each painter is counted by its own address, the last
X-Forwarded-For hop, for the per-address cap, the wrong-token throttle and fair turns; a peer that is not a
trusted proxy can't choose the address it is counted by.

Real server over real WebSockets on loopback: the "proxy" is a client connecting from 127.0.0.2 that sends
X-Forwarded-For as HAProxy does; 127.0.0.3 is an untrusted client sending the same header.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus

from backend.auth_throttle import ThrottleSettings
from backend.cli import build_parser, config_from_args
from backend.forwarded import forwarded_address, is_trusted, last_forwarded_hop, parse_proxy
from tests.backend.hardening_client import RawClient
from tests.backend.server_harness import RunningServer, run, running_server

PROXY = "127.0.0.2"
STRANGER = "127.0.0.3"
TRUSTED = (parse_proxy(PROXY),)
TOKEN = "studio-secret"


def forwarded_for(*lines: str, token: str | None = None) -> dict[str, Any]:
    """Connect options sending one X-Forwarded-For line per entry (HAProxy adds its own line)."""
    headers = [("X-Forwarded-For", line) for line in lines]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    return {"additional_headers": headers}


async def open_from(url: str, address: str, *lines: str, token: str | None = None) -> RawClient | int:
    """A connected client past its welcome, or the HTTP status its upgrade was refused with."""
    try:
        return await RawClient.connect(url, from_address=address, **forwarded_for(*lines, token=token))
    except InvalidStatus as refused:
        return refused.response.status_code


async def status_from(url: str, address: str, *lines: str, token: str | None = None) -> int:
    client = await open_from(url, address, *lines, token=token)
    if isinstance(client, int):
        return client
    await client.close()
    return 101


def test_the_last_hop_of_a_trusted_proxy_is_taken_and_nobody_elses() -> None:
    headers = Headers([("X-Forwarded-For", "203.0.113.9, 10.1.1.1"), ("X-Forwarded-For", "198.51.100.7")])
    assert last_forwarded_hop(headers) == "198.51.100.7"  # HAProxy's own line comes last
    assert last_forwarded_hop(Headers([("X-Forwarded-For", "198.51.100.7, not-an-address")])) is None
    assert last_forwarded_hop(Headers()) is None

    class Request:
        def __init__(self, headers: Headers) -> None:
            self.headers = headers

    request = Request(headers)
    assert forwarded_address("127.0.0.2", request, TRUSTED) == "198.51.100.7"
    assert forwarded_address("127.0.0.3", request, TRUSTED) == "127.0.0.3"  # untrusted: header ignored
    assert forwarded_address("127.0.0.2", request, ()) == "127.0.0.2"  # no proxy trusted at all
    # A trusted proxy's own request without a usable header (its health check) counts as the proxy.
    assert forwarded_address("127.0.0.2", Request(Headers()), TRUSTED) == "127.0.0.2"

    network = (parse_proxy("10.0.0.0/24"), parse_proxy("[::1]"))
    assert is_trusted("10.0.0.77", network) and not is_trusted("10.0.1.1", network)
    assert is_trusted("::ffff:10.0.0.5", network)  # an IPv4 peer on a dual-stack socket
    assert is_trusted("::1", network) and not is_trusted("unknown", network)
    with pytest.raises(ValueError, match="not an IP address"):
        parse_proxy("haproxy.local")


def test_trusted_proxy_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["--trusted-proxy", "10.0.0.0/24", "--trusted-proxy", "::1"])
    config = config_from_args(args)
    assert config.trusted_proxies == (ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("::1/128"))
    assert config_from_args(build_parser().parse_args([])).trusted_proxies == ()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--trusted-proxy", "haproxy.local"])
    assert "not an IP address" in capsys.readouterr().err


def test_the_per_address_cap_counts_painters_behind_a_trusted_proxy(tmp_path: Path) -> None:
    async def scenario(url: str) -> None:
        alice = [await open_from(url, PROXY, "203.0.113.1") for _ in range(2)]
        assert all(isinstance(c, RawClient) for c in alice), alice
        # Alice is at the cap; Bob, through the same proxy, is another address.
        assert await status_from(url, PROXY, "203.0.113.1") == 503
        assert await status_from(url, PROXY, "203.0.113.2") == 101
        # A hop the painter wrote itself comes before the proxy's: it does not make Alice someone else.
        assert await status_from(url, PROXY, "203.0.113.2", "203.0.113.1") == 503

        # Untrusted: X-Forwarded-For is ignored, every connection is 127.0.0.3's, whatever it claims.
        stranger = [await open_from(url, STRANGER, f"192.0.2.{n}") for n in range(2)]
        assert all(isinstance(c, RawClient) for c in stranger), stranger
        assert await status_from(url, STRANGER, "192.0.2.99") == 503
        for client in (*alice, *stranger):
            assert isinstance(client, RawClient)
            await client.close()

    with running_server(
        tmp_path, preload=False, max_connections_per_address=2, trusted_proxies=TRUSTED
    ) as server:
        run(scenario(server.url))


def test_one_painters_wrong_tokens_do_not_block_the_others_behind_the_proxy(tmp_path: Path) -> None:
    settings = ThrottleSettings(free_failures=3, base_block_s=60, max_block_s=60)

    async def scenario(url: str) -> None:
        statuses = [await status_from(url, PROXY, "198.51.100.1", token="guess") for _ in range(4)]
        assert statuses == [401] * 4
        assert await status_from(url, PROXY, "198.51.100.1", token=TOKEN) == 429  # that painter is blocked
        assert await status_from(url, PROXY, "198.51.100.2", token=TOKEN) == 101  # the others are not

        # An untrusted peer can't dodge its block by claiming another address each time.
        claims = [await status_from(url, STRANGER, f"192.0.2.{n}", token="guess") for n in range(4)]
        assert claims == [401] * 4
        assert await status_from(url, STRANGER, "192.0.2.50", token=TOKEN) == 429

    with running_server(
        tmp_path, preload=False, token=TOKEN, auth_throttle=settings, trusted_proxies=TRUSTED
    ) as server:
        run(scenario(server.url))


def test_without_tokens_painters_behind_the_proxy_get_turns_of_their_own(tmp_path: Path) -> None:
    def users(server: RunningServer) -> list[str]:
        return server.call(lambda: sorted(c.user for c in server.server.connections))

    async def scenario(server: RunningServer) -> None:
        clients = [
            await open_from(server.url, PROXY, "203.0.113.1"),
            await open_from(server.url, PROXY, "203.0.113.1"),
            await open_from(server.url, PROXY, "2001:db8::5"),
            await open_from(server.url, STRANGER, "203.0.113.1"),
        ]
        assert users(server) == [
            "address:127.0.0.3",
            "address:2001:db8::5",
            "address:203.0.113.1",
            "address:203.0.113.1",
        ]
        for client in clients:
            assert isinstance(client, RawClient)
            await client.close()

    with running_server(tmp_path, preload=False, trusted_proxies=TRUSTED) as server:
        run(scenario(server))
