"""Regions: a prompt for part of the image (protocol/regions.py), by blending predictions per pixel.

Each step runs one UNet call on the batch [uncond (with CFG), document, region 1, ...]: every cond row reads
its own prompt over the whole image, and the rows' predictions are blended per latent pixel by coverage
before CFG (`loop.blend_rows`). A region's coverage is its mask cropped and scaled as the work area is
(`Region`), then area-averaged to latent cells (soft edges blend). A region row weighs its coverage, the
document row what the regions leave (1 - their clipped sum); where regions overlap past full coverage the
weights are normalised. A row that weighs nothing anywhere is dropped, so one full-canvas region is exactly
the plain job with `region_prompt(region, document)`, and regions outside an inpaint work area change nothing.

The batch rows past the first cond row copy that row's added conditioning (SDXL's time ids, an IP-Adapter's
image embeddings, ...), except SDXL's pooled text embedding, which is each prompt's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from protocol.regions import region_prompt

from .images import LATENT_SCALE
from .region import Region

if TYPE_CHECKING:
    from protocol.messages import JobParams

    from .conditioning import Conditioner
    from .loop import Guidance
    from .model_choice import ModelChoice


@dataclass
class RegionRows:
    """The cond rows that count for one generation: their prompts and per-pixel blend weights."""

    prompts: list[str]
    weights: torch.Tensor  # R x 1 x h x w float32, summing to 1 at every latent pixel

    @property
    def plain(self) -> bool:
        """One row weighing 1 everywhere: the plain guidance with that prompt, no blend."""
        return len(self.prompts) == 1


def region_masks(
    images: dict[str, np.ndarray], params: JobParams, height: int, width: int
) -> list[np.ndarray]:
    """The regions' masks (H x W uint8, the canvas's size) from the job's image slots; else ValueError."""
    masks: list[np.ndarray] = []
    for each in params.regions:
        mask = images.get(each.mask)
        if mask is not None and mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[..., 0]
        if mask is None or mask.dtype != np.uint8 or mask.shape != (height, width):
            raise ValueError(f"Region mask {each.mask!r} must be a gray8 image the size of the canvas.")
        masks.append(mask)
    return masks


def coverage(mask: np.ndarray, region: Region) -> torch.Tensor:
    """A canvas-sized gray8 region mask -> 1 x 1 x h x w coverage in [0, 1] of the generation's latent cells:
    cropped and scaled like the work area (padding covered by nothing), a cell the mean of its 8x8 pixels."""
    pixels = region.gray_to_generation(region.crop(mask))
    unit = torch.from_numpy(pixels.astype(np.float32) / 255.0)[None, None]
    return torch.nn.functional.avg_pool2d(unit, LATENT_SCALE)


def region_rows(document: str, regions: Sequence[tuple[str, torch.Tensor]]) -> RegionRows | None:
    """The rows for the document's prompt and the regions' (prompt, coverage); None: no region counts (the
    plain guidance serves). Region prompts are joined with the document's (`region_prompt`)."""
    counted = [(text, cover) for text, cover in regions if bool((cover > 0).any())]
    if not counted:
        return None
    covers = torch.cat([cover for _, cover in counted])
    total = covers.sum(dim=0, keepdim=True)
    document_weight = 1.0 - total.clamp(max=1.0)
    # Where regions overlap past full coverage the document weighs 0 and they share by their coverage.
    norm = total.clamp(min=1.0)
    prompts = [region_prompt(text, document) for text, _ in counted]
    weights = covers / norm
    if bool((document_weight > 0).any()):
        prompts.insert(0, document)
        weights = torch.cat([document_weight, weights])
    return RegionRows(prompts, weights)


def expand_added(value: Any, batched: bool, rows: int) -> Any:
    """An added-conditioning value of the plain batch ([uncond,] cond) with its cond row repeated for `rows`
    cond rows (a tensor, or a list/tuple of them)."""
    if isinstance(value, (list, tuple)):
        expanded = [expand_added(each, batched, rows) for each in cast("Sequence[Any]", value)]
        return expanded if isinstance(value, list) else tuple(expanded)
    cond = value[1:2] if batched else value[:1]
    parts = ([value[:1]] if batched else []) + [cond] * rows
    return torch.cat(parts)


def regional_guidance(plain: Guidance, rows: RegionRows, made: Guidance) -> Guidance:
    """The regions' guidance: `made` (the Conditioner's guidance for `rows.prompts`, one cond row each) with
    the plain guidance's other added conditioning repeated per row, and the blend weights."""
    if rows.plain:
        if plain.added is None:
            return made
        # Everything but the prompt's own pooled embedding (SDXL) comes from the plain guidance, as it is.
        return replace(made, added={**plain.added, **(made.added or {})})
    added = None
    if plain.added is not None:
        count = len(rows.prompts)
        added = {key: expand_added(value, plain.batched, count) for key, value in plain.added.items()}
        added.update(made.added or {})
    weights = rows.weights.to(made.cond.device, made.cond.dtype)
    return replace(made, added=added, weights=weights)


def apply_regions(
    plain: Guidance,
    conditioner: Conditioner,
    components: Any,
    choice: ModelChoice,
    params: JobParams,
    masks: Sequence[np.ndarray],
    region: Region,
) -> tuple[Guidance, int]:
    """The job's guidance with its regions (masks in the order of `params.regions`) over the generation
    `region`, and how many regions count there; the plain guidance when none does."""
    covers = [coverage(mask, region) for mask in masks]
    rows = region_rows(params.prompt, [(r.prompt, c) for r, c in zip(params.regions, covers, strict=True)])
    if rows is None:
        return plain, 0
    made = conditioner.guidance(components, choice, params, rows.prompts)
    counted = sum(1 for cover in covers if bool((cover > 0).any()))
    return regional_guidance(plain, rows, made), counted
