"""Tests for ssd_jax.postprocess: numpy brute force, torchvision fixture/live, edge cases."""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import anchors, postprocess
from ssd_jax.boxes import MAX_LOG_SIZE_RATIO

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
FIXTURE = os.path.join(FIXTURES, "postprocess_torchvision.npz")


def _load_fixture_module():
    spec = importlib.util.spec_from_file_location(
        "make_postprocess_fixture", os.path.join(FIXTURES, "make_postprocess_fixture.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- reference


def _np_iou_row(box, others):
    """IoU of one xyxy box with [n,4] boxes, torchvision's nms formula (float64)."""
    xx1 = np.maximum(box[0], others[:, 0])
    yy1 = np.maximum(box[1], others[:, 1])
    xx2 = np.minimum(box[2], others[:, 2])
    yy2 = np.minimum(box[3], others[:, 3])
    inter = np.maximum(xx2 - xx1, 0) * np.maximum(yy2 - yy1, 0)
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (a + b - inter)  # NaN for 0/0, as torchvision


def reference_detect(logits, offsets, priors, score_threshold=0.01, nms_iou=0.45,
                     candidates_per_class=400, max_detections=200, variances=(0.1, 0.2)):
    """Brute force, one image and one box at a time, as torchvision's postprocess reads.

    Returns per image ``(boxes [n,4], scores [n], labels [n])`` sorted by score.
    """
    logits = logits.astype(np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)
    out = []
    for b in range(logits.shape[0]):
        off = offsets[b].astype(np.float64)
        ctr = priors[:, :2] + off[:, :2] * variances[0] * priors[:, 2:]
        size = priors[:, 2:] * np.exp(np.minimum(off[:, 2:] * variances[1], MAX_LOG_SIZE_RATIO))
        boxes = np.clip(np.concatenate([ctr - size / 2, ctr + size / 2], 1), 0, 1)
        all_boxes, all_scores, all_labels = [], [], []
        for c in range(1, logits.shape[-1]):
            s = probs[b, :, c]
            idx = np.nonzero(s > score_threshold)[0]
            idx = idx[np.argsort(-s[idx], kind="stable")][:candidates_per_class]
            cand_boxes, cand_scores = boxes[idx], s[idx]
            suppressed = np.zeros(len(idx), bool)
            for i in range(len(idx)):
                if suppressed[i]:
                    continue
                all_boxes.append(cand_boxes[i])
                all_scores.append(cand_scores[i])
                all_labels.append(c)
                ov = _np_iou_row(cand_boxes[i], cand_boxes[i + 1:])
                suppressed[i + 1:] |= ov > nms_iou
        order = np.argsort(-np.asarray(all_scores), kind="stable")[:max_detections]
        out.append((np.asarray(all_boxes).reshape(-1, 4)[order],
                    np.asarray(all_scores)[order], np.asarray(all_labels, int)[order]))
    return out


def assert_same_detections(dets, expected, atol_box=1e-5, atol_score=1e-6):
    """``dets``: a Detections; ``expected``: list per image of (boxes, scores, labels)."""
    boxes, scores, classes, valid = (np.asarray(x) for x in dets)
    for b, (eb, es, el) in enumerate(expected):
        n = int(valid[b].sum())
        assert n == len(es), f"image {b}: {n} detections, expected {len(es)}"
        assert valid[b, :n].all() and not valid[b, n:].any(), "valid must be a prefix"
        np.testing.assert_allclose(scores[b, :n], es, atol=atol_score)
        np.testing.assert_array_equal(classes[b, :n], el)
        np.testing.assert_allclose(boxes[b, :n], eb, atol=atol_box)
        assert (scores[b, n:] == 0).all() and (classes[b, n:] == 0).all()
        assert (boxes[b, n:] == 0).all()


def _random_case(seed, batch=3, p=200, c1=5, logit_scale=2.0, offset_scale=1.0):
    rng = np.random.default_rng(seed)
    cxcy = rng.uniform(0.05, 0.95, size=(p, 2))
    wh = rng.uniform(0.05, 0.5, size=(p, 2))
    priors = np.concatenate([cxcy, wh], 1).astype(np.float32)
    logits = (rng.normal(size=(batch, p, c1)) * logit_scale).astype(np.float32)
    offsets = (rng.normal(size=(batch, p, 4)) * offset_scale).astype(np.float32)
    return logits, offsets, priors


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "seed,settings",
    [
        (0, dict()),
        (1, dict(score_threshold=0.1, nms_iou=0.3, candidates_per_class=30, max_detections=50)),
        (2, dict(score_threshold=0.3, nms_iou=0.6, candidates_per_class=500, max_detections=20)),
        (3, dict(score_threshold=0.0, nms_iou=0.5, candidates_per_class=7, max_detections=100)),
    ],
)
def test_matches_numpy_reference(seed, settings):
    logits, offsets, priors = _random_case(seed)
    dets = postprocess.detect(jnp.asarray(logits), jnp.asarray(offsets), jnp.asarray(priors),
                              **settings)
    k = settings.get("max_detections", 200)
    assert dets.boxes.shape == (3, k, 4) and dets.scores.shape == (3, k)
    assert dets.classes.dtype == jnp.int32 and dets.valid.dtype == jnp.bool_
    assert_same_detections(dets, reference_detect(logits, offsets, priors, **settings))


def test_jit_equals_no_jit():
    logits, offsets, priors = _random_case(4, batch=2, p=60, c1=4)
    settings = dict(candidates_per_class=25, max_detections=30)
    jitted = postprocess.detect(logits, offsets, priors, **settings)
    with jax.disable_jit():
        eager = postprocess.detect(logits, offsets, priors, **settings)
    for a, b in zip(jitted, eager):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_sorted_and_clipped():
    logits, offsets, priors = _random_case(5, offset_scale=3.0)
    dets = postprocess.detect(logits, offsets, priors)
    scores = np.asarray(dets.scores)
    assert (np.diff(scores, axis=1) <= 0).all()
    boxes = np.asarray(dets.boxes)
    assert boxes.min() >= 0 and boxes.max() <= 1
    np.testing.assert_array_equal(np.asarray(dets.num_detections), np.asarray(dets.valid).sum(1))


def _fixture_case(data, name):
    logits = data[f"{name}/logits"]
    offsets = data[f"{name}/offsets"]
    settings = dict(
        score_threshold=float(data[f"{name}/score_threshold"]),
        nms_iou=float(data[f"{name}/nms_iou"]),
        candidates_per_class=int(data[f"{name}/candidates_per_class"]),
        max_detections=int(data[f"{name}/max_detections"]),
    )
    expected = [
        (data[f"{name}/{i}/boxes"], data[f"{name}/{i}/scores"], data[f"{name}/{i}/labels"])
        for i in range(logits.shape[0])
    ]
    return logits, offsets, settings, expected


@pytest.mark.parametrize("name", ["default", "small_k", "sparse"])
@pytest.mark.usefixtures("optimized_xla")
def test_matches_torchvision_fixture(name):
    fixture = _load_fixture_module()
    priors = fixture.anchors.generate(fixture.SPEC)
    with np.load(FIXTURE) as data:
        logits, offsets, settings, expected = _fixture_case(data, name)
    dets = postprocess.detect(logits, offsets, priors, **settings)
    # torchvision decodes in pixels of a 300x300 input: boxes agree to float32 rounding.
    assert_same_detections(dets, expected, atol_box=2e-6 * 300, atol_score=1e-6)


@pytest.mark.usefixtures("optimized_xla")
def test_matches_torchvision_live():
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    fixture = _load_fixture_module()
    settings = dict(score_threshold=0.02, nms_iou=0.45, candidates_per_class=100,
                    max_detections=150)
    logits, offsets, priors = fixture.make_inputs(11, 3, 8, 2.5, 1.0)
    expected = fixture.torchvision_detections(logits, offsets, priors, settings)
    dets = postprocess.detect(logits, offsets, priors, **settings)
    assert_same_detections(dets, expected, atol_box=2e-6 * 300, atol_score=1e-6)


# ----------------------------------------------------------------------------- edge cases


def _one_prior_case(num_priors, logits_row, offsets_row=(0, 0, 0, 0)):
    priors = np.tile(np.array([[0.5, 0.5, 0.2, 0.2]], np.float32), (num_priors, 1))
    logits = np.tile(np.asarray(logits_row, np.float32), (1, num_priors, 1))
    offsets = np.tile(np.asarray(offsets_row, np.float32), (1, num_priors, 1))
    return logits, offsets, priors


def test_identical_boxes_keep_one_per_class():
    logits, offsets, priors = _one_prior_case(10, [0.0, 2.0, 1.0])
    logits[0, :, 1] += np.linspace(0, 1, 10, dtype=np.float32)  # distinct scores, class 1
    dets = postprocess.detect(logits, offsets, priors, max_detections=5)
    # one survivor per class: identical boxes of different classes never suppress each other
    assert int(dets.num_detections[0]) == 2
    np.testing.assert_array_equal(np.asarray(dets.classes[0, :2]), [1, 2])
    # the survivor of class 1 is its best-scoring prior (the last one)
    best = reference_detect(logits, offsets, priors, max_detections=5)[0]
    assert_same_detections(dets, [best])


def test_identical_boxes_and_scores_keep_exactly_one():
    logits, offsets, priors = _one_prior_case(6, [0.0, 1.0])
    dets = postprocess.detect(logits, offsets, priors)
    assert int(dets.num_detections[0]) == 1


def test_zero_area_boxes_never_suppress_nor_are_suppressed():
    # dw = -1e4 gives exp(-2000) = 0 width: all boxes are zero-area at the same place.
    logits, offsets, priors = _one_prior_case(5, [0.0, 1.0], offsets_row=(0, 0, -1e4, 0))
    logits[0, :, 1] += np.arange(5, dtype=np.float32)
    dets = postprocess.detect(logits, offsets, priors, max_detections=8)
    assert int(dets.num_detections[0]) == 5
    widths = np.asarray(dets.boxes[0, :5, 2] - dets.boxes[0, :5, 0])
    assert (widths == 0).all()
    assert_same_detections(dets, reference_detect(logits, offsets, priors, max_detections=8))


def test_all_scores_under_threshold():
    logits, offsets, priors = _random_case(6, logit_scale=0.1)  # scores ~ 1/5
    dets = postprocess.detect(logits, offsets, priors, score_threshold=0.5)
    assert not np.asarray(dets.valid).any()
    assert (np.asarray(dets.scores) == 0).all() and (np.asarray(dets.classes) == 0).all()
    assert (np.asarray(dets.num_detections) == 0).all()


def test_score_threshold_is_strict():
    logits, offsets, priors = _one_prior_case(1, [0.0, 0.0])  # score exactly 0.5
    assert int(postprocess.detect(logits, offsets, priors, score_threshold=0.5).num_detections[0]) == 0
    assert int(postprocess.detect(logits, offsets, priors, score_threshold=0.49).num_detections[0]) == 1


def test_nms_iou_threshold_is_strict():
    boxes = jnp.array([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.5]]])  # IoU exactly 0.5
    valid = jnp.ones((1, 2), bool)
    np.testing.assert_array_equal(postprocess.nms_keep_mask(boxes, valid, 0.5), [[True, True]])
    np.testing.assert_array_equal(postprocess.nms_keep_mask(boxes, valid, 0.49), [[True, False]])


