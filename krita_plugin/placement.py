"""Where a result goes on the canvas, and what the preview layer must clear (pure geometry)."""

from __future__ import annotations

from dataclasses import dataclass

Rect = tuple[int, int, int, int]  # x, y, width, height in document pixels


@dataclass(frozen=True)
class Placement:
    rect: Rect
    pixels: bytes  # BGRA8, rect width x rect height
    needs_scaling: bool = False  # the backend sent another size than its bounds: scale into the rect


def place(bounds: list[int], width: int, height: int, pixels: bytes) -> Placement:
    """A result's pixels go to its bounds (document coordinates, as the backend reports them)."""
    x, y, w, h = bounds
    if len(pixels) != width * height * 4:
        raise ValueError(
            f"result has {len(pixels)} bytes, expected {width * height * 4} for {width}x{height}"
        )
    return Placement((x, y, w, h), pixels, needs_scaling=(w, h) != (width, height))


def uncovered(previous: Rect | None, current: Rect) -> list[Rect]:
    """Parts of the previous rectangle the new one does not cover (to be cleared), as up to 4 strips."""
    if previous is None:
        return []
    px, py, pw, ph = previous
    cx, cy, cw, ch = current
    left, top = max(px, cx), max(py, cy)
    right, bottom = min(px + pw, cx + cw), min(py + ph, cy + ch)
    if right <= left or bottom <= top:
        return [previous]
    strips: list[Rect] = []
    if top > py:
        strips.append((px, py, pw, top - py))
    if bottom < py + ph:
        strips.append((px, bottom, pw, py + ph - bottom))
    if left > px:
        strips.append((px, top, left - px, bottom - top))
    if right < px + pw:
        strips.append((right, top, px + pw - right, bottom - top))
    return strips


def layer_name(prompt: str, seed: int, limit: int = 40) -> str:
    text = " ".join(prompt.split()) or "untitled"
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return f"{text} · seed {seed}"
