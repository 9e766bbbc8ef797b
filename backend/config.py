"""Everything the server is started with; filled from the command line or by tests."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from protocol import DEFAULT_PORT, Limits

from .auth_throttle import ThrottleSettings
from .forwarded import IPNetwork
from .user_limits import UserLimitSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN_ENV = "KLD_TOKEN"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    # Further access tokens (--token given more than once). With tokens, each token is one user for fair
    # turns (backend/turns.py), so people on one machine or behind one address are told apart.
    more_tokens: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    models_dir: Path = REPO_ROOT / "models"
    extra_model_dirs: tuple[Path, ...] = ()
    model_config_dir: Path | None = None
    device: str | None = None
    limits: Limits = field(default_factory=Limits)
    preload: bool = True
    accelerate: str = "auto"  # live path: auto (compile + CUDA graphs on CUDA), off, compile, cuda_graphs
    # Models wait in host memory and come to the GPU one phase at a time (6-8 GB cards; same images, slower).
    low_vram: bool = False
    # Open WebSocket connections, in all and per client address (loopback clients share one address).
    max_connections: int = 32
    max_connections_per_address: int = 8
    # A client with more than limits.max_unread_bytes of replies unread for this long is disconnected.
    unread_timeout_s: float = 30.0
    # SIGTERM: how long jobs already taken in may run before what is left is cancelled (backend/drain.py).
    drain_timeout_s: float = 20.0
    # Wrong access tokens from one address: a few free, then blocks doubling in length (with --token only).
    auth_throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    # Proxies (HAProxy) whose X-Forwarded-For is believed: behind one, a client's address for the caps, the
    # throttle and fair turns is the last hop it added (backend/forwarded.py). Others' header is ignored.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # Per user, across its connections: final jobs queued, images asked for a minute (backend/user_limits.py).
    user_limits: UserLimitSettings = field(default_factory=UserLimitSettings)

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every access token a client may present; empty: none needed."""
        return (() if self.token is None else (self.token,)) + self.more_tokens

    @property
    def max_unread_hard_bytes(self) -> int:
        """Unread bytes that disconnect a client at once: room for two of the largest results beyond the
        soft limit, so a client that reads, only slower than results are made, is not dropped for one."""
        # An upscale job's result is larger than any image a job may send (protocol/upscale.py).
        limits = self.limits
        largest_result = max(limits.max_width * limits.max_height, limits.max_upscale_side**2) * 4
        return self.limits.max_unread_bytes + 2 * largest_result

    def binding_problem(self) -> str | None:
        """Why this configuration must not start, in words for the person starting it; None if it may."""
        if not self.tokens and not is_loopback(self.host):
            return (
                f"Refusing to listen on {self.host!r} without an access token: anyone on the network "
                f"could drive "
                f"this GPU. Pass --token SECRET (or set {TOKEN_ENV}), or listen on 127.0.0.1."
            )
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
