"""ssd_jax.anchors: prior counts, closed-form priors, ordering, references, validation."""

import dataclasses
import itertools
import math
import os

import numpy as np
import pytest

from ssd_jax import anchors as A

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")


@pytest.mark.parametrize(
    "spec, count, per_cell",
    [
        (A.SSD300_VOC, 8732, (4, 6, 6, 6, 4, 4)),
        (A.SSD300_COCO, 8732, (4, 6, 6, 6, 4, 4)),
        (A.SSD512_VOC, 24564, (4, 6, 6, 6, 6, 4, 4)),
        (A.SSD512_COCO, 24564, (4, 6, 6, 6, 6, 4, 4)),
    ],
)
def test_prior_counts(spec, count, per_cell):
    priors = A.generate(spec)
    assert priors.shape == (count, 4) and priors.dtype == np.float32
    assert spec.num_priors == count
    assert spec.boxes_per_cell == per_cell
    assert np.all((priors[:, 2:] > 0) & (priors[:, 2:] <= 1))
    assert np.all(priors[:, :2] > 0)
    if spec.clip == "all":
        assert np.all(priors <= 1)


def test_closed_form_priors_ssd300_voc():
    priors = A.generate(A.SSD300_VOC)
    # First prior: map 0, cell (0, 0), min-size square 30 px.
    np.testing.assert_allclose(priors[0], [4 / 300, 4 / 300, 0.1, 0.1], rtol=1e-6)
    # Its second box: sqrt(30 * 60) = 42.43 px square.
    np.testing.assert_allclose(priors[1, 2:], math.sqrt(30 * 60) / 300, rtol=1e-6)
    # Map 1 (19x19, step 16, min 60): row 3, column 5, box 4 = ratio 3 (w > h).
    index = 38 * 38 * 4 + (3 * 19 + 5) * 6 + 4
    s = 60 / 300
    expected = [(5 + 0.5) * 16 / 300, (3 + 0.5) * 16 / 300, s * math.sqrt(3), s / math.sqrt(3)]
    np.testing.assert_allclose(priors[index], expected, rtol=1e-6)
    # ... and box 5 its transpose.
    np.testing.assert_allclose(priors[index + 1, 2:], expected[3:1:-1], rtol=1e-6)
    # Last prior: map 5 (1x1), ratio-2 transpose: w = 264/300/sqrt2, h = 264*sqrt2/300 > 1 -> clipped.
    np.testing.assert_allclose(priors[-1], [0.5, 0.5, 264 / 300 / math.sqrt(2), 1.0], rtol=1e-6)


