"""VOC AP: hand-computed cases, devkit rules, agreement with the devkit's voc_eval logic."""

from __future__ import annotations

import numpy as np
import pytest

from ssd_jax.evaluation import voc
from ssd_jax.evaluation.types import GroundTruth, ImageDetections

G1 = [10.0, 10.0, 110.0, 110.0]
G2 = [200.0, 150.0, 300.0, 260.0]
FAR = [400.0, 10.0, 450.0, 60.0]


def _one(results, c=1):
    return results[c - 1]


def test_hand_case_tp_fp_tp():
    # 2 truths; ranked detections: TP, FP, TP -> recall .5 .5 1, precision 1 .5 2/3.
    truths = [GroundTruth(1, 500, 400, [G1, G2], [1, 1])]
    dets = [ImageDetections(1, [G1, FAR, G2], [0.9, 0.8, 0.7], [1, 1, 1])]
    r = _one(voc.evaluate_voc(truths, dets, num_classes=1))
    np.testing.assert_allclose(r.recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(r.precision, [1.0, 0.5, 2 / 3])
    # area: 0.5 * 1 + 0.5 * 2/3; 11-point: 6 thresholds <= .5 at 1, 5 above at 2/3
    assert r.ap_area == pytest.approx(5 / 6)
    assert r.ap_11pt == pytest.approx(28 / 33)
    np.testing.assert_array_equal(r.tp, [1, 0, 1])
    np.testing.assert_array_equal(r.fp, [0, 1, 0])


def test_difficult_is_neither_tp_nor_fp():
    truths = [GroundTruth(1, 500, 400, [G1, G2], [1, 1], difficult=[False, True])]
    dets = [ImageDetections(1, [G2, G1, FAR], [0.9, 0.8, 0.7], [1, 1, 1])]
    r = _one(voc.evaluate_voc(truths, dets, num_classes=1))
    assert r.num_truths == 1
    np.testing.assert_array_equal(r.tp, [0, 1, 0])
    np.testing.assert_array_equal(r.fp, [0, 0, 1])
    assert r.ap_area == pytest.approx(1.0) and r.ap_11pt == pytest.approx(1.0)
    # Without the difficult truth, the detection on it is a FP ranked first: AP halves.
    truths = [GroundTruth(1, 500, 400, [G1], [1])]
    r = _one(voc.evaluate_voc(truths, dets, num_classes=1))
    assert r.ap_area == pytest.approx(0.5) and r.ap_11pt == pytest.approx(0.5)


def test_best_truth_difficult_wins_over_normal_truth():
    # The detection overlaps a normal truth with IoU > .5 but a difficult one more:
    # the devkit takes the best truth only, so the detection is ignored, not a TP.
    normal = [0.0, 0.0, 99.0, 99.0]
    difficult = [0.0, 0.0, 99.0, 89.0]
    det = [0.0, 0.0, 99.0, 91.0]
    truths = [GroundTruth(1, 200, 200, [normal, difficult], [1, 1], difficult=[False, True])]
    r = _one(voc.evaluate_voc(truths, [ImageDetections(1, [det], [0.5], [1])], 1))
    np.testing.assert_array_equal(r.tp, [0])
    np.testing.assert_array_equal(r.fp, [0])
    assert r.ap_area == 0.0


def test_duplicate_is_fp_without_fallback_to_second_best():
    # Two truths side by side; both detections prefer truth A. The second is a FP even
    # though it overlaps truth B above .5 (no fall-back in the devkit).
    a = [0.0, 0.0, 99.0, 99.0]
    b = [10.0, 0.0, 109.0, 99.0]
    truths = [GroundTruth(1, 200, 200, [a, b], [1, 1])]
    dets = [ImageDetections(1, [a, [1.0, 0.0, 100.0, 99.0]], [0.9, 0.8], [1, 1])]
    r = _one(voc.evaluate_voc(truths, dets, 1))
    np.testing.assert_array_equal(r.tp, [1, 0])
    np.testing.assert_array_equal(r.fp, [0, 1])


def test_iou_threshold_is_strict_and_uses_plus_one():
    # Inclusive pixels: truth 0..99 (100 px), detection 0..49 (50 px) -> IoU exactly .5.
    truths = [GroundTruth(1, 200, 200, [[0.0, 0.0, 99.0, 99.0]], [1])]
    dets = [ImageDetections(1, [[0.0, 0.0, 49.0, 99.0]], [0.9], [1])]
    assert _one(voc.evaluate_voc(truths, dets, 1)).tp.tolist() == [0]
    assert _one(voc.evaluate_voc(truths, dets, 1, iou_threshold=0.49)).tp.tolist() == [1]
    # Continuous coordinates: 49/99 < .5 as well, 50/100 with the detection widened by 1.
    dets = [ImageDetections(1, [[0.0, 0.0, 50.0, 99.0]], [0.9], [1])]
    r = _one(voc.evaluate_voc(truths, dets, 1, iou_threshold=0.49, pixel_offset=0.0))
    assert r.tp.tolist() == [1]


def test_ties_keep_given_order():
    # Equal scores: the FP (given first) ranks before the TP, as the devkit's stable sort.
    truths = [GroundTruth(1, 500, 400, [G1], [1])]
    dets = [ImageDetections(1, [FAR, G1], [0.5, 0.5], [1, 1])]
    r = _one(voc.evaluate_voc(truths, dets, 1))
    np.testing.assert_array_equal(r.tp, [0, 1])
    assert r.ap_area == pytest.approx(0.5)


def test_class_without_truths_is_nan_and_left_out_of_map():
    truths = [GroundTruth(1, 500, 400, [G1], [1])]
    dets = [ImageDetections(1, [G1, G2], [0.9, 0.8], [1, 2])]
    res = voc.evaluate_voc(truths, dets, num_classes=3)
    assert res[0].ap_area == pytest.approx(1.0)
    assert np.isnan(res[1].ap_area) and np.isnan(res[1].ap_11pt)  # detections, no truth
    assert np.isnan(res[2].ap_area) and res[2].num_detections == 0  # nothing at all
    assert voc.mean_ap(res, use_07_metric=False) == pytest.approx(1.0)


def test_image_without_detections_counts_its_truths():
    truths = [GroundTruth(1, 500, 400, [G1], [1]), GroundTruth(2, 500, 400, [G1], [1])]
    dets = [ImageDetections(1, [G1], [0.9], [1]), ImageDetections(2, np.zeros((0, 4)), [], [])]
    r = _one(voc.evaluate_voc(truths, dets, 1))
    assert r.num_truths == 2
    np.testing.assert_allclose(r.recall, [0.5])
    assert r.ap_area == pytest.approx(0.5)
    # an image missing from `detections` altogether is the same as an empty entry
    r2 = _one(voc.evaluate_voc(truths, dets[:1], 1))
    assert r2.ap_area == r.ap_area and r2.ap_11pt == r.ap_11pt


def test_class_without_detections_is_zero():
    truths = [GroundTruth(1, 500, 400, [G1], [1])]
    r = _one(voc.evaluate_voc(truths, [], 1))
    assert r.ap_area == 0.0 and r.ap_11pt == 0.0


def test_11_point_thresholds_are_voc_eval_floats(devkit_voc_eval):
    # 10 truths, 3 found, no FP: recall tops out at exactly 3/10, which is below the
    # third np.arange threshold 0.30000000000000004: voc_eval's AP is 3/11, not 4/11.
    boxes = [[i * 20.0, 0.0, i * 20.0 + 10.0, 10.0] for i in range(10)]
    truths = [GroundTruth(1, 300, 300, boxes, [1] * 10)]
    dets = [ImageDetections(1, boxes[:3], [0.9, 0.8, 0.7], [1, 1, 1])]
    r = _one(voc.evaluate_voc(truths, dets, 1))
    assert r.ap_11pt == pytest.approx(3 / 11)
    assert devkit_voc_eval(truths, dets, 1)[2] == pytest.approx(3 / 11)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_07", [True, False])
def test_matches_devkit_voc_eval(seed, use_07, devkit_voc_eval, random_set):
    truths, dets = random_set(seed, string_ids=seed == 1)
    res = voc.evaluate_voc(truths, dets, num_classes=4)
    for c in range(1, 5):
        rec, prec, ap = devkit_voc_eval(truths, dets, c, use_07_metric=use_07)
        r = res[c - 1]
        np.testing.assert_array_equal(r.recall, rec)
        np.testing.assert_array_equal(r.precision, prec)
        assert (r.ap_11pt if use_07 else r.ap_area) == ap  # bit-identical


def test_small_chunks_give_same_answer(monkeypatch, random_set):
    truths, dets = random_set(3)
    full = voc.evaluate_voc(truths, dets, 4)
    original = voc._best_truth
    monkeypatch.setattr(voc, "_best_truth",
                        lambda *a, **k: original(*a, **{**k, "chunk": 7}))
    chunked = voc.evaluate_voc(truths, dets, 4)
    for a, b in zip(full, chunked):
        np.testing.assert_array_equal(a.tp, b.tp)
        assert a.ap_area == b.ap_area or (np.isnan(a.ap_area) and np.isnan(b.ap_area))


def test_voc_ap_matches_devkit_formula_on_random_curves(devkit_voc_ap):

    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 50))
        rec = np.sort(rng.choice(np.linspace(0, 1, 21), n))
        prec = rng.random(n)
        for use_07 in (True, False):
            assert voc.voc_ap(rec, prec, use_07) == devkit_voc_ap(rec, prec, use_07)


def test_bad_input():
    truths = [GroundTruth(1, 500, 400, [G1], [1])]
    with pytest.raises(ValueError, match="num_classes"):
        voc.evaluate_voc(truths, [ImageDetections(1, [G1], [0.5], [3])], num_classes=2)
    with pytest.raises(ValueError, match="no ground truth"):
        voc.evaluate_voc(truths, [ImageDetections(7, [G1], [0.5], [1])], num_classes=1)
    with pytest.raises(ValueError, match="twice"):
        voc.evaluate_voc(truths, [ImageDetections(1, [G1], [0.5], [1])] * 2, num_classes=1)
    with pytest.raises(ValueError, match="image 5.*xmax < xmin"):
        GroundTruth(5, 10, 10, [[5.0, 0.0, 4.0, 1.0]], [1])
    with pytest.raises(ValueError, match="labels must be integers 1..C"):
        GroundTruth(5, 10, 10, [[0.0, 0.0, 4.0, 1.0]], [0])
    with pytest.raises(ValueError, match="2 labels for 1 boxes"):
        GroundTruth(5, 10, 10, [[0.0, 0.0, 4.0, 1.0]], [1, 2])
