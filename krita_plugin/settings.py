"""What the painter chose in the panel, as plain data the request builder and the tests can use without Qt."""

from __future__ import annotations

import json
import random
import secrets
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ._compat import protocol

MAX_SEED = 2**31 - 1  # what a spin box can hold; the protocol allows more
MAX_BATCH = 8
# The working-resolution multipliers the panel offers (1.0 = the model's native size, e.g. 512x512 for SD1.5).
RESOLUTIONS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def new_session_key() -> str:
    """A random id for one run of Krita. A balancer in front of several backends hashes on it, so a painter's
    connections, reconnects included, go to the same backend while it is up (its caches stay warm)."""
    return secrets.token_urlsafe(12)


# The key this Krita sends (every docker of one Krita is one painter): kept for the whole run, never saved.
SESSION_KEY = new_session_key()


@dataclass
class ConnectionSettings:
    address: str = f"127.0.0.1:{protocol.DEFAULT_PORT}"
    token: str = ""
    # wss:// only: a PEM file of the certificate authority that signed the server's certificate (a studio's
    # own CA), trusted besides the system's; "" trusts the system's alone.
    ca_file: str = ""

    @property
    def secure(self) -> bool:
        """Whether the connection is TLS (a wss:// address)."""
        return self.url.startswith("wss://")

    @property
    def url(self) -> str:
        """Accepts what a painter types: 'host:port', 'ws://host:port', 'wss://host:port' (or http(s)://) or
        just 'host'. The default port is the backend's, with or without TLS: a TLS terminator on 443 needs
        ':443' typed."""
        address = self.address.strip() or f"127.0.0.1:{protocol.DEFAULT_PORT}"
        if "://" not in address:
            address = "ws://" + address
        scheme, rest = address.split("://", 1)
        # Addresses pasted from a browser or a deploy guide: http(s) is the same server's ws(s).
        scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme.lower())
        host_port = rest.split("/", 1)[0]
        if ":" not in host_port.rsplit("]", 1)[-1]:
            rest = rest.replace(host_port, f"{host_port}:{protocol.DEFAULT_PORT}", 1)
        return f"{scheme}://{rest}"


@dataclass
class ControlLayerChoice:
    """A control layer picked in the panel, by Krita's node id (stable across renames)."""

    node_id: str = ""
    strength: float = 1.0

    @property
    def enabled(self) -> bool:
        return bool(self.node_id)


@dataclass
class GenerationSettings:
    """What shapes a job. Whether it inpaints is not a setting: a selection in the document means inpaint."""

    prompt: str = ""
    negative_prompt: str = ""
    strength: float = 0.5
    seed: int = 0
    seed_locked: bool = False
    steps: int = 4
    cfg: float = 1.0
    sampler: str = "lcm"
    checkpoint: str = ""  # "" = the backend's default
    lora: str = ""
    lora_strength: float = 1.0
    resolution: float = 1.0  # working-resolution multiplier of the model's native size
    batch: int = 1  # Generate: variations with consecutive seeds
    reference_model: str = ""  # the IP-Adapter file of the reference images ("" = the server's pick)
    # Control kind name (protocol.CONTROL_KINDS) -> its guidance layer; a kind not listed guides nothing.
    guidance: dict[str, ControlLayerChoice] = field(default_factory=dict)

    def choice(self, kind: str) -> ControlLayerChoice:
        return self.guidance.get(kind) or ControlLayerChoice()

    def chosen_guidance(self) -> dict[str, ControlLayerChoice]:
        """The kinds of the protocol's table that have a layer chosen, in the table's order."""
        return {
            kind: self.guidance[kind]
            for kind in protocol.CONTROL_KINDS
            if kind in self.guidance and self.guidance[kind].enabled
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GenerationSettings:
        """Restores saved settings; anything missing or malformed keeps its default."""
        settings = cls()
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            return settings
        if not isinstance(data, dict):
            return settings
        for item in fields(cls):
            if item.name not in data:
                continue
            value = data[item.name]
            current = getattr(settings, item.name)
            if isinstance(current, bool):
                setattr(settings, item.name, bool(value))
            elif isinstance(current, (int, float, str)) and isinstance(value, type(current)):
                setattr(settings, item.name, value)
            elif isinstance(current, float) and isinstance(value, int):
                setattr(settings, item.name, float(value))
        settings.guidance = _read_guidance(data)
        settings.batch = max(1, min(MAX_BATCH, settings.batch))
        if settings.resolution not in RESOLUTIONS:
            settings.resolution = 1.0
        return settings


def _read_guidance(data: dict[str, Any]) -> dict[str, ControlLayerChoice]:
    """The strength of each kind's guidance. Layer ids belong to one document, so none carries over between
    sessions. Settings saved before the kinds came from the protocol's table held "scribble" and "pose" as
    fields of their own."""
    saved = data.get("guidance")
    entries: dict[Any, Any] = dict(saved) if isinstance(saved, dict) else {}
    for old in ("scribble", "pose"):
        if old not in entries and isinstance(data.get(old), dict):
            entries[old] = data[old]
    return {
        kind: ControlLayerChoice("", _float(value.get("strength"), 1.0))
        for kind, value in entries.items()
        if isinstance(kind, str) and isinstance(value, dict)
    }


def _float(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def random_seed(rng: random.Random | None = None) -> int:
    return (rng or random).randint(0, MAX_SEED)
