"""What the server hands the engine and what it gets back (no torch here: the server imports this cheaply).

The server queues the EngineJob itself with its scheduler and answers with the EngineResult itself, and the
scheduler knows a cancelled job by JobCancelled: there are no server-side copies of these types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol.messages import JobParams

from .model_choice import ModelChoice


@dataclass
class EngineJob:
    mode: str  # "img2img" | "inpaint"
    params: JobParams
    canvas: np.ndarray  # H x W x 4 uint8, RGBA
    mask: np.ndarray | None = None  # H x W uint8 (255 = redraw), inpaint only
    # slot -> H x W x 4 RGBA or H x W uint8
    control_images: dict[str, np.ndarray] = field(default_factory=dict)
    # A live frame (the protocol's `live` job): may decode with the preview decoder (TAESD) and run on the
    # accelerated path. Generate/Apply jobs keep False so the layer a painter keeps is always rendered with
    # the full VAE on the plain path.
    live: bool = False
    # The params' model names with their defaults applied, resolved once when the job arrived (the server's
    # EngineWorker.resolve_models); None: the engine resolves them (model_choice.choose_models) when it runs
    # the job.
    models: ModelChoice | None = None


@dataclass
class EngineResult:
    image: np.ndarray  # h x w x 4 uint8 RGBA: the layer to place
    bounds: tuple[int, int, int, int]  # x, y, w, h of that layer within the canvas
    params: dict[str, Any]  # effective parameters (resolved checkpoint name, seed, sampler, ..., seeds)
    timings: dict[str, float]  # seconds per phase
    # A batch's other images (seeds seed+1, seed+2, ...), each the size of `image` and placed at `bounds`.
    extra: list[np.ndarray] = field(default_factory=list)


class JobCancelled(Exception):
    """Raised at a step boundary when the job's is_cancelled() callback answers True."""


class EngineInputError(ValueError):
    """The job's inputs are unusable (wrong shapes, a missing control image, malformed pose data).

    The message is written for the painter; the server reports it as a bad request.
    """
