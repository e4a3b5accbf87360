"""SSD training augmentation as a pure JAX function, for the accelerator.

The host hands over each image in a fixed uint8 canvas ``[Hc, Wc, 3]`` (the image at the
top left, its true size ``(h, w)`` carried beside it, the rest of the canvas holding copies
of the image's last row and column) with its boxes normalised to the true size. Everything
else happens here, per image and vmapped over the batch:

1. parameters are drawn from a key (:func:`sample_params`): the photometric distortion,
   the zoom-out (ratio and offset), the crop (every sampler's trials drawn at once, fixed
   shapes) and the flip;
2. zoom-out, crop, flip and resize are one affine map from output pixels to canvas pixels,
   applied by one bilinear sampling (:func:`warp`). Where the map shrinks the image by more
   than 2x (a 4x zoom-out, a large photo) the sampling reads from an average-pooled level
   of the canvas (a mip level, blended between the two nearest), so the result is not
   aliased the way one bilinear tap per output pixel would be;
3. the photometric distortion acts on the image's sampled pixels before they are blended
   with the zoom-out fill, so the fill stays the mean, as in Caffe's order (distort, then
   expand).

The semantics are those of the host version (:mod:`ssd_jax.data.transforms`): the same
ranges, the same samplers (whole image, unconstrained, min IoU 0.1 ... 0.9, a patch chosen
uniformly among the samplers that found one), objects kept when their centre is strictly
inside the patch, boxes clipped. Differences, on purpose: patches are continuous (not
whole pixels), and no rounding to uint8 happens between the steps.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from ssd_jax import boxes as box_ops
from ssd_jax.data import transforms
from ssd_jax.data.transforms import AugmentConfig

#: Mip levels of the canvas (1, 1/2, 1/4, 1/8): enough for a 4x zoom-out of an image twice
#: the output size.
MIP_LEVELS = 4


class Params(NamedTuple):
    """One image's augmentation (a pytree; a batch of them carries a leading axis).

    Attributes:
      brightness: added to every channel (0: off), 0..255 units.
      contrast: multiplies every channel (1: off).
      saturation: multiplies HSV saturation (1: off).
      hue: added to HSV hue, degrees (0: off).
      contrast_first: contrast before saturation/hue (else after).
      ratio: zoom-out ratio ``r >= 1`` (1: off).
      offset: ``[2]`` ``(left, top)`` of the image on the zoomed-out canvas, in units of the
        image's width and height (each in ``[0, r - 1]``).
      patch: ``[4]`` the crop, xyxy in the zoomed-out canvas's normalised coordinates
        (``[0, 0, 1, 1]``: no crop).
      flip: mirror left-right.
      sampler: index of the crop's sampler in ``config.min_ious`` (for statistics).
    """

    brightness: jax.Array
    contrast: jax.Array
    saturation: jax.Array
    hue: jax.Array
    contrast_first: jax.Array
    ratio: jax.Array
    offset: jax.Array
    patch: jax.Array
    flip: jax.Array
    sampler: jax.Array


def identity_params() -> Params:
    """Parameters that change nothing (the eval transform: resize only)."""
    f = jnp.float32
    return Params(f(0), f(1), f(1), f(0), jnp.bool_(True), f(1), jnp.zeros(2, f), jnp.array([0, 0, 1, 1], f),
                  jnp.bool_(False), jnp.int32(0))


# ----------------------------------------------------------------------------- boxes


def _centres_inside(boxes: jax.Array, patches: jax.Array) -> jax.Array:
    """``[G, 4]`` boxes, ``[..., 4]`` patches -> ``[..., G]``: centre strictly inside."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    p = patches[..., None, :]
    return (c[:, 0] > p[..., 0]) & (c[:, 0] < p[..., 2]) & (c[:, 1] > p[..., 1]) & (c[:, 1] < p[..., 3])


def zoomed_out_boxes(boxes: jax.Array, ratio: jax.Array, offset: jax.Array) -> jax.Array:
    """Boxes normalised to the image -> normalised to the zoomed-out canvas."""
    return (boxes + jnp.tile(offset, 2)) / ratio


