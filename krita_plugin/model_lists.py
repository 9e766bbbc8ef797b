"""What the model pickers offer, from what the backend says of its files (no Qt: tested on its own).

The backend lists every file of each kind, marks the ones it knows it can't use with why (`unusable`), names
each file's model family where the file's header says (`families`), and says which checkpoint "Backend
default" means. The pickers show the family beside each checkpoint, grey out unusable files with the reason
as their tooltip, and offer only the LoRAs that fit the chosen checkpoint's family (a LoRA whose family the
backend can't tell is offered: it may fit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._compat import protocol

DEFAULT_LABEL = "Backend default"


@dataclass(frozen=True)
class ModelListing:
    models: dict[str, list[str]] = field(default_factory=dict[str, list[str]])
    families: dict[str, dict[str, str]] = field(default_factory=dict[str, dict[str, str]])
    unusable: dict[str, dict[str, str]] = field(default_factory=dict[str, dict[str, str]])
    default_checkpoint: str | None = None

    @classmethod
    def of(cls, message: Any) -> ModelListing:
        """From a Welcome or a ModelList (older backends send neither families nor a default)."""
        models = {k: list(v) for k, v in message.models.items() if isinstance(v, list)}
        return cls(
            models=models,
            families=dict(getattr(message, "families", {}) or {}),
            unusable=dict(getattr(message, "unusable", {}) or {}),
            default_checkpoint=getattr(message, "default_checkpoint", None),
        )

    def names(self, kind: str) -> list[str]:
        return [name for name in self.models.get(kind) or [] if isinstance(name, str)]

    def family(self, kind: str, name: str) -> str | None:
        return self.families.get(kind, {}).get(name)

    def why_unusable(self, kind: str, name: str) -> str | None:
        return self.unusable.get(kind, {}).get(name)

    def checkpoint_family(self, checkpoint: str) -> str | None:
        """The family of the chosen checkpoint ("" = the backend default)."""
        return self.family("checkpoints", checkpoint or self.default_checkpoint or "")


@dataclass(frozen=True)
class Choice:
    name: str  # what the job names ("" = the default entry)
    label: str
    why_not: str | None = None  # set: shown greyed out, this as its tooltip


def checkpoint_choices(listing: ModelListing) -> list[Choice]:
    """The default entry first (naming the checkpoint it stands for), then each checkpoint with its family."""
    default = listing.default_checkpoint
    choices = [
        Choice("", f"{DEFAULT_LABEL} ({_with_family(listing, default)})" if default else DEFAULT_LABEL)
    ]
    for name in listing.names("checkpoints"):
        choices.append(Choice(name, _with_family(listing, name), listing.why_unusable("checkpoints", name)))
    return choices


def lora_choices(listing: ModelListing, checkpoint: str) -> list[Choice]:
    """The style LoRAs for the chosen checkpoint: the LCM-LoRA is the backend's business (it picks the one of
    the checkpoint's family), and LoRAs of another family than the checkpoint's are left out."""
    wanted = listing.checkpoint_family(checkpoint)
    choices = [Choice("", "None")]
    for name in listing.names("loras"):
        if "lcm" in name.lower():
            continue
        family = listing.family("loras", name)
        if wanted is not None and family is not None and family != wanted:
            continue
        choices.append(Choice(name, name, listing.why_unusable("loras", name)))
    return choices


def _with_family(listing: ModelListing, name: str) -> str:
    family = listing.family("checkpoints", name)
    return f"{name} · {protocol.family_label(family)}" if family else name
