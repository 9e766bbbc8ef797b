"""With access tokens configured, a user is a token, not an address: two painters on the same machine
(both on loopback) who hold different tokens get turns in alternation, however many connections one opens.

Real server, engine and tiny models over real WebSockets, all from 127.0.0.1. The engine is wrapped only to
hold the worker until every job is queued and to record the order jobs run in (tests/backend/
test_hardening_fairness.py's OrderHost): what is asserted is that order, never a timing.
"""

from __future__ import annotations

from typing import Any

import pytest

from backend.admission import user_key
from backend.config import ServerConfig
from backend.server import Server
from tests.backend.hardening_client import RawClient
from tests.backend.server_harness import RunningServer, run, running_server
from tests.backend.test_hardening_fairness import OrderHost, accepted
from tests.fixtures.tiny_models import TinyModels

pytestmark = pytest.mark.slow

TOKENS = ("alice-secret", "bob-secret", "carol-secret")
ALICE_CONNECTIONS = 3
JOBS_EACH = 3


def bearer(token: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


def test_two_token_users_on_loopback_get_interleaved_turns(tiny_models: TinyModels) -> None:
    def params(prompt: str) -> dict[str, object]:
        return {"checkpoint": tiny_models.checkpoint, "prompt": prompt, "steps": 1, "strength": 0.5}

    async def scenario(server: RunningServer) -> None:
        holder = await RawClient.connect(server.url, **bearer("carol-secret"))
        await holder.send_job("hold", params=params("hold"))
        await accepted(holder, 1)
        while server.call(lambda: server.server.scheduler.running) is None:  # the worker is held
            await holder.quiet(0.05)

        alices = [
            await RawClient.connect(server.url, **bearer("alice-secret")) for _ in range(ALICE_CONNECTIONS)
        ]
        for a, alice in enumerate(alices):
            for j in range(JOBS_EACH):
                await alice.send_job(f"a{j}", params=params(f"alice-{a}-{j}"))
            await accepted(alice, JOBS_EACH)
        # Bob presents his token in the hello instead of the upgrade request: the same identity either way.
        bob = await RawClient.connect(server.url, hello=False)
        await bob.send_json({"type": "hello", "protocol_version": 1, "token": "bob-secret"})
        assert (await bob.receive())["type"] == "welcome"  # type: ignore[index]
        for j in range(JOBS_EACH):
            await bob.send_job(f"b{j}", params=params(f"bob-{j}"))
        await accepted(bob, JOBS_EACH)

        OrderHost.gate.set()
        await bob.until_ended({f"b{j}" for j in range(JOBS_EACH)})
        for alice in alices:
            await alice.until_ended({f"a{j}" for j in range(JOBS_EACH)})
        for client in (holder, bob, *alices):
            assert not [m for m in client.messages() if m["type"] in ("error", "cancelled")], client.received
            await client.close()

    OrderHost.order = []
    OrderHost.gate.clear()
    try:
        with running_server(
            tiny_models.root,
            engine_factory=OrderHost,
            model_config_dir=tiny_models.config_dir,
            token=TOKENS[0],
            more_tokens=TOKENS[1:],
        ) as server:
            run(scenario(server))
    finally:
        OrderHost.gate.set()

    order = OrderHost.order[1:]  # after the held job
    assert OrderHost.order[0] == "hold" and len(order) == (ALICE_CONNECTIONS + 1) * JOBS_EACH, OrderHost.order
    bob_at = [i for i, prompt in enumerate(order) if prompt.startswith("bob-")]
    # Alice's three connections share one turn per round: Bob's jobs alternate with hers (as one user on
    # one address, Bob waited for all three of her connections each round: [3, 7, 11]).
    assert bob_at == [1, 3, 5], order


def test_without_tokens_a_user_is_an_address_and_with_them_a_token_never_the_secret(
    tiny_models: TinyModels,
) -> None:
    class Upgrade:
        remote_address = ("127.0.0.1", 5555)

    assert user_key(Upgrade()) == "address:127.0.0.1"
    server = Server(ServerConfig(models_dir=tiny_models.root, token="t1", more_tokens=("t2",)))
    assert server.token_index("t2") == 1 and server.token_index("t1") == 0
    assert server.token_index("t3") is None and server.token_index(None) is None
    assert user_key(Upgrade(), 1) == "token:1"  # the key names the token by its place, not its text
