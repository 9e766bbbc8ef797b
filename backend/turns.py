"""Whose job runs next: round-robin over users first, then over each user's connections.

Round-robin by connection let one user crowd everyone else out by opening more connections (50 flooding
connections made a lone painter's job wait for 50 others). Here a user with six connections gets one turn per
round like a user with one, and its connections share that turn among themselves. A user is whatever key the
server gives a connection when it arrives: the client's address today (loopback clients all share one), an
identity behind a token later.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class FairTurns:
    """Turn order over (user, connection) pairs that have jobs queued; lives on one event loop."""

    def __init__(self) -> None:
        self._users: deque[str] = deque()  # users with a connection waiting, in turn order
        self._clients: dict[str, deque[int]] = {}  # per such user, its waiting connections in turn order

    def waiting(self, user: str, client_id: int) -> None:
        """`client_id` (of `user`) has a job queued: give it a turn if it has none. Idempotent."""
        clients = self._clients.get(user)
        if clients is None:
            clients = self._clients[user] = deque()
            self._users.append(user)
        if client_id not in clients:
            clients.append(client_id)

    def take(self, has_work: Callable[[int], bool]) -> int | None:
        """The connection whose turn it is, removed from the order (call `waiting` again while it still has
        jobs: it goes to the back). Connections whose queues emptied meanwhile (cancelled, superseded, gone)
        are dropped on the way. None when no one is waiting."""
        while self._users:
            user = self._users.popleft()
            clients = self._clients[user]
            while clients:
                client_id = clients.popleft()
                if has_work(client_id):
                    if clients:
                        self._users.append(user)  # its other connections wait one round of users
                    else:
                        del self._clients[user]
                    return client_id
            del self._clients[user]
        return None
