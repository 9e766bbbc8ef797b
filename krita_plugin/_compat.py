"""Imports that differ between the installed plugin and the repository checkout.

Installed, the shared protocol package sits inside the plugin (`krita_live_diffusion/protocol/`) and the
pure-Python `websockets` under `krita_live_diffusion/vendor/`. In the repository the protocol is a top-level
package and `websockets` comes from the development environment.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # For the type checker only: the repository's protocol package, found by path (it is a sibling of the
    # plugin here, and the installed plugin carries the same package inside it).
    from .. import protocol
else:
    try:
        from . import protocol  # installed layout
    except ImportError:
        import protocol  # repository layout

VENDOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor")

__all__ = ["VENDOR_DIR", "connect_websocket", "protocol"]


def _load_websockets() -> Any:
    # The vendored copy comes first so Krita never picks up a system websockets of another API generation.
    if os.path.isdir(VENDOR_DIR) and VENDOR_DIR not in sys.path:
        sys.path.insert(0, VENDOR_DIR)
    import websockets

    return websockets


def connect_websocket(
    url: str, headers: dict[str, str], max_size: int, open_timeout: float, ssl_context: Any = None
) -> Any:
    """An awaitable websocket connection, with the keyword names of whichever websockets API is present;
    `ssl_context` (wss:// only) says which certificates to trust."""
    _load_websockets()
    common: dict[str, Any] = {
        "max_size": max_size,
        "open_timeout": open_timeout,
        # Raw pixels over loopback: compressing them costs more time than it saves.
        "compression": None,
        "ping_interval": 20,
        # A backend busy loading a checkpoint may answer pings late; only a long silence means it is gone.
        "ping_timeout": 60,
    }
    if ssl_context is not None:
        common["ssl"] = ssl_context
    try:
        from websockets.asyncio.client import connect  # websockets >= 13
    except ImportError:  # pragma: no cover - older websockets (legacy API)
        from websockets.legacy.client import connect  # type: ignore[no-redef]

        return connect(url, extra_headers=headers, **common)
    return connect(url, additional_headers=headers, **common)