def test_rows_are_row_major_cells_then_boxes():
    spec = A.PriorSpec(100, (2,), (50,), (20,), (40,), ((2,),))
    priors = A.generate(spec)
    centres = priors[::4, :2]  # one per cell
    np.testing.assert_allclose(centres, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    np.testing.assert_allclose(priors[:4, 2:], [[0.2, 0.2], [math.sqrt(0.08)] * 2,
                                                [0.2 * math.sqrt(2), 0.2 / math.sqrt(2)],
                                                [0.2 / math.sqrt(2), 0.2 * math.sqrt(2)]], rtol=1e-6)


def _ssd_pytorch_style_priors(spec):
    """An independent reference written as ssd.pytorch's PriorBox loop (itertools.product)."""
    mean = []
    for k, f in enumerate(spec.feature_sizes):
        for i, j in itertools.product(range(f), repeat=2):
            f_k = spec.image_size / spec.steps[k]
            cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
            s_k = spec.min_sizes[k] / spec.image_size
            mean += [cx, cy, s_k, s_k]
            s_k_prime = math.sqrt(s_k * (spec.max_sizes[k] / spec.image_size))
            mean += [cx, cy, s_k_prime, s_k_prime]
            for ar in spec.aspect_ratios[k]:
                mean += [cx, cy, s_k * math.sqrt(ar), s_k / math.sqrt(ar)]
                mean += [cx, cy, s_k / math.sqrt(ar), s_k * math.sqrt(ar)]
    return np.clip(np.asarray(mean).reshape(-1, 4), 0, 1)


@pytest.mark.parametrize("spec", [A.SSD300_VOC, A.SSD512_COCO])
def test_matches_ssd_pytorch_priorbox_loop(spec):
    np.testing.assert_allclose(A.generate(spec), _ssd_pytorch_style_priors(spec), atol=1e-6)


def test_ssd300_coco_matches_torchvision_default_boxes():
    """Fixture made by tests/fixtures/make_torchvision_priors.py with torchvision 0.29."""
    ref = np.load(os.path.join(FIXTURES, "torchvision_ssd300_priors.npz"))
    priors = A.generate(A.SSD300_COCO)
    assert int(ref["total"]) == priors.shape[0]
    np.testing.assert_allclose(priors[ref["index"]], ref["priors"], atol=1e-6)


def test_ssd300_coco_sizes_equal_ssd_pytorch_coco_config():
    # torchvision's scales times 300 are ssd.pytorch's COCO min/max sizes.
    np.testing.assert_allclose(A.SSD300_COCO.min_sizes, [21, 45, 99, 153, 207, 261])
    np.testing.assert_allclose(A.SSD300_COCO.max_sizes, [45, 99, 153, 207, 261, 315])


def test_clip_modes():
    def make(clip):  # 3x3 map with step 40 at 100 px: last centre 1.0, big boxes
        return A.generate(A.PriorSpec(100, (3,), (40,), (90,), (150,), ((3,),), clip=clip))

    none, size, all_ = make("none"), make("size"), make("all")
    assert none.max() > 1
    assert size[:, 2:].max() == 1.0 and size[:, :2].max() == pytest.approx(1.0)
    np.testing.assert_array_equal(make(True), all_)
    np.testing.assert_array_equal(make(False), none)
    # A centre past the border stays with "size" and is clamped with "all".
    far = A.PriorSpec(100, (2,), (60,), (10,), (), ((),), clip="size")
    assert A.generate(far)[:, 0].max() == pytest.approx(0.9)
    beyond = A.PriorSpec(100, (2,), (80,), (10,), (), ((),))  # centres 0.4 and 1.2
    assert A.generate(dataclasses.replace(beyond, clip="size"))[:, 0].max() == pytest.approx(1.2)
    assert A.generate(beyond)[:, 0].max() == 1.0
    with pytest.raises(ValueError, match="clip must be one of"):
        make("sizes")


def test_no_max_sizes_gives_one_square():
    spec = A.PriorSpec(64, (4, 2), (16, 32), (10, 30), (), ((2,), ()))
    assert spec.boxes_per_cell == (3, 1)
    assert A.generate(spec).shape == (16 * 3 + 4 * 1, 4)


def test_from_scales_default_steps_and_slices():
    spec = A.PriorSpec.from_scales(320, (20, 10, 5), (0.1, 0.3, 0.6, 0.9), ((2,), (2, 3), (2,)))
    assert spec.steps == (16.0, 32.0, 64.0)
    assert spec.min_sizes == pytest.approx((32, 96, 192))
    slices = A.map_slices(spec)
    assert [s.stop - s.start for s in slices] == list(spec.priors_per_map)
    assert slices[-1].stop == spec.num_priors


def test_describe_rows_and_presets_lookup():
    rows = A.describe(A.SSD300_VOC)
    assert [r["feature_size"] for r in rows] == [38, 19, 10, 5, 3, 1]
    assert rows[-1]["cumulative"] == 8732
    assert A.get_preset("ssd512_voc") is A.SSD512_VOC
    with pytest.raises(ValueError, match="unknown prior preset"):
        A.get_preset("ssd1000")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=(8,)), "steps has 1 entries"),
        (dict(min_sizes=(30, -1)), "min_sizes must be positive"),
        (dict(aspect_ratios=((2,), (1,))), "aspect ratios of map 1"),
        (dict(max_sizes=(60,)), "max_sizes has 1 entries"),
        (dict(feature_sizes=()), "feature_sizes is empty"),
    ],
)
def test_invalid_specs_are_clear_errors(kwargs, message):
    base = dict(image_size=300, feature_sizes=(38, 19), steps=(8, 16), min_sizes=(30, 60),
                max_sizes=(60, 111), aspect_ratios=((2,), (2, 3)), name="bad")
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        A.PriorSpec(**base)
