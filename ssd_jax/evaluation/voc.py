"""PASCAL VOC detection AP: per-class AP at IoU 0.5, VOC07 11-point and VOC2010+ area.

The rules are the devkit's (``VOCevaldet.m``) as ported by py-faster-rcnn / ssd.pytorch
(``voc_eval``), reproduced exactly:

* per class, all detections are ranked by descending score (a *stable* sort, as the
  MATLAB devkit's ``sort``: tied detections keep the order they were given in, image by
  image; ssd.pytorch's ``np.argsort`` quicksort leaves that order arbitrary);
* each detection looks only at the truths of its image and class and takes the one it
  overlaps most (the first on equal IoU), difficult ones included;
* if that IoU is ``> iou_threshold`` (strict): a difficult truth makes the detection
  neither TP nor FP; a truth not yet claimed makes it a TP and claims it; an already
  claimed truth makes it a FP (duplicate) -- there is no fall-back to the second-best
  truth. Otherwise (no truth, or IoU too small) it is a FP;
* IoU uses the devkit's inclusive pixel convention, ``width = xmax - xmin + 1``
  (``pixel_offset=1``); ``pixel_offset=0`` gives continuous-coordinate IoU;
* recall = TP / (number of non-difficult truths), precision = TP / max(TP + FP, eps);
* 11-point AP: mean over ``t in np.arange(0., 1.1, 0.1)`` of the best precision at
  recall >= t (0 if none). The thresholds are ``np.arange``'s floats, as in
  ``voc_eval``: 0.30000000000000004, 0.6000000000000001, 0.7000000000000001 are just
  above 0.3, 0.6 and 0.7, so a recall of exactly 3/10 does not reach "0.3";
* area AP (VOC2010+): area under the precision envelope, summed where recall changes.

Beyond the devkit: a class with no non-difficult truth has AP NaN (the devkit divides by
zero) and is left out of the mAP.

The matching is vectorised: because a detection never falls back to another truth, a
detection is a TP exactly when it is the best-ranked one among those whose best truth is
the same non-difficult truth, so it needs no sequential pass.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ssd_jax.evaluation.types import GroundTruth, ImageDetections, check_unique_ids

#: The 11 recall thresholds of VOC07 AP, as ``voc_eval`` makes them.
VOC07_RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP of one class from its ``[n]`` recall and precision curves (devkit formulas).

    Args:
      recall: ``[n]`` non-decreasing recall after each ranked detection.
      precision: ``[n]`` precision after each ranked detection.
      use_07_metric: True: VOC07 11-point AP; False: VOC2010+ area under the envelope.
    """
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if use_07_metric:
        # best precision at recall >= t: a suffix max, read where recall first reaches t
        suffix_max = np.maximum.accumulate(precision[::-1])[::-1]
        first = np.searchsorted(recall, VOC07_RECALL_THRESHOLDS, side="left")
        ap = 0.0
        for i in first:  # summed in order, as voc_eval, for the same rounding
            p = suffix_max[i] if i < recall.size else 0.0
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def pairwise_iou(a: np.ndarray, b: np.ndarray, pixel_offset: float = 1.0) -> np.ndarray:
    """IoU of ``[..., 4]`` xyxy boxes ``a`` and ``b`` (broadcast), devkit style.

    ``pixel_offset`` is added to every width and height (1: inclusive pixel coordinates,
    as the devkit). Non-overlapping pairs give 0.
    """
    iw = np.maximum(
        np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + pixel_offset, 0.0
    )
    ih = np.maximum(
        np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + pixel_offset, 0.0
    )
    inter = iw * ih
    union = (
        (a[..., 2] - a[..., 0] + pixel_offset) * (a[..., 3] - a[..., 1] + pixel_offset)
        + (b[..., 2] - b[..., 0] + pixel_offset) * (b[..., 3] - b[..., 1] + pixel_offset)
        - inter
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclasses.dataclass(frozen=True)
class VOCClassResult:
    """One class's outcome.

    Attributes:
      ap_11pt, ap_area: VOC07 11-point and VOC2010+ area AP (NaN without truths).
      num_truths: non-difficult truths (the recall denominator).
      num_detections: detections of the class (ignored ones included).
      recall, precision: ``[num_detections]`` curves in rank order (devkit's arrays).
      scores: ``[num_detections]`` the ranked scores.
      tp, fp: ``[num_detections]`` 0/1 per ranked detection (both 0: ignored).
    """

    ap_11pt: float
    ap_area: float
    num_truths: int
    num_detections: int
    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray
    tp: np.ndarray
    fp: np.ndarray


def _flatten(truths: Sequence[GroundTruth], detections: Sequence[ImageDetections]):
    index = check_unique_ids(truths)
    gt_img = np.concatenate([np.full(len(t), i) for i, t in enumerate(truths)] + [np.zeros(0)])
    gt_img = gt_img.astype(np.int64)
    cat = lambda xs, shape: np.concatenate(list(xs) + [np.zeros(shape)])  # noqa: E731
    gt_boxes = cat((t.boxes for t in truths), (0, 4))
    gt_labels = cat((t.labels for t in truths), (0,)).astype(np.int64)
    gt_difficult = cat((t.difficult for t in truths), (0,)).astype(bool)
    seen = set()
    det_img = []
    for d in detections:
        if d.image_id not in index:
            raise ValueError(f"detections for image {d.image_id!r}, which has no ground truth")
        if d.image_id in seen:
            raise ValueError(f"detections for image {d.image_id!r} given twice")
        seen.add(d.image_id)
        det_img.append(np.full(len(d), index[d.image_id]))
    det_img = np.concatenate(det_img + [np.zeros(0)]).astype(np.int64)
    det_boxes = cat((d.boxes for d in detections), (0, 4))
    det_scores = cat((d.scores for d in detections), (0,))
    det_labels = cat((d.labels for d in detections), (0,)).astype(np.int64)
    return (gt_img, gt_boxes, gt_labels, gt_difficult), (det_img, det_boxes, det_scores,
                                                         det_labels)


def _best_truth(det_key, det_boxes, gt_key, gt_boxes, pixel_offset, chunk=1 << 22):
    """For each detection, its best same-key truth: ``(ovmax [N], jmax [N])``.

    ``ovmax`` is -inf and ``jmax`` -1 where the detection's image has no truth of its
    class. ``jmax`` indexes the truth arrays; among equal IoUs the first truth in the
    given order wins (devkit ``argmax``).
    """
    n = det_key.shape[0]
    ovmax = np.full(n, -np.inf)
    jmax = np.full(n, -1, np.int64)
    if n == 0 or gt_key.size == 0:
        return ovmax, jmax
    order = np.argsort(gt_key, kind="stable")  # truths grouped by key, original order inside
    sorted_keys = gt_key[order]
    start = np.searchsorted(sorted_keys, det_key, side="left")
    count = np.searchsorted(sorted_keys, det_key, side="right") - start
    width = int(count.max())
    if width == 0:
        return ovmax, jmax
    rows = max(1, chunk // width)
    cols = np.arange(width)
    for lo in range(0, n, rows):  # chunks keep the [rows, width] temporaries bounded
        hi = min(n, lo + rows)
        present = cols[None, :] < count[lo:hi, None]
        slot = np.where(present, start[lo:hi, None] + cols[None, :], 0)
        gt_index = order[np.minimum(slot, order.size - 1)]
        ious = pairwise_iou(det_boxes[lo:hi, None, :], gt_boxes[gt_index], pixel_offset)
        ious = np.where(present, ious, -np.inf)
        arg = np.argmax(ious, axis=1)
        best = ious[np.arange(hi - lo), arg]
        has = count[lo:hi] > 0
        ovmax[lo:hi] = np.where(has, best, -np.inf)
        jmax[lo:hi] = np.where(has, gt_index[np.arange(hi - lo), arg], -1)
    return ovmax, jmax


def evaluate_voc(
    truths: Sequence[GroundTruth],
    detections: Sequence[ImageDetections],
    num_classes: int,
    iou_threshold: float = 0.5,
    pixel_offset: float = 1.0,
) -> list[VOCClassResult]:
    """VOC AP of every class 1..C over the images of ``truths``.

    Args:
      truths: one record per evaluated image (unique ids).
      detections: per image (any subset of ``truths``' ids, each at most once; an image
        without an entry has no detections). Order matters only among tied scores.
      num_classes: C; labels must lie in 1..C.
      iou_threshold: a match needs IoU strictly above this (VOC: 0.5).
      pixel_offset: 1.0 for the devkit's inclusive pixel boxes, 0.0 for continuous IoU.

    Returns:
      ``[C]`` :class:`VOCClassResult`, entry ``c - 1`` for class ``c``.
    """
    (gt_img, gt_boxes, gt_labels, gt_difficult), (det_img, det_boxes, det_scores, det_labels) = (
        _flatten(truths, detections)
    )
    for name, labels in (("ground truth", gt_labels), ("detection", det_labels)):
        if labels.size and labels.max() > num_classes:
            raise ValueError(f"a {name} label is {labels.max()}, above num_classes={num_classes}")
    k = num_classes + 1
    ovmax, jmax = _best_truth(det_img * k + det_labels, det_boxes, gt_img * k + gt_labels,
                              gt_boxes, pixel_offset)

    # Rank: by class, then descending score; ties keep the given order (lexsort is stable).
    rank = np.lexsort((-det_scores, det_labels))
    ovmax, jmax = ovmax[rank], jmax[rank]
    labels_ranked, scores_ranked = det_labels[rank], det_scores[rank]
    hit = ovmax > iou_threshold
    ignored = hit & gt_difficult[np.maximum(jmax, 0)] & (jmax >= 0)
    claim = hit & ~ignored
    tp = np.zeros(rank.size)
    claim_pos = np.nonzero(claim)[0]
    _, first = np.unique(jmax[claim_pos], return_index=True)  # first claim of each truth
    tp[claim_pos[first]] = 1.0
    fp = (~ignored).astype(np.float64) - tp

    npos = np.bincount(gt_labels[~gt_difficult], minlength=k)
    bounds = np.searchsorted(labels_ranked, np.arange(1, k + 1), side="left")
    results = []
    eps = np.finfo(np.float64).eps
    for c in range(1, k):
        lo, hi = bounds[c - 1], bounds[c]
        tp_c, fp_c = tp[lo:hi], fp[lo:hi]
        ctp, cfp = np.cumsum(tp_c), np.cumsum(fp_c)
        precision = ctp / np.maximum(ctp + cfp, eps)
        n = int(npos[c])
        if n == 0:
            recall = np.full(ctp.shape, np.nan)
            ap07 = ap_area = float("nan")
        else:
            recall = ctp / float(n)
            ap07 = voc_ap(recall, precision, use_07_metric=True)
            ap_area = voc_ap(recall, precision, use_07_metric=False)
        results.append(VOCClassResult(
            ap_11pt=ap07, ap_area=ap_area, num_truths=n, num_detections=int(hi - lo),
            recall=recall, precision=precision, scores=scores_ranked[lo:hi],
            tp=tp_c, fp=fp_c,
        ))
    return results


def mean_ap(results: Sequence[VOCClassResult], use_07_metric: bool) -> float:
    """Mean AP over the classes that have truths (NaN if none has)."""
    aps = np.array([r.ap_11pt if use_07_metric else r.ap_area for r in results], np.float64)
    aps = aps[~np.isnan(aps)]
    return float(aps.mean()) if aps.size else float("nan")
