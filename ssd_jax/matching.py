"""Match ground truth to priors and build the per-prior training targets.

SSD's matching (paper section 2.2, ssd.pytorch ``match``, torchvision ``SSDMatcher``):

1. every real truth box claims the prior it overlaps most, even below the threshold
   (a truth that overlaps no prior at all, e.g. a degenerate box, claims nothing);
   when several truths claim the same prior, the later truth wins, as in
   ssd.pytorch's loop over truths;
2. every other prior whose best IoU with a truth is >= ``iou_threshold`` takes that
   truth (the first one on ties, as ``argmax``);
3. every remaining prior is background (label 0).

Ground-truth slots with label 0 are padding and take part in nothing. All shapes are
fixed (``G`` truth slots, ``P`` priors), so :func:`match` jits, and :func:`match_batch`
is its ``vmap`` over a batch.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import Array, lax

from ssd_jax import boxes as box_ops


def _first_argmax(x: Array, x_max: Array, axis: int) -> Array:
    """Index of the first maximum of ``x`` along ``axis`` given the maximum itself.

    Same result as ``jnp.argmax``, but two plain reductions: XLA:CPU's variadic
    (value, index) reduce of ``argmax`` is much slower over the long prior axis
    (measured: benchmarks/RESULTS.md).
    """
    size = x.shape[axis]
    index = lax.broadcasted_iota(jnp.int32, x.shape, axis)
    hit = x == jnp.expand_dims(x_max, axis)
    return jnp.min(jnp.where(hit, index, size), axis=axis)


def match(
    gt_boxes: Array,
    gt_labels: Array,
    priors: Array,
    iou_threshold: float = 0.5,
    variances: Sequence[float] = box_ops.DEFAULT_VARIANCES,
) -> tuple[Array, Array]:
    """Targets of one image.

    Args:
      gt_boxes: ``[G, 4]`` float xyxy truth boxes, normalised.
      gt_labels: ``[G]`` int truth labels in 1..C; 0 marks a padding slot.
      priors: ``[P, 4]`` float (cx, cy, w, h) priors, normalised.
      iou_threshold: IoU from which a prior takes a truth (step 2).
      variances: the box coder's ``(v0, v1)``.

    Returns:
      ``loc_targets [P, 4]`` float32: encoded offsets of each prior's truth (0 for
      background priors, always finite), and ``labels [P]`` int32: the truth's class
      for positive priors, 0 for background.
    """
    if isinstance(iou_threshold, (int, float)) and not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    num_gt = gt_boxes.shape[0]
    num_priors = priors.shape[0]
    real = gt_labels > 0  # [G]
    # Padding slots become empty boxes: IoU 0 with every prior, so they can never reach
    # the threshold, and they claim no prior (below). Masking the [G] boxes is cheaper
    # than masking the [G, P] overlaps.
    gt_boxes = jnp.where(real[:, None], gt_boxes, 0.0)
    overlaps = box_ops.iou(gt_boxes, box_ops.cxcywh_to_xyxy(priors))  # [G, P]

    # Step 2 candidates: each prior's best truth (first on ties; a prior that overlaps
    # nothing may point at a padding slot, but it is never positive).
    best_truth_iou = jnp.max(overlaps, axis=0)  # [P]
    best_truth = _first_argmax(overlaps, best_truth_iou, axis=0)  # [P]

    # Step 1: each real truth's best prior. A scatter-max over truth indices makes the
    # later truth win a shared prior, deterministically.
    best_prior_iou = jnp.max(overlaps, axis=1)  # [G]
    best_prior = _first_argmax(overlaps, best_prior_iou, axis=1)  # [G]
    claims = real & (best_prior_iou > 0)
    forced = jnp.full((num_priors,), -1, jnp.int32).at[best_prior].max(
        jnp.where(claims, jnp.arange(num_gt, dtype=jnp.int32), -1)
    )  # [P]: claiming truth or -1

    is_forced = forced >= 0
    matched = jnp.where(is_forced, forced, best_truth)  # [P]
    positive = is_forced | (best_truth_iou >= iou_threshold)
    labels = jnp.where(positive, gt_labels[matched], 0).astype(jnp.int32)

    # Background priors get offsets 0; encode_matched keeps them finite even when the
    # matched slot is padding or degenerate, so nothing inf/NaN reaches the loss.
    loc_targets = box_ops.encode_matched(gt_boxes, matched, priors, variances)
    loc_targets = jnp.where(positive[:, None], loc_targets, 0.0).astype(jnp.float32)
    return loc_targets, labels


def match_batch(
    gt_boxes: Array,
    gt_labels: Array,
    priors: Array,
    iou_threshold: float = 0.5,
    variances: Sequence[float] = box_ops.DEFAULT_VARIANCES,
) -> tuple[Array, Array]:
    """:func:`match` over a batch: ``[B, G, 4]``, ``[B, G]``, shared ``[P, 4]`` priors
    -> ``loc_targets [B, P, 4]``, ``labels [B, P]``."""
    def one(boxes, labels):
        return match(boxes, labels, priors, iou_threshold, variances)

    return jax.vmap(one)(gt_boxes, gt_labels)
