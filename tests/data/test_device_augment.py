"""The device augmentation (ssd_jax.data.device_augment) against the host ops it replaces."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import normalization
from ssd_jax.data import device_augment as D, transforms as T

FILL = normalization.TORCHVISION.mean_pixel


def pattern(h, w):
    """A smooth RGB test pattern, uint8 (low frequencies: bilinear and PIL agree on it)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 127 + 100 * np.sin(x / 9.0) * np.cos(y / 13.0)
    g = 60 + 1.5 * x
    b = 40 + 2.0 * y
    return np.clip(np.rint(np.stack([r, g, b], -1)), 0, 255).astype(np.uint8)


def in_canvas(image, hc, wc):
    """The host part's placement: image at the top left, its last row and column copied on."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, hc - h), (0, wc - w), (0, 0)), mode="edge")


def params(**kw):
    return D.identity_params()._replace(**{k: jnp.asarray(v) for k, v in kw.items()})


def test_geometry_equals_the_host_ops_for_fixed_parameters():
    """Zoom-out 1.5x at (20, 16) px, crop (30, 10)-(130, 110) px, flip, resize to 64: the
    device's one sampling against the host's expand -> crop -> flip -> PIL resize. Boxes to
    1e-5; pixels within the two filters' difference (PIL's bilinear widens its support
    when it shrinks, the device blends two mip levels)."""
    h, w, S = 80, 100, 64
    image = pattern(h, w)
    boxes_px = np.array([[10, 8, 60, 50], [55, 30, 98, 79], [0, 0, 12, 10]], np.float32)
    labels = np.array([1, 2, 3], np.int32)
    # host
    canvas = np.empty((120, 150, 3), np.uint8)
    canvas[...] = np.rint(np.asarray(FILL)).astype(np.uint8)
    canvas[16:16 + h, 20:20 + w] = image
    hb = boxes_px + np.array([20, 16, 20, 16], np.float32)
    hi, hb, hl = T.crop(canvas, hb, labels, np.array([30, 10, 130, 110]))
    hi, hb, hl = np.ascontiguousarray(hi[:, ::-1]), T.flip_boxes(hb, hi.shape[1]), hl
    hi, hb, hl = T.resize(hi, hb, hl, size=S)
    # device
    p = params(ratio=1.5, offset=[0.2, 0.2], patch=[30 / 150, 10 / 120, 130 / 150, 110 / 120], flip=True)
    g = 8
    db = np.zeros((g, 4), np.float32)
    db[:3] = boxes_px / np.array([w, h, w, h], np.float32)
    dl = np.zeros((g,), np.int32)
    dl[:3] = labels
    ob, ol = D.transform_boxes(jnp.asarray(db), jnp.asarray(dl), p)
    ob, ol = np.asarray(ob), np.asarray(ol)
    kept = ol > 0
    np.testing.assert_array_equal(ol[kept], hl)  # box 2's centre (6, 5) + (20, 16) is outside the crop
    np.testing.assert_allclose(ob[kept], hb / S, atol=1e-5)
    assert (ob[~kept] == 0).all()
    out = np.asarray(D.warp(jnp.asarray(in_canvas(image, 96, 104)), jnp.array([h, w]), p, S, FILL))
    diff = np.abs(out - hi.astype(np.float32)).max(-1)
    # the image's edges against the fill, in output pixels: top 3.84, bottom 55.04, right
    # (flipped to the left) 6.4; there the two filters blend over different widths
    edges = np.zeros_like(diff, bool)
    edges[[3, 4, 54, 55]] = edges[:, [6, 7]] = True
    assert diff[~edges].max() < 2.5 and diff[~edges].mean() < 0.7, (diff[~edges].max(), diff[~edges].mean())
    assert diff[edges].max() < 25


def test_plain_resize_and_the_zoom_out_fill():
    """No augmentation: the warp is a resize (equal to PIL's bilinear when enlarging); a 4x
    zoom-out keeps the fill exactly the mean outside the image, whatever the photometric
    parameters, and the image's own pixels are distorted."""
    h, w = 40, 48
    image = pattern(h, w)
    canvas = jnp.asarray(in_canvas(image, 48, 56))
    out = np.asarray(D.warp(canvas, jnp.array([h, w]), D.identity_params(), 96, FILL))
    ref = T.resize_image(image, 96).astype(np.float32)
    assert np.abs(out - ref).max() <= 1.01  # PIL rounds to uint8 in fixed point
    p = params(ratio=4.0, offset=[3.0, 0.0], brightness=40.0, hue=10.0)
    out = np.asarray(D.warp(canvas, jnp.array([h, w]), p, 64, FILL))
    np.testing.assert_allclose(out[:, :40], np.broadcast_to(FILL, (64, 40, 3)), atol=1e-4)  # left of the image
    np.testing.assert_allclose(out[20:, :], np.broadcast_to(FILL, (44, 64, 3)), atol=1e-4)  # below it
    inside = out[2:14, 50:62]
    plain = np.asarray(D.warp(canvas, jnp.array([h, w]), params(ratio=4.0, offset=[3.0, 0.0]), 64, FILL))[2:14, 50:62]
    assert np.abs(inside - plain).mean() > 10


def test_zoom_out_is_not_aliased():
    """A 4x zoom-out of a 1-px checkerboard: the mip level averages it to grey, where one
    bilinear tap per output pixel would read the raw checkerboard's extremes."""
    y, x = np.mgrid[0:128, 0:128]
    board = np.where((x + y) % 2 == 0, 255, 0).astype(np.uint8)[..., None].repeat(3, -1)
    p = params(ratio=4.0, offset=[0.0, 0.0])
    out = np.asarray(D.warp(jnp.asarray(board), jnp.array([128, 128]), p, 64, FILL))[2:14, 2:14]
    assert np.abs(out - 127.5).max() < 10


def test_colour_conversions_and_photometric_equal_the_host():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (500, 3)).astype(np.float32)
    x[:20] = x[:20, :1]  # greys: zero saturation
    hsv = T.rgb_to_hsv(x)
    np.testing.assert_allclose(T.rgb_to_hsv(jnp.asarray(x), xp=jnp), hsv, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(T.hsv_to_rgb(jnp.asarray(hsv), xp=jnp), T.hsv_to_rgb(hsv), rtol=1e-5, atol=1e-3)
    for contrast_first in (True, False):
        p = params(brightness=20.0, contrast=1.3, saturation=0.7, hue=-12.0, contrast_first=contrast_first)
        ref = np.clip(x + 20.0, 0, 255)
        if contrast_first:
            ref = np.clip(ref * 1.3, 0, 255)
        h = T.rgb_to_hsv(ref)
        h[..., 1] = np.clip(h[..., 1] * 0.7, 0, 1)
        h[..., 0] = (h[..., 0] - 12.0) % 360
        ref = np.clip(T.hsv_to_rgb(h), 0, 255)
        if not contrast_first:
            ref = np.clip(ref * 1.3, 0, 255)
        np.testing.assert_allclose(D.photometric(jnp.asarray(x), p), ref, atol=2e-3)


def _random_objects(rng, g=6):
    boxes = np.zeros((g, 4), np.float32)
    labels = np.zeros((g,), np.int32)
    for j in range(rng.integers(1, g + 1)):
        x0, y0 = rng.uniform(0, 0.8, 2)
        bw, bh = rng.uniform(0.05, 1 - x0), rng.uniform(0.05, 1 - y0)
        boxes[j] = [x0, y0, x0 + bw, y0 + bh]
        labels[j] = 1 + j
    return boxes, labels


def test_every_crop_satisfies_its_sampler_over_1000_keys():
    """Zoom-out on: each chosen patch has some kept object (centre inside) with IoU at
    least its sampler's minimum, in the zoomed-out image; the kept boxes are the
    augmented output's."""
    config = T.AugmentConfig(photometric=False, flip_p=0.5)
    rng = np.random.default_rng(1)
    objs = [_random_objects(rng) for _ in range(1000)]
    boxes = jnp.asarray(np.stack([o[0] for o in objs]))
    labels = jnp.asarray(np.stack([o[1] for o in objs]))
    keys = D.image_keys(0, 7, 1000)
    p = jax.jit(jax.vmap(functools.partial(D.sample_params, config=config)))(keys, boxes, labels)
    ob, ol = jax.vmap(D.transform_boxes)(boxes, labels, p)
    p, ob, ol = jax.tree.map(np.asarray, (p, ob, ol))
    mins = config.min_ious
    counts = np.bincount(p.sampler, minlength=len(mins))
    for i in range(1000):
        m = mins[p.sampler[i]]
        if m is None:
            np.testing.assert_array_equal(p.patch[i], [0, 0, 1, 1])
            assert (ol[i] == np.asarray(labels[i])).all()
            continue
        zb = np.asarray(D.zoomed_out_boxes(boxes[i], p.ratio[i], p.offset[i]))
        valid = np.asarray(labels[i]) > 0
        ok = T.patches_satisfy(zb[valid], p.patch[i][None].astype(np.float64), m)[0]
        assert ok, (i, m, p.patch[i])
        assert (ol[i] > 0).any()
    assert counts.sum() == 1000 and (counts[:6] > 0).all(), counts  # min IoU 0.9: rare on these objects
    assert counts[0] >= 1000 / len(mins) * 0.75  # the whole image: always found, so at least its share


def test_sampler_frequencies_are_uniform_when_every_sampler_finds_a_patch():
    """One object covering the whole image: a patch's IoU is its area, so every sampler
    finds one (min IoU 0.9 in 98% of draws): each is chosen about 1/7 of the time."""
    config = T.AugmentConfig(photometric=False, expand_p=0.0)
    boxes = jnp.zeros((1000, 2, 4)).at[:, 0].set(jnp.array([0.0, 0.0, 1.0, 1.0]))
    labels = jnp.zeros((1000, 2), jnp.int32).at[:, 0].set(1)
    p = jax.jit(jax.vmap(functools.partial(D.sample_params, config=config)))(D.image_keys(3, 0, 1000), boxes, labels)
    counts = np.bincount(np.asarray(p.sampler), minlength=7)
    assert all(100 <= c <= 190 for c in counts), counts


def test_zero_object_images_pass_the_crop_and_keys_decide_everything():
    config = T.AugmentConfig()
    b, g, S = 4, 5, 48
    canvas = jnp.asarray(np.stack([in_canvas(pattern(40, 40 + 4 * i), 40, 56) for i in range(b)]))
    batch = {"image": canvas, "size": jnp.array([[40, 40 + 4 * i] for i in range(b)], jnp.int32),
             "boxes": jnp.zeros((b, g, 4)), "labels": jnp.zeros((b, g), jnp.int32)}
    keys = D.image_keys(5, 11, b)
    p = jax.vmap(functools.partial(D.sample_params, config=config))(keys, batch["boxes"], batch["labels"])
    np.testing.assert_array_equal(np.asarray(p.patch), np.tile([0.0, 0.0, 1.0, 1.0], (b, 1)))
    np.testing.assert_array_equal(np.asarray(p.sampler), 0)
    fn = jax.jit(functools.partial(D.augment, config=config, out_size=S, normalization=normalization.TORCHVISION))
    out = fn(keys, batch)
    assert out["image"].shape == (b, S, S, 3) and out["image"].dtype == jnp.float32
    assert (np.asarray(out["labels"]) == 0).all() and (np.asarray(out["boxes"]) == 0).all()
    again = fn(D.image_keys(5, 11, b), batch)
    np.testing.assert_array_equal(np.asarray(out["image"]), np.asarray(again["image"]))
    other = fn(D.image_keys(5, 12, b), batch)
    assert not np.array_equal(np.asarray(out["image"]), np.asarray(other["image"]))
    half = jax.eval_shape(functools.partial(D.augment, config=config, out_size=S, normalization=normalization.TORCHVISION,
                                            dtype=jnp.bfloat16), keys, batch)
    assert half["image"].dtype == jnp.bfloat16 and half["image"].shape == (b, S, S, 3)


def test_image_keys_depend_on_seed_step_and_index():
    k = lambda *a: np.asarray(jax.random.key_data(D.image_keys(*a)))
    np.testing.assert_array_equal(k(0, 3, 4), k(0, 3, 4))
    np.testing.assert_array_equal(k(0, 3, 4)[2:], k(0, 3, 2, 2))  # image 2 of the batch is image 2 of any split
    assert not np.array_equal(k(0, 3, 4), k(0, 4, 4)) and not np.array_equal(k(0, 3, 4), k(1, 3, 4))
    assert len({tuple(r) for r in k(0, 3, 4)}) == 4


SHARDED = """
import functools
import jax, numpy as np
from ssd_jax import normalization, parallel
from ssd_jax.data import device_augment as D, transforms as T
assert jax.device_count() == 8
rng = np.random.default_rng(0)
b, g = 16, 4
boxes = np.zeros((b, g, 4), np.float32)
boxes[:, :2] = [[0.1, 0.2, 0.6, 0.7], [0.4, 0.1, 0.9, 0.5]]
labels = np.zeros((b, g), np.int32)
labels[:, :2] = [1, 2]
labels[3] = 0  # an image without objects
batch = {"image": rng.integers(0, 256, (b, 64, 64, 3), dtype=np.uint8),
         "size": np.tile(np.asarray([[48, 64]], np.int32), (b, 1)), "boxes": boxes, "labels": labels}

@jax.jit
def step(step, batch):  # as the train step: the keys from (seed, step, index) inside the program
    keys = D.image_keys(0, step, batch["image"].shape[0])
    return D.augment(keys, batch, T.AugmentConfig(), 40, normalization.TORCHVISION)

one = jax.device_get(step(3, parallel.global_batch(batch, parallel.make_mesh(jax.devices()[:1]), b)))
out = step(3, parallel.global_batch(batch, parallel.make_mesh(jax.devices()), b))
assert len(out["image"].sharding.device_set) == 8
out = jax.device_get(out)
# the two programs round the colour arithmetic differently: 2e-4 is 1% of one grey level here
np.testing.assert_allclose(out["image"], one["image"], rtol=1e-5, atol=2e-4)
np.testing.assert_allclose(out["boxes"], one["boxes"], atol=1e-6)
np.testing.assert_array_equal(out["labels"], one["labels"])
print("OK")
"""


def test_eight_simulated_devices_give_one_device_s_augmentation(run_python):
    """The batch sharded over 8 (simulated) devices, keys made inside the program as the
    train step makes them: the same images (to float rounding), boxes and labels as on one
    device."""
    proc = run_python(["-c", SHARDED], {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