def test_suppressed_box_does_not_suppress():
    # A suppresses B (IoU 0.6), B would suppress C (IoU 0.6) but A and C are apart: keep A, C.
    # A-B: 0.375 / 0.625 = 0.6; B-C: 0.325 / 0.675 = 0.48; A-C: 0.2 / 0.8 = 0.25.
    boxes = jnp.array([[[0.0, 0.0, 0.5, 1.0], [0.125, 0.0, 0.625, 1.0], [0.3, 0.0, 0.8, 1.0]]])
    keep = postprocess.nms_keep_mask(boxes, jnp.ones((1, 3), bool), 0.45)
    np.testing.assert_array_equal(keep, [[True, False, True]])


def test_invalid_candidates_do_not_suppress():
    boxes = jnp.array([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]])
    keep = postprocess.nms_keep_mask(boxes, jnp.array([[False, True]]), 0.45)
    np.testing.assert_array_equal(keep, [[False, True]])


def test_fewer_slots_than_max_detections_pads():
    logits, offsets, priors = _random_case(7, batch=1, p=10, c1=3)
    dets = postprocess.detect(logits, offsets, priors, score_threshold=0.0, nms_iou=1.0,
                              candidates_per_class=4, max_detections=12)
    assert dets.scores.shape == (1, 12)
    assert int(dets.num_detections[0]) == 8  # 2 classes x 4 candidates, nothing suppressed
    assert_same_detections(dets, reference_detect(logits, offsets, priors, score_threshold=0.0,
                                                  nms_iou=1.0, candidates_per_class=4,
                                                  max_detections=12))


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((2, 10, 3), (2, 10, 4), (10, 4)), None),
        (((2, 10), (2, 10, 4), (10, 4)), "class_logits"),
        (((2, 10, 1), (2, 10, 4), (10, 4)), "background"),
        (((2, 10, 3), (2, 9, 4), (10, 4)), "box_offsets"),
        (((2, 10, 3), (2, 10, 4), (10, 2)), "priors"),
    ],
)
def test_bad_shapes(shapes, match):
    args = [jnp.zeros(s, jnp.float32) for s in shapes]
    if match is None:
        postprocess.detect(*args)
    else:
        with pytest.raises(ValueError, match=match):
            postprocess.detect(*args)


