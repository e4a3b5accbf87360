"""ssd_jax.boxes: hand-computed cases, edge cases and properties (hypothesis)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ssd_jax import boxes as B


def test_format_conversions_hand_case():
    xyxy = np.array([[0.1, 0.2, 0.5, 0.8]], np.float32)
    cxcywh = np.array([[0.3, 0.5, 0.4, 0.6]], np.float32)
    np.testing.assert_allclose(B.xyxy_to_cxcywh(xyxy), cxcywh, atol=1e-7)
    np.testing.assert_allclose(B.cxcywh_to_xyxy(cxcywh), xyxy, atol=1e-7)


def test_conversions_keep_leading_batch_shape():
    x = jnp.zeros((2, 3, 5, 4))
    assert B.xyxy_to_cxcywh(x).shape == (2, 3, 5, 4)
    assert B.area(x).shape == (2, 3, 5)


def test_area_hand_cases_and_degenerate_boxes():
    boxes = np.array(
        [[0, 0, 2, 3], [1, 1, 1, 4], [2, 2, 1, 1], [0.5, 0.5, 0.5, 0.5]], np.float32
    )  # normal, zero width, inverted, point
    np.testing.assert_allclose(B.area(boxes), [6.0, 0.0, 0.0, 0.0])


def test_iou_hand_cases():
    a = np.array([[0, 0, 2, 2]], np.float32)
    b = np.array(
        [
            [1, 0, 3, 2],  # half overlap: inter 2, union 6
            [0, 0, 2, 2],  # identical
            [2, 0, 4, 2],  # touching edge: inter 0
            [5, 5, 6, 6],  # disjoint
            [0, 0, 1, 1],  # contained: inter 1, union 4
            [1, 1, 3, 3],  # corner: inter 1, union 7
        ],
        np.float32,
    )
    np.testing.assert_allclose(B.iou(a, b)[0], [1 / 3, 1, 0, 0, 1 / 4, 1 / 7], rtol=1e-6)


def test_iou_degenerate_boxes_give_zero_not_nan():
    good = np.array([[0.1, 0.1, 0.5, 0.5]], np.float32)
    bad = np.array(
        [[0.2, 0.2, 0.2, 0.4], [0.3, 0.3, 0.3, 0.3], [0.4, 0.4, 0.2, 0.2], [0, 0, 0, 0]],
        np.float32,
    )
    out = np.asarray(B.iou(bad, np.concatenate([good, bad])))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out, 0.0)


def test_iou_batched_and_jit():
    rng = np.random.default_rng(0)
    a = _random_boxes(rng, (3, 5))
    b = _random_boxes(rng, (3, 7))
    out = jax.jit(B.iou)(a, b)
    assert out.shape == (3, 5, 7)
    for i in range(3):
        np.testing.assert_allclose(out[i], B.iou(a[i], b[i]), rtol=1e-6)


def _random_boxes(rng, shape):
    lo = rng.uniform(0, 0.8, shape + (2,))
    size = rng.uniform(0.01, 0.5, shape + (2,))
    return np.concatenate([lo, lo + size], -1).astype(np.float32)


coord = st.floats(0.0, 1.0, width=32)
box = st.tuples(coord, coord, coord, coord).map(
    lambda c: (min(c[0], c[2]), min(c[1], c[3]), max(c[0], c[2]), max(c[1], c[3]))
)


@settings(max_examples=60, deadline=None)
@given(st.lists(box, min_size=1, max_size=6), st.lists(box, min_size=1, max_size=6))
def test_iou_properties(a, b):
    iou, area = _jitted_iou_area()  # one compilation per shape, not one per operation
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    ab = np.asarray(iou(a, b))
    ba = np.asarray(iou(b, a))
    assert np.all(np.isfinite(ab))
    assert np.all((ab >= 0) & (ab <= 1 + 1e-6))
    np.testing.assert_allclose(ab, ba.T, rtol=1e-6, atol=1e-7)  # symmetry
    self_iou = np.diag(np.asarray(iou(a, a)))
    positive = np.asarray(area(a)) > 1e-6
    np.testing.assert_allclose(self_iou[positive], 1.0, rtol=1e-5)  # identity
    np.testing.assert_array_equal(self_iou[np.asarray(area(a)) == 0], 0.0)


@functools.cache
def _jitted_iou_area():
    return jax.jit(B.iou), jax.jit(B.area)


def test_encode_hand_case():
    prior = np.array([0.5, 0.5, 0.2, 0.4], np.float32)  # cx, cy, w, h
    box = np.array([0.45, 0.3, 0.65, 1.1], np.float32)  # cx 0.55, cy 0.7, w 0.2, h 0.8
    expected = [
        (0.55 - 0.5) / (0.1 * 0.2),  # 2.5
        (0.7 - 0.5) / (0.1 * 0.4),  # 5.0
        math.log(0.2 / 0.2) / 0.2,  # 0
        math.log(0.8 / 0.4) / 0.2,  # log 2 / 0.2
    ]
    np.testing.assert_allclose(B.encode(box, prior), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(B.decode(np.asarray(expected, np.float32), prior), box, atol=1e-6)


def test_encode_custom_variances():
    prior = np.array([0.5, 0.5, 0.2, 0.4], np.float32)
    box = np.array([0.45, 0.3, 0.65, 1.1], np.float32)
    out = B.encode(box, prior, variances=(1.0, 1.0))
    np.testing.assert_allclose(out, [0.25, 0.5, 0.0, math.log(2)], rtol=1e-5, atol=1e-6)


size = st.floats(0.01, 1.0)
centre = st.floats(0.0, 1.0)


@settings(max_examples=60, deadline=None)
@given(
    st.tuples(centre, centre, size, size), st.tuples(centre, centre, size, size)
)
def test_encode_decode_round_trip(box_cxcywh, prior):
    box = B.cxcywh_to_xyxy(np.asarray(box_cxcywh, np.float32))
    prior = np.asarray(prior, np.float32)
    offsets = B.encode(box, prior)
    assert np.all(np.isfinite(offsets))
    # No size cap here: sizes up to 100x the prior's exceed the torchvision cap (62.5x),
    # which test_decode_caps_huge_size_offsets covers.
    np.testing.assert_allclose(B.decode(offsets, prior, max_log_size_ratio=None), box, atol=2e-6)


def test_decode_caps_huge_size_offsets():
    prior = np.array([0.5, 0.5, 0.1, 0.1], np.float32)
    out = np.asarray(B.decode(np.array([0, 0, 1e4, 1e4], np.float32), prior))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[2] - out[0], 0.1 * 1000 / 16, rtol=1e-5)
    uncapped = B.decode(np.array([0, 0, 1e4, 1e4], np.float32), prior, max_log_size_ratio=None)
    assert not np.all(np.isfinite(uncapped))


def test_encode_decode_batched_under_jit():
    rng = np.random.default_rng(1)
    priors = B.xyxy_to_cxcywh(_random_boxes(rng, (10,)))
    boxes = _random_boxes(rng, (4, 10))
    offsets = jax.jit(B.encode)(boxes, priors)
    assert offsets.shape == (4, 10, 4)
    np.testing.assert_allclose(jax.jit(B.decode)(offsets, priors), boxes, atol=2e-6)


def test_encode_matched_equals_encode_of_gathered_boxes():
    rng = np.random.default_rng(2)
    boxes = _random_boxes(rng, (6,))
    priors = B.xyxy_to_cxcywh(_random_boxes(rng, (40,)))
    index = rng.integers(0, 6, 40)
    np.testing.assert_allclose(
        jax.jit(B.encode_matched)(boxes, index, priors), B.encode(boxes[index], priors),
        rtol=1e-5, atol=1e-5,
    )
    # Zero-size boxes (padding) stay finite.
    out = B.encode_matched(np.zeros((2, 4), np.float32), np.array([0, 1, 1]), priors[:3])
    assert np.all(np.isfinite(out))
