"""VAE tiling (backend/engine/vae.py, context.py): diffusers' own tiled encode and decode when the whole image
ran out of device memory, on any device and in low-VRAM mode; never otherwise (a tiled result differs
slightly); the result says when it was used."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tests.backend.test_engine_support import job, make_canvas, make_engine, run, tiny_parts

pytestmark = pytest.mark.slow
LARGE = (192, 160)  # pixels: above the tiny VAE's 128 px tile


def render(width: int, height: int, **settings: Any) -> Any:
    engine, _ = make_engine(working_size=False, **settings)
    return run(engine, job(make_canvas(width, height, seed=21), strength=0.6))


def tiled_reference(width: int, height: int) -> np.ndarray:
    vae = tiny_parts().vae
    vae.enable_tiling()
    try:
        return render(width, height).image
    finally:
        vae.disable_tiling()


def test_images_that_fit_are_never_tiled_low_vram_included() -> None:
    """A tiled image differs from the whole one: without a memory error, neither mode tiles, and low-VRAM
    mode's image stays the resident one's."""
    whole = render(*LARGE)
    assert "vae_tiled" not in whole.params
    low = render(*LARGE, low_vram=True)
    assert "vae_tiled" not in low.params and np.array_equal(low.image, whole.image)
    difference = np.abs(tiled_reference(*LARGE).astype(int) - whole.image.astype(int))
    assert 0 < difference.mean() < 20  # what tiling would have given: close, not the same


def test_out_of_memory_on_the_whole_image_is_repeated_in_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole-image VAE calls fail as a full GPU fails them; the job still gives its image, tiled, and the
    tiles themselves (each within the memory) run."""
    vae = tiny_parts().vae
    sides = {"encoder": vae.tile_sample_min_size, "decoder": vae.tile_latent_min_size}
    for part, limit in sides.items():
        module = getattr(vae, part)
        forward = module.forward

        def bounded(sample: torch.Tensor, *args: Any, _call: Any = forward, _side: int = limit, **kw: Any):
            if max(sample.shape[-2:]) > _side:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
            return _call(sample, *args, **kw)

        monkeypatch.setattr(module, "forward", bounded)
    result = render(*LARGE)
    assert result.params["vae_tiled"] is True
    monkeypatch.undo()
    assert np.array_equal(result.image, tiled_reference(*LARGE))
    assert not vae.use_tiling  # switched back: the next job decodes whole again