def transform_boxes(boxes: jax.Array, labels: jax.Array, params: Params) -> tuple[jax.Array, jax.Array]:
    """``[G, 4]`` boxes normalised to the image and ``[G]`` labels (0 = empty slot) -> the
    augmented image's: zoomed out, cropped (kept when the centre is strictly inside the
    patch, clipped, others emptied: zero box, label 0), flipped."""
    b = zoomed_out_boxes(boxes, params.ratio, params.offset)
    p = params.patch
    keep = (labels > 0) & _centres_inside(b, p)
    lo, hi = jnp.tile(p[:2], 2), jnp.tile(p[2:], 2)
    b = (jnp.clip(b, lo, hi) - lo) / (hi - lo)
    flipped = jnp.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], -1)
    b = jnp.where(params.flip, flipped, b)
    return jnp.where(keep[:, None], b, 0.0), jnp.where(keep, labels, 0)


# ----------------------------------------------------------------------------- sampling


def draw_patches(key: jax.Array, shape: tuple[int, ...], config: AugmentConfig) -> jax.Array:
    """``shape + [4]`` random patches, normalised xyxy in ``[0, 1]``: side scale ``s ~
    U(min_scale, max_scale)``, aspect ``a ~ U(max(min_aspect, s^2), min(max_aspect,
    1/s^2))``, size ``(s sqrt(a), s / sqrt(a))``, uniform position (as the host's
    :func:`~ssd_jax.data.transforms.draw_patches`, without rounding to pixels)."""
    u = jax.random.uniform(key, (4, *shape))
    s = config.min_scale + u[0] * (config.max_scale - config.min_scale)
    lo = jnp.maximum(config.min_aspect, s**2)
    hi = jnp.minimum(config.max_aspect, 1 / s**2)
    a = lo + u[1] * (hi - lo)
    w, h = jnp.minimum(s * jnp.sqrt(a), 1.0), jnp.minimum(s / jnp.sqrt(a), 1.0)
    x0, y0 = u[2] * (1 - w), u[3] * (1 - h)
    return jnp.stack([x0, y0, x0 + w, y0 + h], -1)


def choose_patch(key: jax.Array, boxes: jax.Array, valid: jax.Array, config: AugmentConfig) -> tuple[jax.Array, jax.Array]:
    """Every sampler of ``config.min_ious`` tries ``max_trials`` patches (all drawn at once);
    one sampler that found a patch is chosen uniformly, with its first good patch.

    Args:
      boxes: ``[G, 4]`` boxes normalised to the (zoomed-out) image; valid: ``[G]`` bool.

    Returns:
      ``([4] patch, sampler index)``; the whole-image sampler (``None``) gives
      ``[0, 0, 1, 1]`` and always counts as found.
    """
    min_ious = config.min_ious
    whole = jnp.array([m is None for m in min_ious])
    thresholds = jnp.array([0.0 if m is None else m for m in min_ious], jnp.float32)
    k_patch, k_choose = jax.random.split(key)
    patches = draw_patches(k_patch, (len(min_ious), config.max_trials), config)  # [K, T, 4]
    inside = _centres_inside(boxes, patches) & valid  # [K, T, G]
    iou = box_ops.iou(patches, boxes)  # [K, T, G]
    ok = (inside & (iou >= thresholds[:, None, None])).any(-1)  # [K, T]
    first = jnp.argmax(ok, axis=1)
    found = ok.any(1) | whole
    chosen = jnp.take_along_axis(patches, first[:, None, None], axis=1)[:, 0]
    chosen = jnp.where(whole[:, None], jnp.array([0.0, 0.0, 1.0, 1.0]), chosen)
    n = found.sum()
    pick = jnp.floor(jax.random.uniform(k_choose) * n).astype(jnp.int32)
    index = jnp.argmax(jnp.cumsum(found) > pick)
    any_found = n > 0  # False only without a whole-image sampler
    patch = jnp.where(any_found, chosen[index], jnp.array([0.0, 0.0, 1.0, 1.0]))
    return patch, jnp.where(any_found, index, -1).astype(jnp.int32)


