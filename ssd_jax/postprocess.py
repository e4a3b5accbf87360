"""SSD inference post-processing: decode, score threshold, per-class NMS, top-K, fixed size.

One jit-able, batched function, :func:`detect`, that turns the network's raw outputs into
a fixed number of detections per image, entirely on device (no Python loop over images or
boxes). It returns the same detections as torchvision's ``SSD.postprocess_detections``
(torchvision 0.29) for the same inputs and settings, up to ties in score:

1. ``softmax`` over the class logits; class 0 (background) is dropped.
2. Boxes are decoded against the priors (:func:`ssd_jax.boxes.decode`, with torchvision's
   clamp on the log size ratio) and **clipped to the image before NMS**, as torchvision
   does (``clip_boxes_to_image`` right after ``decode_single``).
3. Per class: keep scores ``> score_threshold`` (strict), then the best
   ``candidates_per_class`` of those.
4. Greedy NMS per class: walking the candidates by descending score, a box is kept unless
   a kept box of the same class overlaps it with IoU ``> nms_iou`` (strict, as
   torchvision's ``nms``). Boxes of different classes never suppress each other
   (``batched_nms``). A zero-area box has IoU 0 with everything, so it is never
   suppressed and suppresses nothing (torchvision computes 0/0 = NaN there, and
   ``NaN > t`` is false: the same outcome).
5. The best ``max_detections`` survivors over all classes, sorted by descending score.

How the NMS is computed: for every (image, class) the candidates' pairwise "IoU > t"
matrix is built at once (``[B, C, k, k]`` booleans, upper triangle only), then one
``lax.fori_loop`` over the ``k`` candidate ranks walks all (image, class) rows together:
step ``i`` keeps candidate ``i`` where it survived so far and removes the later
candidates it overlaps. Each step is a few vector ops on ``[B, C, k]``, so the
sequential part is ``k`` cheap steps however large the batch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import Array, lax

from ssd_jax import boxes as box_ops


class Detections(NamedTuple):
    """Fixed-size detections of a batch (a pytree: jit/vmap/device_get work on it).

    Attributes:
      boxes: ``[B, K, 4]`` float32 xyxy, normalised to [0, 1] (clipped to the image).
      scores: ``[B, K]`` float32 class probabilities, descending along ``K``; 0 where
        not valid.
      classes: ``[B, K]`` int32 object classes 1..C; 0 where not valid.
      valid: ``[B, K]`` bool; the valid entries are a prefix of each row.
    """

    boxes: Array
    scores: Array
    classes: Array
    valid: Array

    @property
    def num_detections(self) -> Array:
        """``[B]`` int32: valid detections per image."""
        return jnp.sum(self.valid, axis=-1, dtype=jnp.int32)


def nms_keep_mask(candidate_boxes: Array, candidate_valid: Array, iou_threshold) -> Array:
    """Greedy NMS over rows of candidates that are already sorted by descending score.

    Args:
      candidate_boxes: ``[..., k, 4]`` xyxy boxes; along ``k`` in descending score order.
      candidate_valid: ``[..., k]`` bool; candidates that take part (the others are
        neither kept nor suppress anything).
      iou_threshold: a candidate is suppressed by an earlier kept one of its row when
        their IoU is strictly greater than this.

    Returns:
      ``[..., k]`` bool: the candidates greedy NMS keeps, row by row.
    """
    k = candidate_boxes.shape[-2]
    if candidate_valid.shape != candidate_boxes.shape[:-1]:
        raise ValueError(
            f"candidate_valid shape {candidate_valid.shape} does not match candidate_boxes "
            f"{candidate_boxes.shape} (expected {candidate_boxes.shape[:-1]})"
        )
    ranks = jnp.arange(k)
    later = ranks[None, :] > ranks[:, None]  # [k, k]: j after i
    # overlaps[..., i, j]: candidate i would suppress candidate j (j after i).
    overlaps = (box_ops.iou(candidate_boxes, candidate_boxes) > iou_threshold) & later

    # The overlaps ride in the loop state rather than being closed over: the same program
    # for XLA, and one that converters (jax2onnx: an ONNX Loop) can express.
    def step(i, carry):
        keep, overlaps = carry
        row = lax.dynamic_index_in_dim(overlaps, i, axis=-2, keepdims=False)  # [..., k]
        kept_i = lax.dynamic_index_in_dim(keep, i, axis=-1, keepdims=True)  # [..., 1]
        return keep & ~(row & kept_i), overlaps

    return lax.fori_loop(0, k, step, (candidate_valid, overlaps))[0]


#: Most candidate pairs whose overlap NMS holds at once (``[B, classes, k, k]`` booleans):
#: 64 Mi, 64 MiB. Beyond it the classes go through NMS in chunks, one after another.
NMS_PAIRS_BUDGET = 1 << 26


def _nms_by_class_chunks(cand_boxes: Array, cand_valid: Array, iou_threshold) -> Array:
    """:func:`nms_keep_mask` of ``[B, C, k, 4]`` candidates, in chunks of classes small
    enough that a chunk's ``[B, chunk, k, k]`` overlaps stay within
    :data:`NMS_PAIRS_BUDGET` (COCO at batch 32 and k = 400 holds 410 Mi pairs at once
    otherwise). Classes never interact in NMS, so the result is the same."""
    b, c, k = cand_valid.shape
    # A symbolic batch (an exported program for any N): the budget is per image.
    per_batch = b if isinstance(b, int) else 1
    chunk = max(1, min(c, NMS_PAIRS_BUDGET // max(1, per_batch * k * k)))
    if chunk >= c:
        return nms_keep_mask(cand_boxes, cand_valid, iou_threshold)
    n = -(-c // chunk)
    pad = n * chunk - c  # padding classes: no valid candidate, nothing kept
    boxes = jnp.pad(cand_boxes, ((0, 0), (0, pad), (0, 0), (0, 0)))
    valid = jnp.pad(cand_valid, ((0, 0), (0, pad), (0, 0)))
    boxes = jnp.moveaxis(boxes.reshape(b, n, chunk, k, 4), 1, 0)  # [n, B, chunk, k, 4]
    valid = jnp.moveaxis(valid.reshape(b, n, chunk, k), 1, 0)
    keep = lax.map(lambda bv: nms_keep_mask(bv[0], bv[1], iou_threshold), (boxes, valid))  # [n, B, chunk, k]
    return jnp.moveaxis(keep, 0, 1).reshape(b, n * chunk, k)[:, :c]


def _take(values: Array, indices: Array, axis: int) -> Array:
    """``jnp.take_along_axis`` of indices that are in range by construction (``top_k``'s).
    Unsigned indices skip the wrap-around of negative ones, which is dead code here, and
    which ONNX converters get wrong (ONNX's TopK gives int64 indices)."""
    return jnp.take_along_axis(values, indices.astype(jnp.uint32), axis=axis)


def _check_inputs(class_logits, box_offsets, priors, candidates_per_class, max_detections):
    if class_logits.ndim != 3:
        raise ValueError(f"class_logits must be [B, P, C+1], got shape {class_logits.shape}")
    b, p, c1 = class_logits.shape
    if c1 < 2:
        raise ValueError(
            f"class_logits has {c1} class column(s); need background plus at least one class"
        )
    if box_offsets.shape != (b, p, 4):
        raise ValueError(
            f"box_offsets must be [B, P, 4] = {(b, p, 4)} to match class_logits "
            f"{class_logits.shape}, got {box_offsets.shape}"
        )
    if priors.shape != (p, 4):
        raise ValueError(f"priors must be [P, 4] = {(p, 4)}, got {priors.shape}")
    if candidates_per_class < 1 or max_detections < 1:
        raise ValueError(
            "candidates_per_class and max_detections must be >= 1, got "
            f"{candidates_per_class} and {max_detections}"
        )


def detect(
    class_logits: Array,
    box_offsets: Array,
    priors: Array,
    score_threshold: float = 0.01,
    nms_iou: float = 0.45,
    candidates_per_class: int = 400,
    max_detections: int = 200,
    variances: Sequence[float] = box_ops.DEFAULT_VARIANCES,
    max_log_size_ratio: float | None = box_ops.MAX_LOG_SIZE_RATIO,
) -> Detections:
    """SSD detections of a batch, as torchvision's ``SSD.postprocess_detections``.

    Args:
      class_logits: ``[B, P, C+1]`` raw class scores; column 0 is background.
      box_offsets: ``[B, P, 4]`` predicted offsets ``(dx, dy, dw, dh)`` against the priors.
      priors: ``[P, 4]`` normalised ``(cx, cy, w, h)`` priors.
      score_threshold: a class score must be strictly greater to be a candidate
        (traced: changing it does not recompile).
      nms_iou: IoU above which (strictly) NMS suppresses a box (traced).
      candidates_per_class: best candidates per class that enter NMS (static; capped at P).
      max_detections: detections per image returned, K (static).
      variances: the box coder's ``(v0, v1)`` (static).
      max_log_size_ratio: cap on the decoded log size ratio (static), as torchvision.

    Returns:
      :class:`Detections` with ``K = max_detections`` slots per image, best first.
    """
    if len(variances) != 2:
        raise ValueError(f"variances must be (v0, v1), got {variances}")
    return _detect(
        class_logits,
        box_offsets,
        priors,
        score_threshold,
        nms_iou,
        candidates_per_class=int(candidates_per_class),
        max_detections=int(max_detections),
        variances=(float(variances[0]), float(variances[1])),
        max_log_size_ratio=None if max_log_size_ratio is None else float(max_log_size_ratio),
    )


@functools.partial(
    jax.jit,
    static_argnames=("candidates_per_class", "max_detections", "variances", "max_log_size_ratio"),
)
def _detect(
    class_logits, box_offsets, priors, score_threshold, nms_iou, *, candidates_per_class,
    max_detections, variances, max_log_size_ratio,
) -> Detections:
    """:func:`detect` under one jit (static sizes and coder settings)."""
    _check_inputs(class_logits, box_offsets, priors, candidates_per_class, max_detections)
    batch, num_priors, _ = class_logits.shape
    scores = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[..., 1:]  # [B,P,C]
    num_classes = scores.shape[-1]
    decoded = box_ops.decode(
        box_offsets.astype(jnp.float32),
        jnp.asarray(priors, jnp.float32),
        variances,
        max_log_size_ratio,
    )
    decoded = jnp.clip(decoded, 0.0, 1.0)  # clipped before NMS, as torchvision

    # Per class, the best k candidates (top_k puts the lower prior index first on ties).
    k = min(candidates_per_class, num_priors)
    cand_scores, cand_idx = lax.top_k(jnp.swapaxes(scores, 1, 2), k)  # [B, C, k]
    cand_valid = cand_scores > score_threshold
    cand_boxes = _take(decoded[:, None, :, :], cand_idx[..., None], axis=2)  # [B, C, k, 4]

    keep = _nms_by_class_chunks(cand_boxes, cand_valid, nms_iou)  # [B, C, k]

    # The best max_detections survivors over all classes.
    flat_scores = jnp.where(keep, cand_scores, -jnp.inf).reshape(batch, num_classes * k)
    flat_boxes = cand_boxes.reshape(batch, num_classes * k, 4)
    flat_classes = jnp.broadcast_to(
        jnp.arange(1, num_classes + 1, dtype=jnp.int32)[None, :, None], (batch, num_classes, k)
    ).reshape(batch, num_classes * k)
    pad = max_detections - num_classes * k
    if pad > 0:  # fewer candidate slots than outputs: pad with empty slots
        flat_scores = jnp.pad(flat_scores, ((0, 0), (0, pad)), constant_values=-jnp.inf)
        flat_boxes = jnp.pad(flat_boxes, ((0, 0), (0, pad), (0, 0)))
        flat_classes = jnp.pad(flat_classes, ((0, 0), (0, pad)))
    out_scores, out_idx = lax.top_k(flat_scores, max_detections)  # [B, K]
    valid = out_scores > -jnp.inf
    out_boxes = _take(flat_boxes, out_idx[..., None], axis=1)
    out_classes = _take(flat_classes, out_idx, axis=1)
    return Detections(
        boxes=jnp.where(valid[..., None], out_boxes, 0.0),
        scores=jnp.where(valid, out_scores, 0.0),
        classes=jnp.where(valid, out_classes, 0),
        valid=valid,
    )
