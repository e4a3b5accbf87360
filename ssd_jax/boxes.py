"""Box formats, pairwise IoU and the SSD box coder (encode/decode with variances).

Pure ``jax.numpy``; every function is jit-able and works on any leading batch shape
unless its docstring says otherwise. Conventions (DESIGN.md section 3):

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
    area_a = area(a)[..., :, None]
    area_b = area(b)[..., None, :]
    top_left = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    bottom_right = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = jnp.maximum(bottom_right - top_left, 0.0)
    inter = wh[..., 0] * wh[..., 1]
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
    target = xyxy_to_cxcywh(boxes)
    d_centre = (target[..., :2] - priors[..., :2]) / (v0 * priors[..., 2:])
    d_size = jnp.log(target[..., 2:] / priors[..., 2:]) / v1
    return jnp.concatenate([d_centre, d_size], axis=-1)


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
    centre = priors[..., :2] + offsets[..., :2] * v0 * priors[..., 2:]
    log_ratio = offsets[..., 2:] * v1
    if max_log_size_ratio is not None:
        log_ratio = jnp.minimum(log_ratio, max_log_size_ratio)
    size = priors[..., 2:] * jnp.exp(log_ratio)
    return cxcywh_to_xyxy(jnp.concatenate([centre, size], axis=-1))
