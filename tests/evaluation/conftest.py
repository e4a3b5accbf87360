"""Fixtures of the evaluation tests: random truth/detection sets and the devkit reference."""

from __future__ import annotations

import numpy as np
import pytest

from ssd_jax.evaluation.types import GroundTruth, ImageDetections


def _random_set(seed, num_images=40, num_classes=4, max_truths=6, dets_per_image=15,
               difficult_rate=0.15, crowd_rate=0.0, tie_rate=0.2, size=300.0,
               string_ids=False):
    """Random truths and detections that overlap them in all ways (hits, misses, dups).

    Scores are rounded so ties happen; some detections duplicate others.
    """
    rng = np.random.default_rng(seed)
    truths, dets = [], []
    for i in range(num_images):
        image_id = f"{i:06d}" if string_ids else i + 1
        n = int(rng.integers(0, max_truths + 1))
        xy = rng.uniform(0, size * 0.8, size=(n, 2))
        wh = rng.uniform(4, size * 0.4, size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(1, num_classes + 1, size=n)
        truths.append(GroundTruth(
            image_id, int(size), int(size), boxes, labels,
            difficult=rng.random(n) < difficult_rate,
            iscrowd=rng.random(n) < crowd_rate,
        ))
        m = int(rng.integers(0, dets_per_image + 1))
        d_boxes, d_labels = [], []
        for _ in range(m):
            if n and rng.random() < 0.6:
                j = int(rng.integers(n))
                b = boxes[j] + rng.normal(0, rng.choice([1.0, 8.0, 20.0]), 4)
                lab = labels[j] if rng.random() < 0.85 else rng.integers(1, num_classes + 1)
            else:
                p = rng.uniform(0, size * 0.8, 2)
                b = np.concatenate([p, p + rng.uniform(4, size * 0.4, 2)])
                lab = rng.integers(1, num_classes + 1)
            b = np.concatenate([np.minimum(b[:2], b[2:]), np.maximum(b[:2], b[2:])])
            d_boxes.append(b)
            d_labels.append(int(lab))
        scores = rng.random(m)
        ties = rng.random(m) < tie_rate
        scores[ties] = np.round(scores[ties], 1)
        dets.append(ImageDetections(image_id, np.asarray(d_boxes).reshape(-1, 4), scores,
                                    np.asarray(d_labels, np.int64)))
    return truths, dets


# --------------------------------------------------------------------- devkit reference


def _devkit_voc_ap(rec, prec, use_07_metric):
    """``voc_ap`` of py-faster-rcnn / ssd.pytorch, verbatim in logic."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
    else:
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap


def _devkit_voc_eval(truths, dets, classname_label, ovthresh=0.5, use_07_metric=True):
    """``voc_eval`` for one class, one detection at a time (stable sort as the MATLAB
    devkit), with the devkit's +1 pixel IoU. Returns (rec, prec, ap)."""
    class_recs = {}
    npos = 0
    for t in truths:
        sel = t.labels == classname_label
        bbox = t.boxes[sel]
        difficult = t.difficult[sel]
        npos += int((~difficult).sum())
        class_recs[t.image_id] = {"bbox": bbox, "difficult": difficult,
                                  "det": [False] * len(bbox)}
    image_ids, confidence, BB = [], [], []
    for d in dets:
        for j in range(len(d)):
            if d.labels[j] == classname_label:
                image_ids.append(d.image_id)
                confidence.append(d.scores[j])
                BB.append(d.boxes[j])
    confidence = np.asarray(confidence)
    BB = np.asarray(BB).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
                   - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec, _devkit_voc_ap(rec, prec, use_07_metric)


@pytest.fixture(scope="session")
def random_set():
    """``random_set(seed, num_images=40, ...)``: (truths, detections) that overlap in all
    ways: hits, misses, duplicates, tied scores (:func:`_random_set`)."""
    return _random_set


@pytest.fixture(scope="session")
def devkit_voc_eval():
    """``devkit_voc_eval(truths, dets, label, ovthresh=0.5, use_07_metric=True)``: the
    py-faster-rcnn / ssd.pytorch ``voc_eval`` for one class, as (rec, prec, ap)."""
    return _devkit_voc_eval


@pytest.fixture(scope="session")
def devkit_voc_ap():
    """``devkit_voc_ap(rec, prec, use_07_metric)``: the devkit's ``voc_ap``."""
    return _devkit_voc_ap
