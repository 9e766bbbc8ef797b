"""Where a result goes on the canvas: document rectangles and the names of the layers results become."""

from __future__ import annotations

Rect = tuple[int, int, int, int]  # x, y, width, height in document pixels


def layer_name(prompt: str, seed: int, limit: int = 40) -> str:
    text = " ".join(prompt.split()) or "untitled"
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return f"{text} · seed {seed}"
