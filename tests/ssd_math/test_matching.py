"""ssd_jax.matching: hand-computed cases, edge cases, and an independent loop reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import anchors, matching
from ssd_jax import boxes as B


def _np_iou(a, b):
    """Plain numpy IoU ([N,4] x [M,4]), written independently of ssd_jax.boxes, in
    float32 so that near-ties between priors break the same way as on device."""
    a = np.asarray(a, np.float32)[:, None, :]
    b = np.asarray(b, np.float32)[None, :, :]
    iw = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0)
    ih = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0)
    area = lambda x: np.maximum(x[..., 2] - x[..., 0], 0) * np.maximum(x[..., 3] - x[..., 1], 0)  # noqa: E731
    inter = iw * ih
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0).astype(np.float32)


def reference_match(gt_boxes, gt_labels, priors, threshold=0.5, variances=(0.1, 0.2)):
    """ssd.pytorch's ``match`` in numpy with loops, plus the padding rule (label 0 slots
    dropped) and 'a truth overlapping no prior claims nothing'."""
    keep = gt_labels > 0
    gt_boxes, gt_labels = np.asarray(gt_boxes, np.float64)[keep], gt_labels[keep]
    num_priors = len(priors)
    loc = np.zeros((num_priors, 4))
    labels = np.zeros(num_priors, np.int64)
    if len(gt_boxes) == 0:
        return loc, labels
    p = np.asarray(priors, np.float32)
    p_xyxy = np.concatenate([p[:, :2] - p[:, 2:] / 2, p[:, :2] + p[:, 2:] / 2], 1)
    overlaps = _np_iou(gt_boxes, p_xyxy)
    p = p.astype(np.float64)
    best_truth_iou = overlaps.max(0)
    best_truth = overlaps.argmax(0)
    for g in range(len(gt_boxes)):  # later truths overwrite earlier ones
        if overlaps[g].max() > 0:
            best_prior = overlaps[g].argmax()
            best_truth[best_prior] = g
            best_truth_iou[best_prior] = 2.0
    for i in range(num_priors):
        if best_truth_iou[i] >= threshold:
            x0, y0, x1, y1 = gt_boxes[best_truth[i]]
            cx, cy, w, h = p[i]
            loc[i] = [((x0 + x1) / 2 - cx) / (variances[0] * w), ((y0 + y1) / 2 - cy) / (variances[0] * h),
                      np.log((x1 - x0) / w) / variances[1], np.log((y1 - y0) / h) / variances[1]]
            labels[i] = gt_labels[best_truth[i]]
    return loc, labels


PRIORS = np.array(
    [[0.5, 0.5, 0.2, 0.2],  # 0: centre
     [0.1, 0.1, 0.1, 0.1],  # 1: top-left corner, touching the border
     [0.8, 0.8, 0.2, 0.2],  # 2
     [0.5, 0.5, 0.4, 0.4]],  # 3: big centre
    np.float32,
)


def _match(boxes, labels, priors=PRIORS, **kw):
    loc, lab = matching.match(jnp.asarray(boxes, jnp.float32), jnp.asarray(labels, jnp.int32),
                              jnp.asarray(priors), **kw)
    return np.asarray(loc), np.asarray(lab)


def test_forced_best_prior_below_threshold():
    # IoU with prior 2 ([0.7, 0.7, 0.9, 0.9]) is 0.01 / 0.04 = 0.25 < 0.5, but it is the best.
    box = [[0.8, 0.8, 0.9, 0.9]]
    assert _np_iou(np.array(box), np.array([[0.7, 0.7, 0.9, 0.9]]))[0, 0] == pytest.approx(0.25)
    loc, lab = _match(box, [3])
    np.testing.assert_array_equal(lab, [0, 0, 3, 0])
    np.testing.assert_allclose(loc[2], B.encode(np.array(box[0], np.float32), PRIORS[2]), rtol=1e-5)
    np.testing.assert_array_equal(loc[[0, 1, 3]], 0.0)


def test_threshold_is_inclusive():
    # Prior [0.25, 0.25, 0.75, 0.75]; truth [0.25, 0.25, 0.75, 0.5] covers half: IoU 0.5
    # exactly (binary fractions, no rounding).
    box = [[0.25, 0.25, 0.75, 0.5]]
    priors = np.array([[0.5, 0.5, 0.5, 0.5]] * 2, np.float32)  # two copies: forced + by IoU
    _, lab = _match(box, [1], priors=priors)
    np.testing.assert_array_equal(lab, [1, 1])
    _, lab = _match(box, [1], priors=priors, iou_threshold=0.51)
    np.testing.assert_array_equal(lab, [1, 0])  # only the forced copy


def test_two_truths_competing_for_one_prior_the_later_wins():
    first = [0.42, 0.42, 0.6, 0.6]  # IoU with prior 0 ([0.4,0.4,0.6,0.6]) = 0.81
    second = [0.4, 0.4, 0.52, 0.52]  # IoU with prior 0 = 0.36, also its best prior
    loc, lab = _match([first, second], [1, 2], priors=PRIORS[:3])
    np.testing.assert_array_equal(lab, [2, 0, 0])  # ssd.pytorch's loop: the later truth wins
    np.testing.assert_allclose(loc[0], B.encode(np.array(second, np.float32), PRIORS[0]), rtol=1e-5)


def test_every_prior_above_threshold_takes_its_best_truth():
    truth_a = [0.4, 0.4, 0.6, 0.6]  # identical to prior 0
    truth_b = [0.7, 0.7, 0.9, 0.9]  # identical to prior 2
    loc, lab = _match([truth_a, truth_b], [5, 7])
    # Prior 3 overlaps truth_a with IoU 0.04 / 0.16 = 0.25: background.
    np.testing.assert_array_equal(lab, [5, 0, 7, 0])
    np.testing.assert_allclose(loc[[0, 2]], 0.0, atol=1e-5)  # perfect fits encode to ~0


def test_padding_slots_take_part_in_nothing():
    truth = [0.7, 0.7, 0.9, 0.9]
    padded = [[0.4, 0.4, 0.6, 0.6], truth, [0.0, 0.0, 0.0, 0.0]]  # slot 0 is a perfect fit but padding
    loc, lab = _match(padded, [0, 4, 0])
    loc1, lab1 = _match([truth], [4])
    np.testing.assert_array_equal(lab, lab1)
    np.testing.assert_allclose(loc, loc1)
    np.testing.assert_array_equal(lab, [0, 0, 4, 0])


def test_image_without_truths_is_all_background_and_finite():
    loc, lab = _match(np.zeros((3, 4)), [0, 0, 0])
    np.testing.assert_array_equal(lab, 0)
    np.testing.assert_array_equal(loc, 0.0)


def test_degenerate_truth_claims_nothing_and_stays_finite():
    loc, lab = _match([[0.5, 0.5, 0.5, 0.7], [0.7, 0.7, 0.9, 0.9]], [1, 2])
    np.testing.assert_array_equal(lab, [0, 0, 2, 0])
    assert np.all(np.isfinite(loc))


def test_truth_touching_the_border():
    loc, lab = _match([[0.0, 0.0, 0.15, 0.15]], [9])
    assert lab[1] == 9 and np.all(np.isfinite(loc))


def _random_image(rng, num_slots, num_real):
    centre = rng.uniform(0, 1, (num_slots, 2))
    size = rng.uniform(0.02, 0.7, (num_slots, 2))
    boxes = np.clip(np.concatenate([centre - size / 2, centre + size / 2], 1), 0, 1)
    labels = np.zeros(num_slots, np.int32)
    real = rng.choice(num_slots, num_real, replace=False)
    labels[real] = rng.integers(1, 21, num_real)
    return boxes.astype(np.float32), labels


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_loop_reference_on_ssd300_priors(seed):
    rng = np.random.default_rng(seed)
    priors = anchors.generate(anchors.SSD300_VOC)
    boxes, labels = _random_image(rng, 8, [0, 1, 3, 6][seed])
    loc, lab = jax.jit(matching.match)(boxes, labels, priors)
    ref_loc, ref_lab = reference_match(boxes, labels, priors)
    np.testing.assert_array_equal(np.asarray(lab), ref_lab)
    np.testing.assert_allclose(np.asarray(loc), ref_loc, rtol=1e-4, atol=1e-4)


def test_match_batch_equals_per_image_and_jit_equals_eager():
    rng = np.random.default_rng(7)
    priors = anchors.generate(anchors.PriorSpec(64, (4, 2), (16, 32), (12, 30), (30, 50), ((2,), (2, 3))))
    images = [_random_image(rng, 5, n) for n in (0, 1, 5)]
    boxes = np.stack([b for b, _ in images])
    labels = np.stack([l for _, l in images])
    loc, lab = jax.jit(matching.match_batch)(boxes, labels, priors)
    assert loc.shape == (3, len(priors), 4) and lab.shape == (3, len(priors))
    assert loc.dtype == jnp.float32 and lab.dtype == jnp.int32
    for i in range(3):
        eager_loc, eager_lab = matching.match(boxes[i], labels[i], priors)
        np.testing.assert_array_equal(lab[i], eager_lab)
        np.testing.assert_allclose(loc[i], eager_loc, rtol=1e-6, atol=1e-6)
        ref_loc, ref_lab = reference_match(boxes[i], labels[i], priors)
        np.testing.assert_array_equal(lab[i], ref_lab)
        np.testing.assert_allclose(loc[i], ref_loc, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_threshold_outside_0_1_is_an_error(threshold):
    with pytest.raises(ValueError, match="iou_threshold"):
        _match([[0.1, 0.1, 0.2, 0.2]], [1], iou_threshold=threshold)
