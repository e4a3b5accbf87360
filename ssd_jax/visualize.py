"""Pictures: detections drawn on an image (boxes, class names, scores).

Precision/recall curves live in ``ssd_jax.evaluation.plots``; the priors and receptive
field of each source map are drawn by ``launch.py inspect --draw``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Distinct colours cycled over classes (tab10).
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    score_threshold: float = 0.3,
) -> Image.Image:
    """Draw the detections scoring at least ``score_threshold``.

    Args:
      image: ``[H, W, 3]`` uint8 RGB.
      boxes: ``[K, 4]`` xyxy in pixels of ``image``.
      classes: ``[K]`` labels 1..C (``class_names[c - 1]``).
      scores: ``[K]`` in [0, 1].

    Returns:
      A new PIL image; boxes are drawn in score order, the best on top.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8, got {image.shape} {image.dtype}")
    out = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(out)
    keep = np.nonzero(np.asarray(scores) >= score_threshold)[0]
    for k in keep[np.argsort(np.asarray(scores)[keep])]:  # ascending: best drawn last
        c = int(classes[k])
        if not 1 <= c <= len(class_names):
            raise ValueError(f"detection {k}: class {c} outside 1..{len(class_names)}")
        colour = _PALETTE[(c - 1) % len(_PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        label = f"{class_names[c - 1]} {float(scores[k]):.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), label)
        ty = y0 - (bottom - top) - 2 if y0 - (bottom - top) - 2 >= 0 else y0
        draw.rectangle([x0, ty, x0 + (right - left) + 4, ty + (bottom - top) + 2], fill=colour)
        draw.text((x0 + 2, ty), label, fill=(255, 255, 255))
    return out


def image_grid(images: Sequence[Image.Image], columns: int = 4, tile: int = 256, pad: int = 4) -> Image.Image:
    """``images`` side by side, ``columns`` per row, each scaled to fit a ``tile`` x ``tile``
    cell (aspect kept) on a white background."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = (len(images) + columns - 1) // columns
    out = Image.new("RGB", (columns * (tile + pad) + pad, rows * (tile + pad) + pad), (255, 255, 255))
    for i, im in enumerate(images):
        scale = tile / max(im.size)
        fitted = im.convert("RGB").resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                                          Image.BILINEAR)
        r, c = divmod(i, columns)
        out.paste(fitted, (pad + c * (tile + pad), pad + r * (tile + pad)))
    return out
