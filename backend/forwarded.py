"""The painter's own address when connections arrive through a proxy the server trusts (--trusted-proxy).

Behind HAProxy every connection comes from HAProxy's address, so per-address caps, the wrong-token throttle
and (without tokens) fair turns would lump all painters together. HAProxy's `option forwardfor` appends the
address it received the connection from to X-Forwarded-For; that last hop is the one the trusted proxy saw
itself, so it is the one taken. Earlier hops were written by whoever sent the request and prove nothing.
A peer that is not trusted may send any X-Forwarded-For it likes: it is ignored, or anyone could pick the
address its guesses are counted against.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
FORWARDED_FOR = "X-Forwarded-For"


def parse_proxy(text: str) -> IPNetwork:
    """A proxy's address (`10.0.0.5`, `::1`) or network (`10.0.0.0/24`); ValueError with the reason."""
    try:
        return ipaddress.ip_network(text.strip().strip("[]"), strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address or network (such as 10.0.0.5 or 10.0.0.0/24)"
        ) from None


def is_trusted(peer: str, proxies: Iterable[IPNetwork]) -> bool:
    address = _ip(peer)
    if address is None:
        return False
    return any(address.version == network.version and address in network for network in proxies)


def last_forwarded_hop(headers: Any) -> str | None:
    """The last address in X-Forwarded-For (over all its header lines), if it is an IP address."""
    lines = headers.get_all(FORWARDED_FOR) if hasattr(headers, "get_all") else [headers.get(FORWARDED_FOR)]
    hops = [hop.strip() for line in lines if line for hop in str(line).split(",")]
    if not hops:
        return None
    address = _ip(hops[-1])
    return str(address) if address is not None else None


def forwarded_address(peer: str, request: Any, proxies: tuple[IPNetwork, ...]) -> str:
    """The client address to count: the proxy's last X-Forwarded-For hop when `peer` is a trusted proxy
    and the hop is a valid address, else `peer` itself (a trusted proxy's own checks count against it)."""
    if not proxies or request is None or not is_trusted(peer, proxies):
        return peer
    return last_forwarded_hop(request.headers) or peer


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; they are the IPv4 address.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