def test_bad_sizes():
    args = [jnp.zeros(s, jnp.float32) for s in ((1, 10, 3), (1, 10, 4), (10, 4))]
    with pytest.raises(ValueError, match="max_detections"):
        postprocess.detect(*args, max_detections=0)


def test_variances_as_list_and_inside_an_outer_jit():
    logits, offsets, priors = _random_case(8, batch=2, p=50, c1=3)
    ref = postprocess.detect(logits, offsets, priors, variances=(0.1, 0.2))
    as_list = postprocess.detect(logits, offsets, priors, variances=[0.1, 0.2])
    outer = jax.jit(lambda a, b: postprocess.detect(a, b, priors))(logits, offsets)
    for x, y, z in zip(ref, as_list, outer):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        np.testing.assert_array_equal(np.asarray(x), np.asarray(z))


@pytest.mark.parametrize("budget_pairs", [2 * 3 * 16 * 16, 2 * 16 * 16, 1])
def test_nms_in_class_chunks_equals_all_classes_at_once(monkeypatch, budget_pairs):
    """Chunks of 3 classes (10 classes: the last chunk padded), of 1, and the floor of 1:
    the same keep mask as every class at once."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 0.7, (2, 10, 16, 2))
    boxes = jnp.asarray(np.concatenate([xy, xy + rng.uniform(0.05, 0.3, (2, 10, 16, 2))], -1), jnp.float32)
    valid = jnp.asarray(rng.random((2, 10, 16)) < 0.8)
    whole = postprocess.nms_keep_mask(boxes, valid, 0.45)
    monkeypatch.setattr(postprocess, "NMS_PAIRS_BUDGET", budget_pairs)
    chunked = postprocess._nms_by_class_chunks(boxes, valid, 0.45)
    np.testing.assert_array_equal(chunked, whole)
    assert 0 < int(whole.sum()) < int(valid.sum())  # some kept, some suppressed


def test_detect_memory_at_coco_size_is_bounded():
    """80 classes, batch 32, 400 candidates per class, SSD300-COCO priors: the compiled
    detect needs under 256 MiB of temporary memory (all classes at once: 410 Mi overlap
    pairs, 0.42 GiB measured); compiled only, not run."""
    priors = anchors.generate(anchors.SSD300_COCO)
    b, p = 32, priors.shape[0]
    compiled = jax.jit(lambda logits, offsets: postprocess.detect(logits, offsets, priors)).lower(
        jax.ShapeDtypeStruct((b, p, 81), jnp.float32), jax.ShapeDtypeStruct((b, p, 4), jnp.float32)).compile()
    analysis = compiled.memory_analysis()
    assert analysis is not None and analysis.temp_size_in_bytes < 256 * 2**20, analysis