def sample_params(key: jax.Array, boxes: jax.Array, labels: jax.Array, config: AugmentConfig) -> Params:
    """Draw one image's augmentation (fixed shapes, any boxes, including none).

    Args:
      key: this image's key (:func:`image_keys`).
      boxes: ``[G, 4]`` normalised to the image; labels: ``[G]`` (0 = empty slot).
    """
    c = config
    ks = jax.random.split(key, 12)
    u = lambda k, lo, hi: jax.random.uniform(k, (), jnp.float32, lo, hi)
    on = lambda k, p: jax.random.uniform(k) < p
    photo = c.photometric
    brightness = jnp.where(photo & on(ks[0], c.photometric_p), u(ks[1], -c.brightness, c.brightness), 0.0)
    contrast = jnp.where(photo & on(ks[2], c.photometric_p), u(ks[3], *c.contrast), 1.0)
    saturation = jnp.where(photo & on(ks[4], c.photometric_p), u(ks[5], *c.saturation), 1.0)
    hue = jnp.where(photo & on(ks[6], c.photometric_p), u(ks[7], -c.hue, c.hue), 0.0)
    contrast_first = on(ks[8], 0.5)
    do_expand = on(ks[9], c.expand_p)
    r_off = jax.random.uniform(ks[10], (3,))
    ratio = jnp.where(do_expand, 1.0 + r_off[0] * (c.max_expand - 1.0), 1.0)
    offset = r_off[1:] * (ratio - 1.0)
    k_crop, k_flip = jax.random.split(ks[11])
    valid = labels > 0
    if c.crop:
        patch, sampler = choose_patch(k_crop, zoomed_out_boxes(boxes, ratio, offset), valid, c)
    else:
        patch, sampler = jnp.array([0.0, 0.0, 1.0, 1.0]), jnp.int32(0)
    flip = on(k_flip, c.flip_p)
    return Params(brightness, contrast, saturation, hue, contrast_first, ratio, offset, patch, flip, sampler)


# ----------------------------------------------------------------------------- pixels


def photometric(x: jax.Array, params: Params) -> jax.Array:
    """SSD's photometric distortion of ``[..., 3]`` RGB 0..255 (float), clipped after each
    step as the host's: brightness, then contrast before or after saturation and hue."""
    x = jnp.clip(x + params.brightness, 0, 255)
    x = jnp.where(params.contrast_first, jnp.clip(x * params.contrast, 0, 255), x)
    hsv = transforms.rgb_to_hsv(x, xp=jnp)
    hsv = jnp.stack([jnp.mod(hsv[..., 0] + params.hue, 360.0), jnp.clip(hsv[..., 1] * params.saturation, 0, 1),
                     hsv[..., 2]], -1)
    changed = (params.saturation != 1) | (params.hue != 0)
    x = jnp.where(changed, jnp.clip(transforms.hsv_to_rgb(hsv, xp=jnp), 0, 255), x)
    return jnp.where(params.contrast_first, x, jnp.clip(x * params.contrast, 0, 255))


def mip_levels(canvas: jax.Array, levels: int = MIP_LEVELS) -> list[jax.Array]:
    """``[Hc, Wc, 3]`` -> float32 levels 0..``levels-1``, each a 2x2 average of the one
    before (``Hc`` and ``Wc`` multiples of ``2**(levels - 1)``)."""
    out = [canvas.astype(jnp.float32)]
    for _ in range(levels - 1):
        x = out[-1]
        h, w = x.shape[0] // 2, x.shape[1] // 2
        out.append(x.reshape(h, 2, w, 2, 3).mean((1, 3)))
    return out


