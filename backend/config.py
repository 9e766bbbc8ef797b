"""Everything the server is started with; filled from the command line or by tests."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from protocol import DEFAULT_PORT, Limits

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN_ENV = "KLD_TOKEN"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    models_dir: Path = REPO_ROOT / "models"
    extra_model_dirs: tuple[Path, ...] = ()
    model_config_dir: Path | None = None
    device: str | None = None
    limits: Limits = field(default_factory=Limits)
    preload: bool = True
    accelerate: str = "auto"  # live path: auto (compile + CUDA graphs on CUDA), off, compile, cuda_graphs

    def binding_problem(self) -> str | None:
        """Why this configuration must not start, in words for the person starting it; None if it may."""
        if self.token is None and not is_loopback(self.host):
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
