"""The evaluator interface (reset/add/compute/precision_recall) and the PR-curve plot."""

from __future__ import annotations

import numpy as np
import pytest

from ssd_jax import postprocess
from ssd_jax.evaluation import COCOEvaluator, GroundTruth, VOCEvaluator, coco, voc
from ssd_jax.evaluation.plots import plot_precision_recall

NAMES = ("cat", "dog", "car", "bus")


def _batch(dets, records, pad_to=None, normalized=True):
    """Pack per-image pixel detections as a Detections-like dict (normalised boxes)."""
    k = pad_to or max(len(d) for d in dets)
    b = len(dets)
    boxes = np.zeros((b, k, 4))
    scores = np.zeros((b, k))
    classes = np.zeros((b, k), np.int32)
    valid = np.zeros((b, k), bool)
    by_id = {r.image_id: r for r in records}
    for i, d in enumerate(dets):
        n = len(d)
        r = by_id[d.image_id]
        scale = np.array([r.width, r.height] * 2) if normalized else 1.0
        boxes[i, :n] = d.boxes / scale
        scores[i, :n] = d.scores
        classes[i, :n] = d.labels
        valid[i, :n] = True
    return dict(boxes=boxes, scores=scores, classes=classes, valid=valid)


def test_voc_evaluator_equals_functions_over_batches(random_set):
    truths, dets = random_set(0, num_images=30)
    ev = VOCEvaluator(truths, NAMES, use_07_metric=True)
    for lo in range(0, 30, 8):  # batches of 8, the last one partial
        ev.add([d.image_id for d in dets[lo:lo + 8]], _batch(dets[lo:lo + 8], truths))
    out = ev.compute()
    ref = voc.evaluate_voc(truths, dets, 4)
    assert out["mAP"] == pytest.approx(voc.mean_ap(ref, True), abs=1e-12)
    assert out["mAP_area"] == pytest.approx(voc.mean_ap(ref, False), abs=1e-12)
    for name, r in zip(NAMES, ref):
        assert out[f"AP/{name}"] == pytest.approx(r.ap_11pt, abs=1e-12)
    assert out["num_images"] == 30
    curves = ev.precision_recall()
    assert set(curves) == set(NAMES)
    rec, prec = curves["cat"]
    assert rec.shape == prec.shape == (ref[0].num_detections,)


def test_coco_evaluator_and_results_json(random_set):
    truths, dets = random_set(1, num_images=20)
    ev = COCOEvaluator(truths, NAMES, category_ids=[2, 4, 6, 8])
    ev.add([d.image_id for d in dets], _batch(dets, truths))
    out = ev.compute()
    ref = coco.evaluate_coco(truths, dets, [2, 4, 6, 8])
    for name in coco.STAT_NAMES:
        assert out[name] == pytest.approx(ref.stats[name], abs=1e-9)
    np.testing.assert_allclose([out[f"AP/{n}"] for n in NAMES], ref.per_class_ap, atol=1e-9)
    results = ev.results_json()
    assert {r["category_id"] for r in results} <= {2, 4, 6, 8}
    assert len(results) == sum(len(d) for d in dets)
    rec, prec = ev.precision_recall(0.5)["dog"]
    assert rec.shape == prec.shape == (101,)
    with pytest.raises(ValueError, match="iou_threshold"):
        ev.precision_recall(0.52)


def test_padding_rows_reset_and_subset(random_set):
    truths, dets = random_set(2, num_images=6)
    ev = VOCEvaluator(truths, NAMES)
    batch = _batch(dets[:3], truths, pad_to=40)
    ev.add([dets[0].image_id, dets[1].image_id, None], batch)  # third row is padding
    assert ev.num_images == 2
    sub = ev.compute()
    ref = voc.evaluate_voc(truths[:2], dets[:2], 4)
    assert sub["mAP"] == pytest.approx(voc.mean_ap(ref, True), nan_ok=True)
    with pytest.raises(ValueError, match="already added"):
        ev.add([dets[0].image_id], _batch(dets[:1], truths))
    ev.reset()
    assert ev.num_images == 0
    with pytest.raises(ValueError, match="nothing to evaluate"):
        ev.compute()


def test_num_detections_instead_of_valid_and_pixel_boxes(random_set):
    truths, dets = random_set(3, num_images=5)
    batch = _batch(dets, truths, normalized=False)
    count = batch.pop("valid").sum(1)
    ev = VOCEvaluator(truths, NAMES, use_07_metric=False)
    ev.add([d.image_id for d in dets], {**batch, "num_detections": count}, normalized=False)
    ref = voc.evaluate_voc(truths, dets, 4)
    assert ev.compute()["mAP"] == pytest.approx(voc.mean_ap(ref, False), nan_ok=True)


def test_bad_add(random_set):
    truths, dets = random_set(4, num_images=3)
    ev = VOCEvaluator(truths, NAMES)
    with pytest.raises(KeyError, match="not in the ground-truth"):
        ev.add(["nope"], _batch(dets[:1], truths))
    with pytest.raises(ValueError, match="image ids for a batch"):
        ev.add([dets[0].image_id], _batch(dets[:2], truths))
    batch = _batch(dets[:1], truths)
    del batch["valid"]
    with pytest.raises(ValueError, match="valid"):
        ev.add([dets[0].image_id], batch)
    with pytest.raises(ValueError, match="label 5"):
        VOCEvaluator([GroundTruth(1, 10, 10, [[0.0, 0.0, 5.0, 5.0]], [5])], NAMES)


def test_end_to_end_from_detect():
    # Priors that sit exactly on the truths, zero offsets, confident logits: perfect AP.
    rng = np.random.default_rng(0)
    records, logits, priors_list = [], [], []
    p, c1 = 16, 5
    priors = np.concatenate([rng.uniform(0.2, 0.8, (p, 2)), rng.uniform(0.05, 0.3, (p, 2))], 1)
    priors = priors.astype(np.float32)
    xyxy = np.concatenate([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)
    for i in range(2):
        labels = rng.integers(1, c1, p)
        logit = np.full((p, c1), -5.0, np.float32)
        logit[np.arange(p), labels] = 5.0
        logits.append(logit)
        w, h = 640, 480
        records.append(GroundTruth(i, w, h, xyxy * [w, h, w, h], labels))
    dets = postprocess.detect(np.stack(logits), np.zeros((2, p, 4), np.float32), priors,
                              nms_iou=1.0)
    dets = type(dets)(*(np.asarray(x) for x in dets))  # the host copy the loop would take
    for ev in (VOCEvaluator(records, NAMES, pixel_offset=0.0), COCOEvaluator(records, NAMES)):
        ev.add([0, 1], dets)
        out = ev.compute()
        key = "mAP" if isinstance(ev, VOCEvaluator) else "AP"
        assert out[key] == pytest.approx(1.0, abs=1e-6), out


def test_plot_precision_recall(tmp_path, random_set):
    truths, dets = random_set(5, num_images=10)
    ev = VOCEvaluator(truths, NAMES)
    ev.add([d.image_id for d in dets], _batch(dets, truths))
    out = ev.compute()
    path = plot_precision_recall(ev.precision_recall(), tmp_path / "pr.png",
                                 ap={n: out[f"AP/{n}"] for n in NAMES}, title="VOC PR", ncols=3)
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="no curves"):
        plot_precision_recall({}, tmp_path / "empty.png")