def _bilinear(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
    """Sample ``[H, W, C]`` at pixel-centre coordinates ``y, x`` (``[...]``), edges clamped."""
    h, w = image.shape[:2]
    y = jnp.clip(y, 0, h - 1)
    x = jnp.clip(x, 0, w - 1)
    y0, x0 = jnp.floor(y), jnp.floor(x)
    fy, fx = (y - y0)[..., None], (x - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def source_coordinates(params: Params, size: jax.Array, out_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The composed affine map: output pixel centres -> image pixel coordinates.

    The map runs output -> flip -> crop patch -> zoomed-out canvas -> image. As in resizing
    the cropped patch, positions past the patch's outermost pixel centres are clamped to
    them; positions outside the image but inside the patch read the zoom-out fill.

    Returns:
      ``(y [S, S], x [S, S], shrink)``: image coordinates (pixel centres at integers) of each
      output pixel, and how many canvas pixels one output pixel spans (the larger axis).
    """
    h, w = size[0].astype(jnp.float32), size[1].astype(jnp.float32)
    t = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) / out_size  # output, normalised
    p = params.patch
    tx = jnp.where(params.flip, 1 - t, t)

    def axis(t, lo, hi, extent, offset):  # normalised output -> image pixels along one axis
        big = params.ratio * extent  # the zoomed-out canvas, in pixels
        e = (lo + t * (hi - lo)) * big - 0.5
        e = jnp.clip(e, lo * big, jnp.maximum(hi * big - 1, lo * big))
        return e - offset * extent

    x = axis(tx, p[0], p[2], w, params.offset[0])
    y = axis(t, p[1], p[3], h, params.offset[1])
    shrink = jnp.maximum((p[2] - p[0]) * params.ratio * w, (p[3] - p[1]) * params.ratio * h) / out_size
    return jnp.broadcast_to(y[:, None], (out_size, out_size)), jnp.broadcast_to(x[None, :], (out_size, out_size)), shrink


def warp(canvas: jax.Array, size: jax.Array, params: Params, out_size: int, fill: Sequence[float]) -> jax.Array:
    """One image: ``[Hc, Wc, 3]`` uint8 canvas, ``size`` ``[2]`` (h, w) -> ``[S, S, 3]``
    float32 RGB 0..255: zoomed out (fill outside the image), cropped, flipped, resized in
    one bilinear sampling (from a mip level where the map shrinks), then distorted."""
    y, x, shrink = source_coordinates(params, size, out_size)
    h, w = size[0].astype(jnp.float32), size[1].astype(jnp.float32)
    level = jnp.clip(jnp.log2(jnp.maximum(shrink, 1.0)), 0, MIP_LEVELS - 1)
    lo = jnp.floor(level)
    frac = level - lo
    pixels = 0.0
    for i, mip in enumerate(mip_levels(canvas)):
        s = 2.0**i
        # the image's part of this level, its edges clamped: the zoom-out fill is blended below
        hi_y, hi_x = h / s - 1, w / s - 1
        yi = jnp.clip((y + 0.5) / s - 0.5, 0, jnp.maximum(hi_y, 0))
        xi = jnp.clip((x + 0.5) / s - 0.5, 0, jnp.maximum(hi_x, 0))
        weight = jnp.where(lo == i, 1 - frac, 0.0) + jnp.where(lo + 1 == i, frac, 0.0)
        pixels = pixels + weight * _bilinear(mip, yi, xi)
    pixels = photometric(pixels, params)
    # coverage of the image at each output pixel (bilinear between the image's edge and the fill)
    ax = jnp.clip(jnp.minimum(x + 1, w - x), 0, 1)
    ay = jnp.clip(jnp.minimum(y + 1, h - y), 0, 1)
    alpha = (ax * ay)[..., None]
    return alpha * pixels + (1 - alpha) * jnp.asarray(fill, jnp.float32)


# ----------------------------------------------------------------------------- batch


def image_keys(seed: int | jax.Array, step: jax.Array, batch: int, first_index: int = 0) -> jax.Array:
    """``[B]`` keys from (seed, step, image index): a batch's augmentation depends on where
    it is in the run, nothing else, so a resumed run draws the same."""
    base = jax.random.fold_in(jax.random.key(seed), step)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(first_index + jnp.arange(batch))


def augment_one(key, canvas, size, boxes, labels, config: AugmentConfig, out_size: int, fill):
    """One image: ``(image [S, S, 3] float32 0..255, boxes [G, 4], labels [G], params)``."""
    params = sample_params(key, boxes, labels, config)
    image = warp(canvas, size, params, out_size, fill)
    b, l = transform_boxes(boxes, labels, params)
    return image, b, l, params


def augment(keys: jax.Array, batch: dict, config: AugmentConfig, out_size: int, normalization, dtype=jnp.float32) -> dict:
    """The batch's augmentation: pure, jit- and vmap-able.

    Args:
      keys: ``[B]`` keys (:func:`image_keys`).
      batch: ``'image'`` ``[B, Hc, Wc, 3]`` uint8 canvases, ``'size'`` ``[B, 2]`` int32
        (h, w), ``'boxes'`` ``[B, G, 4]`` normalised to the true size, ``'labels'`` ``[B, G]``.
      config: the augmentation (:class:`~ssd_jax.data.transforms.AugmentConfig`).
      out_size: ``S``; normalization: the network's input convention (its mean is the fill).
      dtype: of the returned images.

    Returns:
      ``{'image': [B, S, S, 3] normalised in dtype, 'boxes': [B, G, 4], 'labels': [B, G]}``.
    """
    fill = normalization.mean_pixel
    fn = lambda k, c, s, b, l: augment_one(k, c, s, b, l, config, out_size, fill)[:3]
    images, boxes, labels = jax.vmap(fn)(keys, batch["image"], batch["size"], batch["boxes"], batch["labels"])
    return {"image": normalization(images, xp=jnp).astype(dtype), "boxes": boxes, "labels": labels}
