"""Box formats, pairwise IoU and the SSD box coder (encode/decode with variances).

Pure ``jax.numpy``; every function is jit-able and works on any leading batch shape
unless its docstring says otherwise. Conventions:

* ``xyxy`` boxes are ``(xmin, ymin, xmax, ymax)``, normalised to [0, 1] inside the model;
* ``cxcywh`` boxes (the priors) are ``(cx, cy, w, h)``, normalised;
* a degenerate box (zero or negative width or height) has area 0 and IoU 0 with
  everything, itself included: never NaN.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp
from jax import Array

#: torchvision's BoxCoder clamp on the decoded log size ratio: a box at most 62.5 times its
#: prior's side. It only keeps ``exp`` finite for wild offsets; real predictions never reach it.
MAX_LOG_SIZE_RATIO: float = math.log(1000.0 / 16)

#: The SSD paper's / Caffe SSD's prior variances: centre offsets are divided by 0.1,
#: log size ratios by 0.2.
DEFAULT_VARIANCES: tuple[float, float] = (0.1, 0.2)


def xyxy_to_cxcywh(boxes: Array) -> Array:
    """``[..., 4]`` (xmin, ymin, xmax, ymax) -> ``[..., 4]`` (cx, cy, w, h)."""
    xy_min, xy_max = boxes[..., :2], boxes[..., 2:]
    return jnp.concatenate([(xy_min + xy_max) / 2, xy_max - xy_min], axis=-1)


def cxcywh_to_xyxy(boxes: Array) -> Array:
    """``[..., 4]`` (cx, cy, w, h) -> ``[..., 4]`` (xmin, ymin, xmax, ymax)."""
    centre, size = boxes[..., :2], boxes[..., 2:]
    return jnp.concatenate([centre - size / 2, centre + size / 2], axis=-1)


def area(boxes: Array) -> Array:
    """``[..., 4]`` xyxy -> ``[...]`` area; degenerate (inverted) boxes give 0."""
    wh = jnp.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)
    return wh[..., 0] * wh[..., 1]


def iou(a: Array, b: Array) -> Array:
    """Pairwise intersection over union.

    Args:
      a: ``[..., N, 4]`` xyxy boxes.
      b: ``[..., M, 4]`` xyxy boxes (leading dims broadcast against ``a``'s).

    Returns:
      ``[..., N, M]`` IoU in [0, 1]. Pairs whose union is empty (both boxes
      degenerate) and pairs with a degenerate box give 0, never NaN.
    """
    ax0, ay0, ax1, ay1 = (c[..., :, None] for c in jnp.unstack(a, axis=-1))
    bx0, by0, bx1, by1 = (c[..., None, :] for c in jnp.unstack(b, axis=-1))
    area_a = jnp.maximum(ax1 - ax0, 0.0) * jnp.maximum(ay1 - ay0, 0.0)
    area_b = jnp.maximum(bx1 - bx0, 0.0) * jnp.maximum(by1 - by0, 0.0)
    inter = jnp.maximum(jnp.minimum(ax1, bx1) - jnp.maximum(ax0, bx0), 0.0) * jnp.maximum(
        jnp.minimum(ay1, by1) - jnp.maximum(ay0, by0), 0.0
    )
    union = area_a + area_b - inter
    # inter <= min(area_a, area_b), so union > 0 whenever inter > 0; where union is 0
    # the intersection is 0 too, and the safe denominator keeps the result 0.
    return inter / jnp.where(union > 0, union, 1.0)


def encode(
    boxes: Array, priors: Array, variances: Sequence[float] = DEFAULT_VARIANCES
) -> Array:
    """Encode xyxy boxes as SSD offsets against their priors.

    ``((c_box - c_prior) / (v0 * wh_prior), log(wh_box / wh_prior) / v1)``.

    Args:
      boxes: ``[..., 4]`` xyxy boxes (one per prior; must have positive size).
      priors: ``[..., 4]`` (cx, cy, w, h) priors, broadcastable to ``boxes``.
      variances: ``(v0, v1)``.

    Returns:
      ``[..., 4]`` offsets ``(dx, dy, dw, dh)``.
    """
    v0, v1 = variances
    x0, y0, x1, y1 = jnp.unstack(boxes, axis=-1)
    pcx, pcy, pw, ph = jnp.unstack(priors, axis=-1)
    dx = ((x0 + x1) / 2 - pcx) / (v0 * pw)
    dy = ((y0 + y1) / 2 - pcy) / (v0 * ph)
    dw = jnp.log((x1 - x0) / pw) / v1
    dh = jnp.log((y1 - y0) / ph) / v1
    return jnp.stack([dx, dy, dw, dh], axis=-1)


def encode_matched(
    boxes: Array,
    index: Array,
    priors: Array,
    variances: Sequence[float] = DEFAULT_VARIANCES,
) -> Array:
    """``encode(boxes[index], priors)`` for few boxes and many priors, as matching needs.

    Centres and log sizes are computed once per box (``G`` logs, not ``P``), gathered,
    and turned into offsets by an affine map per prior; on XLA:CPU this is faster than
    gathering rows and encoding them (measured: benchmarks/RESULTS.md). Boxes of zero size
    get a finite log (their offsets are garbage but never inf/NaN: callers mask them).

    Args:
      boxes: ``[G, 4]`` xyxy boxes.
      index: ``[P]`` int, which box each prior encodes, in ``[0, G)``.
      priors: ``[P, 4]`` (cx, cy, w, h) priors.

    Returns:
      ``[P, 4]`` offsets.
    """
    v0, v1 = variances
    x0, y0, x1, y1 = jnp.unstack(boxes, axis=-1)
    tiny = jnp.finfo(boxes.dtype).tiny
    per_box = jnp.stack([
        (x0 + x1) / 2, (y0 + y1) / 2,
        jnp.log(jnp.maximum(x1 - x0, tiny)), jnp.log(jnp.maximum(y1 - y0, tiny)),
    ])  # [4, G]
    cx, cy, log_w, log_h = jnp.take(per_box, index, axis=1, mode="clip")  # each [P]
    pcx, pcy, pw, ph = jnp.unstack(priors, axis=-1)
    return jnp.stack([
        (cx - pcx) / (v0 * pw), (cy - pcy) / (v0 * ph),
        (log_w - jnp.log(pw)) / v1, (log_h - jnp.log(ph)) / v1,
    ], axis=-1)


def decode(
    offsets: Array,
    priors: Array,
    variances: Sequence[float] = DEFAULT_VARIANCES,
    max_log_size_ratio: float | None = MAX_LOG_SIZE_RATIO,
) -> Array:
    """Invert :func:`encode`: ``[..., 4]`` offsets + ``[..., 4]`` cxcywh priors -> xyxy.

    ``max_log_size_ratio`` caps ``dw * v1`` and ``dh * v1`` before ``exp`` as
    torchvision's box coder does (``None``: no cap, as ssd.pytorch). Not clipped to the
    image: callers that need that use ``jnp.clip(boxes, 0, 1)``.
    """
    v0, v1 = variances
    dx, dy, dw, dh = jnp.unstack(offsets, axis=-1)
    pcx, pcy, pw, ph = jnp.unstack(priors, axis=-1)
    cx = pcx + dx * v0 * pw
    cy = pcy + dy * v0 * ph
    log_w, log_h = dw * v1, dh * v1
    if max_log_size_ratio is not None:
        log_w = jnp.minimum(log_w, max_log_size_ratio)
        log_h = jnp.minimum(log_h, max_log_size_ratio)
    half_w, half_h = pw * jnp.exp(log_w) / 2, ph * jnp.exp(log_h) / 2
    return jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)
