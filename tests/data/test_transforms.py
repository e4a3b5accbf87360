"""Augmentation ops: valid boxes inside the image, the min-IoU constraint, flip, no-box images."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssd_jax.data import transforms as T


@st.composite
def image_and_boxes(draw, max_side=48, max_boxes=6):
    h = draw(st.integers(4, max_side))
    w = draw(st.integers(4, max_side))
    n = draw(st.integers(0, max_boxes))
    boxes = []
    for _ in range(n):
        x0 = draw(st.floats(0, w - 1, allow_nan=False))
        y0 = draw(st.floats(0, h - 1, allow_nan=False))
        x1 = draw(st.floats(x0 + 1, w, allow_nan=False))
        y1 = draw(st.floats(y0 + 1, h, allow_nan=False))
        boxes.append((x0, y0, x1, y1))
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)  # float32 rounding of w - 1 + 1
    image = np.random.default_rng(draw(st.integers(0, 2**31))).integers(0, 256, (h, w, 3), dtype=np.uint8)
    labels = np.arange(1, n + 1, dtype=np.int32)
    return image, boxes, labels


OPS = {
    "photometric": lambda i, b, l, r: T.photometric_distort(i, b, l, r, p=1.0),
    "expand": lambda i, b, l, r: T.expand(i, b, l, r, p=1.0),
    "crop": T.random_crop,
    "crop_0.9": lambda i, b, l, r: T.random_crop(i, b, l, r, min_ious=(0.9,)),
    "flip": lambda i, b, l, r: T.horizontal_flip(i, b, l, r, p=1.0),
    "resize": lambda i, b, l, r: T.resize(i, b, l, r, size=(17, 23)),
    "ssd_augment": T.ssd_augment,
}


def _check(image, boxes, labels):
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert boxes.shape == (len(labels), 4) and boxes.dtype == np.float32
    h, w = image.shape[:2]
    assert T.boxes_valid(boxes, h, w).all(), (boxes, h, w)


@pytest.mark.parametrize("name", sorted(OPS))
@settings(max_examples=40, deadline=None)
@given(data=image_and_boxes(), seed=st.integers(0, 2**32 - 1))
def test_ops_keep_boxes_valid_and_inside(name, data, seed):
    image, boxes, labels = data
    out = OPS[name](image, boxes, labels, np.random.default_rng(seed))
    _check(*out)
    assert set(out[2].tolist()) <= set(labels.tolist())


@pytest.mark.parametrize("name", sorted(OPS))
def test_images_without_boxes_pass(name):
    image = np.full((20, 30, 3), 77, np.uint8)
    for seed in range(5):
        out = OPS[name](image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), np.random.default_rng(seed))
        _check(*out)
        assert out[1].shape == (0, 4)


@pytest.mark.parametrize("min_iou", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9])
@settings(max_examples=30, deadline=None)
@given(data=image_and_boxes(max_side=64), seed=st.integers(0, 2**32 - 1))
def test_crop_window_satisfies_min_iou(min_iou, data, seed):
    image, boxes, _ = data
    if len(boxes) == 0:
        return
    h, w = image.shape[:2]
    window = T.sample_crop_window(boxes, h, w, np.random.default_rng(seed), min_iou)
    if window is None:
        return
    x0, y0, x1, y1 = window
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    # side fraction s * sqrt(a) >= 0.3 * sqrt(0.5), less half a pixel of rounding
    assert x1 - x0 >= max(1, 0.3 * np.sqrt(0.5) * w - 0.5)
    assert y1 - y0 >= max(1, 0.3 * np.sqrt(0.5) * h - 0.5)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = (centres[:, 0] > x0) & (centres[:, 0] < x1) & (centres[:, 1] > y0) & (centres[:, 1] < y1)
    assert inside.any()
    assert T.box_iou(boxes[inside].astype(np.float64), window[None].astype(np.float64)).max() >= min_iou


def test_crop_constraint_really_enforced():
    """A 10x10 box in a 200x200 image can never reach IoU 0.5 with a patch of side
    >= 60 (the IoU is at most 100/3600): every attempt must fail and leave the image."""
    boxes = np.array([[95, 95, 105, 105]], np.float32)
    image = np.zeros((200, 200, 3), np.uint8)
    labels = np.array([1], np.int32)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        assert T.sample_crop_window(boxes, 200, 200, rng, 0.5) is None
        out = T.random_crop(image, boxes, labels, np.random.default_rng(seed), min_ious=(0.5,))
        assert out[0] is image and out[1] is boxes
    # ... while the 0.0 constraint (a centre inside) succeeds and keeps the box.
    window = T.sample_crop_window(boxes, 200, 200, np.random.default_rng(0), 0.0, max_trials=1000)
    assert window is not None


@pytest.mark.parametrize("min_iou", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9])
def test_crop_windows_are_found_and_satisfy_min_iou(min_iou):
    """The property test above checks the windows it gets; here windows must be found (a
    box of 50-95% of the image side, 95-100% for IoU 0.9, reaches the threshold within the
    50 trials most of the time)."""
    rng = np.random.default_rng(int(min_iou * 10))
    found = 0
    for _ in range(40):
        w, h = 100, 80
        lo, hi = (0.5, 0.95) if min_iou < 0.9 else (0.95, 1.0)  # IoU 0.9 needs a near-whole-image box
        bw, bh = rng.uniform(lo, hi) * w, rng.uniform(lo, hi) * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        boxes = np.array([[x0, y0, x0 + bw, y0 + bh], [5, 5, 15, 20]], np.float32)
        window = T.sample_crop_window(boxes, h, w, rng, min_iou)
        if window is None:
            continue
        found += 1
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = ((centres[:, 0] > window[0]) & (centres[:, 0] < window[2]) & (centres[:, 1] > window[1])
                  & (centres[:, 1] < window[3]))
        assert inside.any()
        assert T.box_iou(boxes[inside].astype(np.float64), window[None].astype(np.float64)).max() >= min_iou
    assert found >= 10, f"{found} of 40 windows found at min IoU {min_iou}"


def test_random_crop_chooses_uniformly_among_the_samplers_that_found_a_patch():
    """Caffe's samplers (whole image, unconstrained, min IoU 0.1 ... 0.9), each with up to
    50 trials; the crop is one of the patches found, uniformly. A box of 90% of the image
    side lets the first six samplers find one every time: each is chosen about 1/7 of the
    time (1/6.5 here), and each chosen patch satisfies its own sampler. Min IoU 0.9 needs a
    patch of 33-40 px square: it finds one in about half the draws, so it is chosen about
    half as often."""
    assert T.SSD_MIN_IOUS == (None, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
    boxes = np.array([[2, 2, 38, 38]], np.float32)
    counts = np.zeros(len(T.SSD_MIN_IOUS), int)
    for seed in range(1400):
        i, window = T.choose_crop(boxes, 40, 40, np.random.default_rng(seed))
        counts[i] += 1
        if T.SSD_MIN_IOUS[i] is None:
            assert window is None
        else:
            assert T.patches_satisfy(boxes, window[None], T.SSD_MIN_IOUS[i])[0]
    assert all(170 <= c <= 260 for c in counts[:6]) and 60 <= counts[6] <= 140, counts


def test_samplers_that_cannot_succeed_are_never_chosen():
    """A 10x10 box in a 200x200 image: no patch (side >= 42 px) reaches IoU 0.1, so the
    crop is the whole image or the unconstrained patch, half the time each; the crop
    keeps the box (its centre is inside)."""
    boxes, labels = np.array([[95, 95, 105, 105]], np.float32), np.array([1], np.int32)
    image = np.zeros((200, 200, 3), np.uint8)
    chosen = [T.choose_crop(boxes, 200, 200, np.random.default_rng(seed))[0] for seed in range(400)]
    assert set(chosen) == {0, 1} and 160 <= chosen.count(1) <= 240
    for seed in range(20):
        out_i, out_b, out_l = T.random_crop(image, boxes, labels, np.random.default_rng(seed))
        assert len(out_b) == 1 and out_l[0] == 1


def test_draw_patches_fixed_draws_and_ranges():
    """All trials are drawn at once (the generator advances by the same amount whatever the
    outcome) and every patch lies inside the image with its scale and aspect in range."""
    rng = np.random.default_rng(3)
    p = T.draw_patches(80, 120, rng, 5000)
    assert p.shape == (5000, 4) and p.dtype == np.int64
    assert (p[:, 0] >= 0).all() and (p[:, 1] >= 0).all() and (p[:, 2] <= 120).all() and (p[:, 3] <= 80).all()
    w, h = (p[:, 2] - p[:, 0]) / 120, (p[:, 3] - p[:, 1]) / 80
    scale, aspect = np.sqrt(w * h), w / h
    assert scale.min() >= 0.3 - 0.02 and scale.max() <= 1.0
    assert aspect.min() >= 0.5 - 0.05 and aspect.max() <= 2.0 + 0.1
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    T.sample_crop_window(np.array([[0, 0, 1, 1]], np.float32), 80, 120, a, 0.9)
    b.random((4, 50))
    assert a.random() == b.random()


def test_crop_keeps_content_and_centre_rule():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 30], [35, 5, 49, 15]], np.float32)
    labels = np.array([1, 2, 3], np.int32)
    out_i, out_b, out_l = T.crop(image, boxes, labels, np.array([8, 2, 38, 32]))
    np.testing.assert_array_equal(out_i, image[2:32, 8:38])
    # box 0 centre (5, 5) is outside x0=8; box 2 centre (42, 10) is outside x1=38
    np.testing.assert_array_equal(out_l, [2])
    np.testing.assert_allclose(out_b, [[12, 18, 30, 28]])


@settings(max_examples=50, deadline=None)
@given(data=image_and_boxes())
def test_flip_is_an_involution(data):
    image, boxes, labels = data
    rng = np.random.default_rng(0)
    once = T.horizontal_flip(image, boxes, labels, rng, p=1.0)
    twice = T.horizontal_flip(*once, rng, p=1.0)
    np.testing.assert_array_equal(twice[0], image)
    np.testing.assert_allclose(twice[1], boxes, atol=1e-4)  # exact up to float rounding
    np.testing.assert_array_equal(twice[2], labels)
    # the flipped box covers the mirrored pixels
    np.testing.assert_array_equal(once[0], image[:, ::-1])


def test_flip_integer_boxes_exact():
    b = np.array([[0, 1, 3, 4], [2, 2, 10, 5]], np.float32)
    np.testing.assert_array_equal(T.flip_boxes(b, 10), [[7, 1, 10, 4], [0, 2, 8, 5]])
    np.testing.assert_array_equal(T.flip_boxes(T.flip_boxes(b, 10), 10), b)


def test_expand_places_image_and_fills_mean():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    boxes = np.array([[2, 3, 7, 9]], np.float32)
    out_i, out_b, _ = T.expand(image, boxes, np.array([1], np.int32), np.random.default_rng(1), fill=(10, 20, 30), p=1.0)
    assert out_i.shape[0] >= 10 and out_i.shape[1] >= 12
    dx, dy = int(out_b[0, 0] - 2), int(out_b[0, 1] - 3)
    np.testing.assert_array_equal(out_i[dy : dy + 10, dx : dx + 12], image)
    np.testing.assert_array_equal(out_i[0, 0] if (dx, dy) != (0, 0) else out_i[-1, -1], [10, 20, 30])
    seen_ratio = [T.expand(image, boxes, np.array([1]), np.random.default_rng(s), p=1.0)[0].shape[1] / 12 for s in range(200)]
    assert 1.0 <= min(seen_ratio) and max(seen_ratio) <= 4.0 and max(seen_ratio) > 3.0


def test_photometric_identity_when_off_and_hsv_roundtrip():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = T.photometric_distort(image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), rng, p=0.0)
    np.testing.assert_array_equal(out[0], image)
    x = image.astype(np.float32)
    np.testing.assert_allclose(T.hsv_to_rgb(T.rgb_to_hsv(x)), x, atol=1e-3)
    hsv = T.rgb_to_hsv(np.array([[255.0, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], np.float32))
    np.testing.assert_allclose(hsv[:, 0], [0, 120, 240, 0])
    np.testing.assert_allclose(hsv[:, 1], [1, 1, 1, 0])


def test_photometric_ranges():
    """Brightness alone moves a mid-grey image by at most 32 levels."""
    image = np.full((4, 4, 3), 128, np.uint8)
    deltas = []
    for s in range(100):
        out = T.photometric_distort(image, np.zeros((0, 4)), np.zeros((0,)), np.random.default_rng(s),
                                    contrast=(1, 1), saturation=(1, 1), hue=0.0, p=1.0)[0]
        deltas.append(int(out[0, 0, 0]) - 128)
    assert max(abs(d) for d in deltas) <= 32 and len(set(deltas)) > 20


def test_resize_scales_boxes():
    image = np.zeros((20, 40, 3), np.uint8)
    out_i, out_b, _ = T.resize(image, np.array([[10, 5, 40, 20]], np.float32), np.array([1]), size=10)
    assert out_i.shape == (10, 10, 3)
    np.testing.assert_allclose(out_b, [[2.5, 2.5, 10, 10]])
