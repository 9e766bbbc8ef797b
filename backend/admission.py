"""Connection caps: open connections in all and per client address, counted from the HTTP upgrade on.

Every connection costs memory (receive buffers, a queue, replies) whether or not it ever authenticates, so
the caps apply before the handshake: a refused client gets HTTP 503 and nothing is allocated for it.
Loopback clients all share one address; the per-address cap keeps one of them (a script opening dozens of
connections) from crowding out the painter's.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from .forwarded import IPNetwork, forwarded_address


class Admission:
    def __init__(
        self, max_total: int, max_per_address: int, trusted_proxies: tuple[IPNetwork, ...] = ()
    ) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.trusted_proxies = trusted_proxies  # behind these, the address is X-Forwarded-For's last hop
        self.open: Counter[str] = Counter()
        self._watchers: set[asyncio.Task[None]] = set()

    @property
    def total(self) -> int:
        return sum(self.open.values())

    def admit(self, connection: Any) -> str | None:
        """Count the connection until it closes; or, over a cap, the reason it is refused."""
        address = client_address(connection, self.trusted_proxies)
        if self.total >= self.max_total:
            return f"The server has {self.total} connections open, its limit. Try again later."
        if self.open[address] >= self.max_per_address:
            return (
                f"{self.open[address]} connections from {address} are open, the limit per address. "
                "Close one first."
            )
        self.open[address] += 1
        watcher = asyncio.get_running_loop().create_task(self._release_when_closed(connection, address))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return None

    async def _release_when_closed(self, connection: Any, address: str) -> None:
        try:
            await connection.wait_closed()
        finally:
            self.open[address] -= 1
            if self.open[address] <= 0:
                del self.open[address]


def client_address(connection: Any, trusted_proxies: tuple[IPNetwork, ...] = ()) -> str:
    """The address a client is counted by: its peer address, or, when that peer is a trusted proxy, the
    address the proxy received it from (backend/forwarded.py)."""
    remote = getattr(connection, "remote_address", None)
    peer = str(remote[0]) if remote else "unknown"
    return forwarded_address(peer, getattr(connection, "request", None), trusted_proxies)


def user_key(
    connection: Any, token_index: int | None = None, trusted_proxies: tuple[IPNetwork, ...] = ()
) -> str:
    """Who a connection belongs to, for fair scheduling (backend/turns.py), so that one person's many
    connections share one turn: the access token it presented, by its place in the server's list (never its
    text), when the server has tokens; otherwise its client address (all loopback clients are one; behind a
    trusted proxy, the painter's own)."""
    if token_index is not None:
        return f"token:{token_index}"
    return "address:" + client_address(connection, trusted_proxies)
