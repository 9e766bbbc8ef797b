"""Wrong access tokens are rate-limited per address: a few are answered, then the address is blocked for
doubling times (HTTP 429 before the token is looked at), other addresses and correct tokens from elsewhere
unaffected. Real server over real WebSockets; 127.0.0.x are distinct client addresses on loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from backend.auth_throttle import AuthThrottle, ThrottleSettings, throttle_key
from protocol import PROTOCOL_VERSION
from tests.backend.hardening_client import RawClient
from tests.backend.server_harness import run, running_server

TOKEN = "s3cret"
BLOCK_S = 1.5


def bearer(token: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


async def status_of(url: str, address: str, token: str) -> int:
    """101 if the upgrade with this header token went through (the welcome came), else the HTTP status."""
    try:
        client = await RawClient.connect(url, from_address=address, **bearer(token))
    except InvalidStatus as refused:
        if refused.response.status_code == 429:
            retry = refused.response.headers.get("Retry-After")
            assert retry is not None and 1 <= int(retry) <= 60, retry
        return refused.response.status_code
    await client.close()
    return 101


async def hello_with(url: str, address: str, token: str) -> dict[str, object] | int:
    """The reply to a hello carrying `token` (no header), or the HTTP status if the upgrade was refused."""
    try:
        client = await RawClient.connect(url, hello=False, from_address=address)
    except InvalidStatus as refused:
        return refused.response.status_code
    await client.send_json({"type": "hello", "protocol_version": PROTOCOL_VERSION, "token": token})
    reply = await client.receive()
    assert isinstance(reply, dict)
    if reply["type"] == "error":
        with pytest.raises(ConnectionClosed):
            await client.receive()
    await client.close()
    return reply


@pytest.mark.slow
def test_wrong_tokens_block_their_address_for_a_while_and_no_other(tmp_path: Path) -> None:
    settings = ThrottleSettings(free_failures=3, base_block_s=BLOCK_S, max_block_s=60)

    async def scenario(url: str) -> None:
        # Four wrong tokens from one address are checked and answered 401; the fourth starts a block.
        assert [await status_of(url, "127.0.0.2", "guess") for _ in range(4)] == [401] * 4
        # Blocked: refused before the upgrade, even with the right token (a guess then tells nothing).
        assert await status_of(url, "127.0.0.2", "guess") == 429
        assert await status_of(url, "127.0.0.2", TOKEN) == 429
        # Other addresses: the right token works, a wrong one is answered as usual.
        assert await status_of(url, "127.0.0.3", TOKEN) == 101
        assert await status_of(url, "127.0.0.3", "guess") == 401

        # Tokens in the hello count alike.
        for _ in range(4):
            reply = await hello_with(url, "127.0.0.4", "guess")
            assert isinstance(reply, dict) and reply["code"] == "unauthorized", reply
        assert "try again in" in str(reply["message"])  # the fourth started a block, and says so
        assert await hello_with(url, "127.0.0.4", TOKEN) == 429
        welcome = await hello_with(url, "127.0.0.5", TOKEN)
        assert isinstance(welcome, dict) and welcome["type"] == "welcome", welcome

        # The block ends; the right token then clears the address's record: a typo is answered again.
        await asyncio.sleep(BLOCK_S + 0.3)
        assert await status_of(url, "127.0.0.2", TOKEN) == 101
        assert await status_of(url, "127.0.0.2", "guess") == 401

    with running_server(tmp_path, token=TOKEN, preload=False, auth_throttle=settings) as server:
        run(scenario(server.url))


def test_blocks_double_up_to_a_cap_and_are_forgotten() -> None:
    now = [1000.0]
    throttle = AuthThrottle(
        ThrottleSettings(free_failures=2, base_block_s=1.0, max_block_s=8.0, forget_after_s=100.0),
        clock=lambda: now[0],
    )
    blocks = []
    for _ in range(8):
        blocks.append(throttle.failed("10.0.0.1"))
        now[0] += 0.1
    assert blocks == [0, 0, 1, 2, 4, 8, 8, 8]
    assert throttle.blocked_for("10.0.0.1") == pytest.approx(8 - 0.1)
    assert throttle.blocked_for("10.0.0.2") == 0
    now[0] += 200  # quiet for longer than forget_after_s: starts over
    assert throttle.blocked_for("10.0.0.1") == 0
    assert throttle.failed("10.0.0.1") == 0


def test_one_ipv6_host_is_one_address_and_records_are_bounded() -> None:
    assert throttle_key("2001:db8::1") == throttle_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert throttle_key("2001:db8:0:1::1") != throttle_key("2001:db8::1")
    assert throttle_key("::ffff:10.0.0.1") == "10.0.0.1"
    throttle = AuthThrottle(ThrottleSettings(free_failures=0, max_tracked=3))
    for i in range(10):
        throttle.failed(f"10.0.0.{i}")
    assert len(throttle._records) == 3
    assert throttle.blocked_for("10.0.0.9") > 0  # the newest are kept


def test_a_painter_who_fixes_a_typo_is_never_blocked(tmp_path: Path) -> None:
    """A correct token clears the address's record: wrong tries between right ones never add up."""

    async def scenario(url: str) -> None:
        for _ in range(5):
            assert [await status_of(url, "127.0.0.1", "typo") for _ in range(3)] == [401] * 3
            welcome = await hello_with(url, "127.0.0.1", TOKEN)
            assert isinstance(welcome, dict) and welcome["type"] == "welcome", json.dumps(welcome)

    settings = ThrottleSettings(free_failures=3, base_block_s=60)
    with running_server(tmp_path, token=TOKEN, preload=False, auth_throttle=settings) as server:
        run(scenario(server.url))
