"""SSD's multibox loss: softmax cross-entropy with hard negative mining plus Smooth-L1.

``L = (L_conf + alpha * L_loc) / N`` (paper eq. 1), with N the number of positive
(matched) priors in the batch:

* ``L_conf``: softmax cross-entropy over every positive prior plus, per image, the
  ``floor(neg_pos_ratio * num_pos)`` negatives with the highest background
  cross-entropy (never more than the image has);
* ``L_loc``: Smooth-L1 (beta 1) between predicted and target offsets, positives only.

Hard negative mining has no data-dependent shapes and no sort: per image the k-th
largest background loss is found exactly by a radix select over the bits of the
(non-negative) float32 losses, 16 counting passes over ``[B, P]``; the selected set is
everything above that threshold plus the first ties in prior order. The selection is a
mask computed outside the gradient, so the gradient is that of the selected terms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array, lax


def smooth_l1(x: Array, beta: float = 1.0) -> Array:
    """Elementwise Huber-style Smooth-L1: ``0.5 x^2 / beta`` if ``|x| < beta`` else ``|x| - 0.5 beta``."""
    ax = jnp.abs(x)
    return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


@jax.custom_vjp
def softmax_cross_entropy(logits: Array, labels: Array) -> Array:
    """``[..., K]`` float32 logits, ``[...]`` int labels -> ``[...]`` softmax cross-entropy.

    A hand-written VJP: the backward pass is one fused elementwise pass
    ``g * (softmax - onehot)``; autodiff of ``logsumexp`` + a gather (a scatter-add in
    the backward) was several times slower on XLA:CPU for ``[32, 8732, 21]`` (measured:
    benchmarks/RESULTS.md).
    """
    return _cross_entropy_fwd(logits, labels)[0]


def _cross_entropy_fwd(logits, labels):
    top = jnp.max(logits, axis=-1, keepdims=True)
    log_norm = jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1)) + top[..., 0]
    return log_norm - _pick(logits, labels), (logits, labels, log_norm)


def _pick(x: Array, index: Array) -> Array:
    """``x[..., index]`` per position: ``[..., K]``, ``[...]`` -> ``[...]``.

    ``take_along_axis`` written as one flat 1-D gather: XLA:CPU's batched gather with
    index tuples was slower on ``[32, 8732, 21]`` (measured: benchmarks/RESULTS.md).
    """
    num = x.shape[-1]
    flat_position = jnp.arange(index.size, dtype=jnp.int32).reshape(index.shape)
    flat_index = flat_position * num + index.astype(jnp.int32)
    return jnp.take(x.reshape(-1), flat_index.reshape(-1), mode="clip").reshape(index.shape)


def _cross_entropy_bwd(residuals, g):
    logits, labels, log_norm = residuals
    classes = lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    onehot = (classes == labels[..., None]).astype(logits.dtype)
    grad = g[..., None] * (jnp.exp(logits - log_norm[..., None]) - onehot)
    return grad, None


softmax_cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def _kth_largest_bits(bits: Array, k: Array, bits_per_pass: int = 2) -> Array:
    """Per row, the largest ``t`` with ``count(bits >= t) >= k``: the k-th largest value.

    ``bits``: ``[B, P]`` int32, non-negative for candidates, -1 for excluded entries;
    ``k``: ``[B]`` int32 >= 1. A radix select from the top bit down, deciding
    ``bits_per_pass`` bits per counting pass over ``[B, P]`` (2 bits: 16 passes, the
    fastest on XLA:CPU; 1 bit takes 31 passes and is slower; measured:
    benchmarks/RESULTS.md).
    """
    num_trials = (1 << bits_per_pass) - 1
    num_passes = -(-31 // bits_per_pass)
    steps = jnp.arange(1, num_trials + 1, dtype=jnp.int32)  # [T]

    def refine(i, prefix):
        shift = 31 - (i + 1) * bits_per_pass  # negative on a short last pass
        trials = prefix[:, None] + jnp.left_shift(steps, jnp.maximum(shift, 0))[None, :]
        in_range = steps < jnp.left_shift(1, bits_per_pass + jnp.minimum(shift, 0))
        count = jnp.sum(bits[:, :, None] >= trials[:, None, :], axis=1, dtype=jnp.int32)
        ok = (count >= k[:, None]) & in_range[None, :]
        return jnp.max(jnp.where(ok, trials, prefix[:, None]), axis=1)

    return lax.fori_loop(0, num_passes, refine, jnp.zeros(k.shape, jnp.int32))


def select_largest(values: Array, k: Array) -> Array:
    """Mask of the ``k[b]`` largest candidates of each row.

    Args:
      values: ``[B, P]`` float; candidates are the entries ``>= 0`` (finite losses),
        entries ``< 0`` are excluded and never selected.
      k: ``[B]`` int, how many to select per row; must not exceed the row's number of
        candidates (callers cap it).

    Returns:
      ``[B, P]`` bool with exactly ``k[b]`` True entries per row: every candidate
      larger than the row's k-th largest value, then ties with it in index order.
    """
    candidate = values >= 0
    # For non-negative IEEE floats the int32 bit pattern is monotone in the value.
    safe = jnp.where(candidate, values, 0.0).astype(jnp.float32)
    bits = jnp.where(candidate, lax.bitcast_convert_type(safe, jnp.int32), -1)
    k = k.astype(jnp.int32)
    threshold = _kth_largest_bits(bits, jnp.maximum(k, 1))[:, None]
    above = bits > threshold
    ties = bits == threshold
    room = (k - jnp.sum(above, axis=1, dtype=jnp.int32))[:, None]
    # Usually every tie fits (ties at the k-th value are rare for float losses); only
    # then is the prefix count over the ties, which costs as much as the select, run.
    overflow = jnp.any(jnp.sum(ties, axis=1, dtype=jnp.int32)[:, None] > room)
    keep_ties = lax.cond(
        overflow,
        lambda: ties & (jnp.cumsum(ties, axis=1, dtype=jnp.int32) <= room),
        lambda: ties,
    )
    return (above | keep_ties) & (k > 0)[:, None]


def multibox_loss(
    cls_logits: Array,
    loc_preds: Array,
    labels: Array,
    loc_targets: Array,
    neg_pos_ratio: float = 3.0,
    alpha: float = 1.0,
) -> tuple[Array, dict[str, Array]]:
    """SSD loss of a batch.

    Args:
      cls_logits: ``[B, P, C+1]`` class scores (index 0 = background); any float dtype,
        computed in float32.
      loc_preds: ``[B, P, 4]`` predicted offsets.
      labels: ``[B, P]`` int target class per prior, 0 = background (from ``match``).
      loc_targets: ``[B, P, 4]`` target offsets (from ``match``).
      neg_pos_ratio: negatives kept per positive, per image.
      alpha: weight of the localisation term.

    Returns:
      ``(loss, metrics)``: the scalar loss, and float32 scalars ``loss``, ``conf_loss``
      and ``loc_loss`` (both already divided by N), ``num_pos`` (positives in the
      batch) and ``num_neg`` (mined negatives). A batch with no positives has N = 1
      (guard), no mined negatives and loss 0, with finite gradients.
    """
    logits = cls_logits.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    num_priors = logits.shape[1]

    ce = softmax_cross_entropy(logits, labels)  # [B, P]; for negatives: background cross-entropy

    positive = labels > 0
    num_pos = jnp.sum(positive, axis=1, dtype=jnp.int32)  # [B]
    num_neg = jnp.minimum(
        jnp.floor(neg_pos_ratio * num_pos).astype(jnp.int32), num_priors - num_pos
    )
    # Rank negatives by their loss; positives are excluded (-1). Rounding can leave a
    # background loss a hair below 0: clamp, so every negative stays a candidate.
    ranking = lax.stop_gradient(jnp.where(positive, -1.0, jnp.maximum(ce, 0.0)))
    hard_negative = select_largest(ranking, num_neg)

    conf_sum = jnp.sum(jnp.where(positive | hard_negative, ce, 0.0))
    # One flat reduction: summing the 4 coordinates per prior first is slower on XLA:CPU
    # (measured: benchmarks/RESULTS.md).
    loc_terms = smooth_l1(loc_preds.astype(jnp.float32) - loc_targets)
    loc_sum = jnp.sum(jnp.where(positive[..., None], loc_terms, 0.0))

    total_pos = jnp.sum(num_pos)
    normaliser = jnp.maximum(total_pos, 1).astype(jnp.float32)
    conf_loss = conf_sum / normaliser
    loc_loss = loc_sum / normaliser
    loss = conf_loss + alpha * loc_loss
    metrics = dict(
        loss=loss,
        conf_loss=conf_loss,
        loc_loss=loc_loss,
        num_pos=total_pos.astype(jnp.float32),
        num_neg=jnp.sum(num_neg).astype(jnp.float32),
    )
    return loss, metrics
