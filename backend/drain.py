"""Draining a worker (SIGTERM): take nothing new, let what runs finish, then say "going away".

While draining, the port stays open so /healthz answers "draining" (503: a balancer takes the worker out),
WebSocket upgrades are refused with HTTP 503 and `Retry-After`, and new jobs on open connections get `busy`
(backend/server.py). Jobs already taken in still run, in their turns. Each connection is closed with code
1001 (going away) as soon as it has no unfinished job and its replies are flushed, so an idle painter moves to
another worker at once and a busy one right after its result. What is left at the deadline is cancelled by
Server.close, which closes those connections with 1001 too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

if TYPE_CHECKING:
    from .server import Connection, Server

log = logging.getLogger("backend.drain")
POLL_S = 0.05  # how often connections are looked at for being done (a reply's encoding has no event)
FLUSH_S = 2.0  # a connection's last replies get this long to reach a slow client
CLOSE_S = 5.0  # and the closing handshake this long
GOING_AWAY_REASON = "going away: this worker is shutting down; reconnect"


async def drain(server: Server, timeout: float) -> bool:
    """Drain for at most `timeout` seconds; True if every connection was closed by then (nothing left for
    Server.close to cancel)."""
    server.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    goodbyes: dict[Connection, asyncio.Task[None]] = {}
    log.info("draining: no new connections or jobs; waiting up to %g s for %d connection(s)", timeout,
             len(server.connections))  # fmt: skip
    try:
        while True:
            for connection in list(server.connections):
                if connection not in goodbyes and connection.idle:
                    goodbyes[connection] = loop.create_task(say_goodbye(connection))
            if not server.connections:
                log.info("drained")
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                busy = sum(1 for c in server.connections if not c.idle)
                log.warning("drain timeout: %d connection(s) still have unfinished jobs", busy)
                return False
            await asyncio.sleep(min(POLL_S, remaining))
    finally:
        for task in goodbyes.values():
            if not task.done():
                task.cancel()


async def say_goodbye(connection: Connection) -> None:
    """Close a connection whose jobs have all ended: its replies first, then close code 1001."""
    socket = connection.socket
    try:
        await connection.outbox.wait_until_at_most(0, FLUSH_S)
        await asyncio.wait_for(socket.close(CloseCode.GOING_AWAY, GOING_AWAY_REASON), CLOSE_S)
    except (TimeoutError, ConnectionClosed):
        socket.transport.abort()  # a client that doesn't answer the close must not hold the drain
