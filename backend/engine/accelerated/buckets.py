"""Shape buckets: accelerated model calls are specialised to one input shape each (a compiled kernel set, a
captured CUDA graph). Rounding the generation size up to a bucket means a painter who resizes the canvas by a
few pixels reuses the same graphs instead of triggering a recompile; the result is cropped back, so the output
size never changes.
"""

from __future__ import annotations

from ..images import LATENT_SCALE

# 64 px = 8 latents: the SD1.5 UNet halves latents three times, so this is also its natural size multiple.
DEFAULT_BUCKET = 64


def bucket_side(side: int, bucket: int = DEFAULT_BUCKET) -> int:
    """`side` (pixels, a multiple of 8) rounded up to the bucket multiple; a bucket <= 8 leaves it as is."""
    if bucket <= LATENT_SCALE:
        return side
    return -(-side // bucket) * bucket
