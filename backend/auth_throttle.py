"""Wrong access tokens are rate-limited per client address, so a token can't be guessed at network speed.

A few wrong (or missing) tokens from one address are answered as usual; each further one blocks the address
for twice as long as the last (1 s, 2 s, 4 s ... up to a cap). While it is blocked its connections are
refused before the upgrade with HTTP 429 and `Retry-After`, without looking at the token they carry: a guess
made then tells nothing. Other addresses are not affected, and a correct token ends an address's record.
Memory is bounded: records are forgotten after a quiet while, and at most `max_tracked` are kept.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int = 0
    blocked_until: float = 0.0
    last_failure: float = 0.0


@dataclass(frozen=True)
class ThrottleSettings:
    free_failures: int = 3  # wrong tokens answered without a block (typos, a stale token in a config)
    base_block_s: float = 1.0  # the first block; each further wrong token doubles it
    max_block_s: float = 300.0
    forget_after_s: float = 900.0  # an address quiet this long starts over
    max_tracked: int = 10_000


class AuthThrottle:
    def __init__(
        self, settings: ThrottleSettings | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings or ThrottleSettings()
        self._clock = clock
        self._records: dict[str, _Record] = {}

    def blocked_for(self, address: str) -> float:
        """Seconds this address stays blocked (0: it may try)."""
        record = self._records.get(throttle_key(address))
        return max(0.0, record.blocked_until - self._clock()) if record is not None else 0.0

    def failed(self, address: str) -> float:
        """Count a wrong or missing token; returns the block it starts, in seconds (0: none yet)."""
        now = self._clock()
        key = throttle_key(address)
        record = self._records.get(key)
        if record is None or now - record.last_failure > self.settings.forget_after_s:
            self._make_room(now)
            record = self._records[key] = _Record()
        record.failures += 1
        record.last_failure = now
        over = record.failures - self.settings.free_failures
        if over <= 0:
            return 0.0
        block = min(self.settings.max_block_s, self.settings.base_block_s * 2 ** min(over - 1, 62))
        record.blocked_until = now + block
        return block

    def succeeded(self, address: str) -> None:
        self._records.pop(throttle_key(address), None)

    def _make_room(self, now: float) -> None:
        if len(self._records) < self.settings.max_tracked:
            return
        forget = self.settings.forget_after_s
        for key, record in list(self._records.items()):
            if record.blocked_until <= now and now - record.last_failure > forget:
                del self._records[key]
        while len(self._records) >= self.settings.max_tracked:
            oldest = min(self._records, key=lambda k: self._records[k].last_failure)
            del self._records[oldest]


def throttle_key(address: str) -> str:
    """IPv6 clients are throttled per /64 network: one host usually holds a whole /64, so counting single
    addresses would let it try 2^64 times."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def retry_after(seconds: float) -> str:
    """An HTTP Retry-After value: whole seconds, rounded up."""
    return str(max(1, math.ceil(seconds)))
