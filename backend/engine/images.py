"""Pixel conversions between the protocol's uint8 arrays and the VAE's tensors, and resizing (padding to the
generation size is region.py's)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

LATENT_SCALE = 8  # SD1.5's VAE downsamples by 8: image sides must be multiples of it


def check_rgba(canvas: np.ndarray, what: str = "canvas") -> None:
    if canvas.dtype != np.uint8 or canvas.ndim != 3 or canvas.shape[2] != 4:
        raise ValueError(
            f"The {what} must be an H x W x 4 uint8 RGBA array, got {canvas.dtype} {canvas.shape}."
        )
    if canvas.shape[0] < 1 or canvas.shape[1] < 1:
        raise ValueError(f"The {what} is empty ({canvas.shape[1]}x{canvas.shape[0]}).")


def flatten_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGB of an RGBA image composited over white.

    Painters start on transparent layers; transparent pixels carry arbitrary (often black) RGB that would read
    as a black canvas. Over white, an empty layer is a blank sheet of paper. Opaque pixels keep their exact
    RGB.
    """
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if bool((alpha == 255).all()):
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint32)
    blended = (rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return blended.astype(np.uint8)


def to_tensor(rgb: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x H x W in [-1, 1].

    Same arithmetic, in the same order and precision, as diffusers' VaeImageProcessor (float32 / 255, then 2x
    - 1), so that the agreement tests can compare bit for bit on the CPU.
    """
    array = rgb[None].astype(np.float32) / 255.0
    # A transposed view, not a contiguous copy: its memory layout picks the convolution kernels, and matching
    # diffusers' layout keeps the VAE's float results bit-identical to the reference pipelines.
    tensor = torch.from_numpy(array.transpose(0, 3, 1, 2))
    return (2.0 * tensor - 1.0).to(device=device, dtype=dtype)


def control_to_tensor(rgb: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x H x W in [0, 1]: ControlNets take their hint images unnormalized."""
    array = rgb[None].astype(np.float32) / 255.0
    # Contiguous, as diffusers' ControlNet pipelines pass hints (their layout picks the conv kernels).
    return torch.from_numpy(array.transpose(0, 3, 1, 2)).contiguous().to(device=device, dtype=dtype)


def to_unit_float(decoded: torch.Tensor) -> np.ndarray:
    """VAE output (1 x 3 x H x W in about [-1, 1]) -> H x W x 3 float32 in [0, 1]."""
    image = (decoded / 2 + 0.5).clamp(0, 1)
    return image[0].permute(1, 2, 0).float().cpu().numpy()


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, rounding like diffusers' numpy_to_pil."""
    return (unit * 255).round().astype(np.uint8)


def with_alpha(rgb: np.ndarray, alpha: np.ndarray | int = 255) -> np.ndarray:
    height, width = rgb.shape[:2]
    out = np.empty((height, width, 4), dtype=np.uint8)
    out[..., :3] = rgb
    out[..., 3] = alpha
    return out


def resize_rgb(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resample an H x W x 3 uint8 image; Lanczos keeps edges crisp both when enlarging and shrinking."""
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))


def resize_gray(gray: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resample an H x W uint8 single-channel image (bilinear: soft mask edges stay soft and in range)."""
    if gray.shape[1] == width and gray.shape[0] == height:
        return gray
    return np.asarray(Image.fromarray(gray).resize((width, height), Image.Resampling.BILINEAR))
