"""The replies waiting for one client, counted in bytes, so a client that doesn't read can be told apart.

The server produces replies (results of megabytes) whether or not the client reads them; an unbounded queue
let one client that never reads grow the server without limit. The connection checks `size` against its
limits: it stops reading the client's messages while too much is unread (the client is slowed down by TCP),
and drops the connection when the unread bytes stay too many for too long or exceed a hard cap.
"""

from __future__ import annotations

import asyncio
from collections import deque

Parts = list[str | bytes]


def size_of(parts: Parts) -> int:
    # Text is counted by characters: replies are ASCII JSON (json.dumps escapes the rest).
    return sum(len(part) for part in parts)


class Outbox:
    """A FIFO of reply groups (parts that must go out back to back); lives on one event loop."""

    def __init__(self) -> None:
        self._groups: deque[tuple[Parts, int]] = deque()
        self._ready = asyncio.Event()  # set while there is something to take, or once closed
        self._shrunk = asyncio.Event()  # pulsed whenever `size` goes down
        self._grew = asyncio.Event()  # pulsed whenever `size` goes up
        self._closed = False
        self.size = 0  # bytes queued, plus those of the group being written

    def put(self, parts: Parts) -> None:
        if self._closed:
            return
        size = size_of(parts)
        self._groups.append((parts, size))
        self.size += size
        self._ready.set()
        self._grew.set()

    async def take(self) -> tuple[Parts, int] | None:
        """The next group and its size (call `sent(size)` once it is written); None once closed and empty."""
        while not self._groups:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._groups.popleft()

    def sent(self, size: int) -> None:
        self.size -= size
        self._shrunk.set()

    async def wait_until_at_most(self, limit: int, timeout: float | None = None) -> bool:
        """True once at most `limit` bytes are unread; False if that takes longer than `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while self.size > limit:
                    self._shrunk.clear()
                    await self._shrunk.wait()
        except TimeoutError:
            return self.size <= limit
        return True

    async def wait_until_over(self, limit: int) -> None:
        while self.size <= limit:
            self._grew.clear()
            await self._grew.wait()

    def close(self) -> None:
        """No more puts; `take` returns what is queued, then None."""
        self._closed = True
        self._ready.set()

    def discard(self) -> None:
        """Close and drop everything queued now (its memory with it): the client is gone or being dropped."""
        self.close()
        dropped = sum(size for _, size in self._groups)
        self._groups.clear()
        self.size -= dropped
        self._shrunk.set()
