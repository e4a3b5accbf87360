"""SSD training augmentation, in numpy.

Every op is a pure function ``op(image, boxes, labels, rng, ...) -> (image, boxes, labels)``:

* ``image``: ``[H, W, 3]`` uint8 RGB;
* ``boxes``: ``[N, 4]`` float32 xyxy in **pixels** of that image (0-based continuous,
  valid: ``0 <= xmin < xmax <= W``, ``0 <= ymin < ymax <= H``);
* ``labels``: ``[N]`` int32 (any per-object array that must follow the boxes);
* ``rng``: a ``numpy.random.Generator`` (the pipeline derives it from
  (seed, record index, epoch)); deterministic ops accept and ignore it.

Each op returns valid boxes inside its output image, and an image without boxes
(``N = 0``) passes through every op. The order used for training (:func:`ssd_augment`)
is the SSD paper's: photometric distortion -> zoom out (expand) -> min-IoU random crop
-> horizontal flip; the pipeline then resizes and normalises. Evaluation only resizes
and normalises.

Departures from the PyTorch ports, on purpose:

* the random crop really enforces its minimum-IoU constraint and offers 0.5
  (ssd.pytorch's check ``overlap.min() < min_iou and max_iou < overlap.max()`` never
  fires, and its option list omits 0.5);
* the constraint is Caffe SSD's / torchvision's: at least one object whose centre lies
  inside the patch has IoU >= min_iou with the patch;
* a patch is sampled as in Caffe SSD: side scale ``s ~ U(0.3, 1)`` of the image and
  aspect ``a`` (of the patch relative to the image, ``(w/W)/(h/H)``) uniform in
  ``[max(0.5, s^2), min(2, 1/s^2)]`` so the patch always fits;
* the samplers are Caffe SSD's ``batch_sampler`` list: the whole image, min IoU 0.1,
  0.3, 0.5, 0.7, 0.9 and an unconstrained patch (min IoU 0: one object centre inside, so
  the crop keeps an object). Every sampler tries up to ``max_trials`` (50) patches, drawn
  at once, and the crop is one of the patches found, chosen uniformly (the whole image
  always counts as found). The ports instead pick one constraint and loop until it
  succeeds, which is unbounded; picking one and giving up after 50 trials leaves about a
  third of the crops undone;
* photometric results are clipped to [0, 255] and saturation to [0, 1] after each step
  (a uint8 image cannot hold anything else);
* the ports' random channel swap ("lighting noise") is not included.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ssd_jax import normalization
from ssd_jax.schema import Section

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]

#: The crop samplers of the SSD paper (Caffe's ``batch_sampler``): ``None`` = the whole
#: image, 0.0 = an unconstrained patch, then the minimum IoUs.
SSD_MIN_IOUS: tuple[float | None, ...] = (None, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9)


# ---------------------------------------------------------------------------- box helpers


def box_area(boxes: np.ndarray) -> np.ndarray:
    """``[..., 4]`` xyxy -> ``[...]`` area (0 for inverted boxes)."""
    wh = np.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N, 4]``, ``[M, 4]`` xyxy -> ``[N, M]`` IoU (0 where the union is empty)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def boxes_valid(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[N, 4]`` -> ``[N]`` bool: positive size and inside ``[0, W] x [0, H]``."""
    b = np.asarray(boxes)
    return (
        (b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= width) & (b[:, 3] <= height)
        & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    )  # fmt: skip


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Mirror ``[N, 4]`` pixel boxes left-right in an image of ``width`` pixels."""
    b = np.asarray(boxes, np.float32)
    return np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1).reshape(-1, 4)


# ---------------------------------------------------------------------------- colour


def rgb_to_hsv(rgb, xp=np):
    """``[..., 3]`` float RGB (0..255) -> HSV: H in degrees [0, 360), S in [0, 1], V 0..255.
    ``xp``: ``numpy`` or ``jax.numpy`` (the device augmentation uses the same function)."""
    rgb = xp.asarray(rgb, xp.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc = xp.maximum(xp.maximum(r, g), b)  # elementwise: much faster than max(axis=-1)
    delta = maxc - xp.minimum(xp.minimum(r, g), b)
    safe = xp.where(delta > 0, delta, xp.float32(1))
    h = xp.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)
    h = xp.where(maxc == r, ((g - b) / safe) % 6, h)
    h = xp.where(delta > 0, h * 60, 0)
    s = delta / xp.where(maxc > 0, maxc, xp.float32(1))
    return xp.stack([h, s, maxc], axis=-1).astype(xp.float32)


def hsv_to_rgb(hsv, xp=np):
    """Inverse of :func:`rgb_to_hsv`."""
    hsv = xp.asarray(hsv, xp.float32)
    h6 = hsv[..., 0] / xp.float32(60)  # in [0, 6)
    vs = hsv[..., 2] * hsv[..., 1]
    out = []
    for n in (5, 3, 1):  # R, G, B: v - v*s*clip(min(k, 4 - k), 0, 1)
        k = h6 + xp.float32(n)
        k = xp.where(k >= 6, k - 6, k)
        out.append(hsv[..., 2] - vs * xp.maximum(xp.minimum(xp.minimum(k, 4 - k), 1), 0))
    return xp.stack(out, axis=-1)


def photometric_distort(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness: float = 32.0,
    contrast: tuple[float, float] = (0.5, 1.5),
    saturation: tuple[float, float] = (0.5, 1.5),
    hue: float = 18.0,
    p: float = 0.5,
) -> Arrays:
    """SSD's photometric distortion; boxes and labels unchanged.

    Brightness ``+U(-32, 32)``; then, in random order (contrast first or last, p=0.5),
    contrast ``*U(0.5, 1.5)`` and in HSV saturation ``*U(0.5, 1.5)``, hue ``+U(-18, 18)``
    degrees; each of the four applied with probability ``p``.
    """
    x = image.astype(np.float32)
    if rng.random() < p:
        x = np.clip(x + rng.uniform(-brightness, brightness), 0.0, 255.0)
    contrast_first = rng.random() < 0.5

    def _contrast(x):
        if rng.random() < p:
            x = np.clip(x * rng.uniform(*contrast), 0.0, 255.0)
        return x

    if contrast_first:
        x = _contrast(x)
    do_sat, do_hue = rng.random() < p, rng.random() < p
    sat_factor, hue_delta = rng.uniform(*saturation), rng.uniform(-hue, hue)
    if do_sat or do_hue:
        hsv = rgb_to_hsv(x)
        if do_sat:
            hsv[..., 1] = np.clip(hsv[..., 1] * sat_factor, 0.0, 1.0)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + hue_delta) % 360.0
        x = np.clip(hsv_to_rgb(hsv), 0.0, 255.0)
    if not contrast_first:
        x = _contrast(x)
    return np.rint(x).astype(np.uint8), boxes, labels


# ---------------------------------------------------------------------------- geometry


def expand(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    fill: Sequence[float] = normalization.TORCHVISION.mean_pixel,
    max_ratio: float = 4.0,
    p: float = 0.5,
) -> Arrays:
    """Zoom out: with probability ``p`` place the image at a random integer offset on a
    canvas ``U(1, max_ratio)`` times its size, filled with ``fill`` (the mean, RGB)."""
    if rng.random() >= p:
        return image, boxes, labels
    h, w = image.shape[:2]
    ratio = rng.uniform(1.0, max_ratio)
    ch, cw = int(h * ratio), int(w * ratio)
    top = int(rng.uniform(0, ch - h))
    left = int(rng.uniform(0, cw - w))
    canvas = np.empty((ch, cw, 3), np.uint8)
    canvas[...] = np.clip(np.rint(np.asarray(fill, np.float32)), 0, 255).astype(np.uint8)
    canvas[top : top + h, left : left + w] = image
    shifted = np.asarray(boxes, np.float32) + np.asarray([left, top, left, top], np.float32)
    return canvas, shifted.reshape(-1, 4), labels


def draw_patches(
    height: int,
    width: int,
    rng: np.random.Generator,
    count: int,
    *,
    min_scale: float = 0.3,
    max_scale: float = 1.0,
    min_aspect: float = 0.5,
    max_aspect: float = 2.0,
) -> np.ndarray:
    """``count`` random patches of an image, all drawn at once (a fixed number of draws).

    Side scale ``s ~ U(min_scale, max_scale)``, aspect ``a ~ U(max(min_aspect, s^2),
    min(max_aspect, 1/s^2))`` (so the patch fits), patch ``round(s sqrt(a) W) x
    round(s / sqrt(a) H)`` pixels (at least 1) at a uniform integer position.

    Returns:
      ``[count, 4]`` int64 ``(x0, y0, x1, y1)`` pixel patches inside the image.
    """
    u = rng.random((4, count))
    scale = min_scale + u[0] * (max_scale - min_scale)
    lo, hi = np.maximum(min_aspect, scale**2), np.minimum(max_aspect, 1.0 / scale**2)
    aspect = lo + u[1] * (hi - lo)
    cw = np.clip(np.rint(scale * np.sqrt(aspect) * width), 1, width).astype(np.int64)
    ch = np.clip(np.rint(scale / np.sqrt(aspect) * height), 1, height).astype(np.int64)
    x0 = np.minimum((u[2] * (width - cw + 1)).astype(np.int64), width - cw)
    y0 = np.minimum((u[3] * (height - ch + 1)).astype(np.int64), height - ch)
    return np.stack([x0, y0, x0 + cw, y0 + ch], axis=1)


def patches_satisfy(boxes: np.ndarray, patches: np.ndarray, min_iou: float) -> np.ndarray:
    """``[N, 4]`` boxes, ``[T, 4]`` patches -> ``[T]`` bool: some box whose centre is
    strictly inside the patch has IoU >= ``min_iou`` with it (0: a centre inside)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    patches = np.asarray(patches, np.float64).reshape(-1, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = (
        (centres[None, :, 0] > patches[:, None, 0]) & (centres[None, :, 0] < patches[:, None, 2])
        & (centres[None, :, 1] > patches[:, None, 1]) & (centres[None, :, 1] < patches[:, None, 3])
    )  # fmt: skip
    iou = box_iou(patches, boxes)
    return (inside & (iou >= min_iou)).any(axis=1)


def sample_crop_window(
    boxes: np.ndarray,
    height: int,
    width: int,
    rng: np.random.Generator,
    min_iou: float,
    *,
    max_trials: int = 50,
    **patch_kw,
) -> np.ndarray | None:
    """One sampler: ``max_trials`` patches (:func:`draw_patches`), the first that
    satisfies the minimum-IoU constraint (:func:`patches_satisfy`).

    Args:
      boxes: ``[N, 4]`` pixel boxes (``N >= 1``).
      height, width: image size.
      min_iou: the constraint: some box whose centre is strictly inside the patch has
        IoU >= ``min_iou`` with it (0 only asks for one centre inside).
      max_trials: patches tried.
      patch_kw: :func:`draw_patches`'s ranges: ``min_scale``, ``max_scale`` (the patch side
        relative to the image side), ``min_aspect``, ``max_aspect`` (of ``(w / W) / (h / H)``).

    Returns:
      ``[4]`` int64 ``(x0, y0, x1, y1)`` pixel patch, or ``None`` if no trial succeeded.
    """
    patches = draw_patches(height, width, rng, max_trials, **patch_kw)
    ok = np.flatnonzero(patches_satisfy(boxes, patches, min_iou))
    return patches[ok[0]] if len(ok) else None


def crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, window: np.ndarray) -> Arrays:
    """Cut the ``(x0, y0, x1, y1)`` integer ``window``; keep the boxes whose centre is
    strictly inside it, clipped to it and shifted into its coordinates."""
    x0, y0, x1, y1 = (int(v) for v in window)
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    centres = (b[:, :2] + b[:, 2:]) / 2
    inside = (centres[:, 0] > x0) & (centres[:, 0] < x1) & (centres[:, 1] > y0) & (centres[:, 1] < y1)
    kept = b[inside]
    kept = np.clip(kept, [x0, y0, x0, y0], [x1, y1, x1, y1]) - np.asarray([x0, y0, x0, y0], np.float32)
    return np.ascontiguousarray(image[y0:y1, x0:x1]), kept.astype(np.float32), labels[inside]


def choose_crop(
    boxes: np.ndarray,
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    min_ious: Sequence[float | None] = SSD_MIN_IOUS,
    **patch_kw,
) -> tuple[int, np.ndarray | None]:
    """Run every sampler and choose one of the patches found, uniformly.

    Args:
      boxes: ``[N, 4]`` pixel boxes (with ``N = 0`` only the whole image is found).
      min_ious: the samplers: ``None`` is the whole image (always found), a number a
        minimum-IoU sampler (:func:`sample_crop_window`, ``max_trials`` patches each).
      patch_kw: ``min_scale``, ``max_scale``, ``min_aspect``, ``max_aspect``, ``max_trials``.

    Returns:
      ``(sampler index, window)``: the chosen sampler's index in ``min_ious`` and its
      ``[4]`` int64 patch, ``None`` for the whole image.
    """
    found: list[tuple[int, np.ndarray | None]] = []
    for i, min_iou in enumerate(min_ious):
        if min_iou is None:
            found.append((i, None))
            continue
        window = sample_crop_window(boxes, height, width, rng, min_iou, **patch_kw)
        if window is not None:
            found.append((i, window))
    if not found:  # no whole-image sampler and every other one failed
        return -1, None
    return found[int(rng.integers(len(found)))]


def random_crop(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    min_ious: Sequence[float | None] = SSD_MIN_IOUS,
    **patch_kw,
) -> Arrays:
    """SSD's min-IoU random crop (Caffe's samplers).

    Every sampler of ``min_ious`` tries its patches (``patch_kw``: as
    :func:`sample_crop_window`'s), one of the patches found is chosen uniformly
    (:func:`choose_crop`) and applied with :func:`crop`; the whole image
    (``None``) returns the input unchanged, as does a list of samplers that all failed.
    Images without boxes pass through (no patch can hold an object centre), after the same
    draws from ``rng`` as any other image.
    """
    h, w = image.shape[:2]
    _, window = choose_crop(boxes, h, w, rng, min_ious=min_ious, **patch_kw)
    if window is None:
        return image, boxes, labels
    return crop(image, boxes, labels, window)


def horizontal_flip(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    p: float = 0.5,
) -> Arrays:
    """Mirror left-right with probability ``p``."""
    if rng.random() >= p:
        return image, boxes, labels
    return np.ascontiguousarray(image[:, ::-1]), flip_boxes(boxes, image.shape[1]), labels


def resize(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    size: int | tuple[int, int] = 300,
) -> Arrays:
    """Resize (bilinear, aspect ratio not kept, as SSD does) to ``size`` (side or
    ``(height, width)``); boxes are scaled to the new pixels. ``rng`` is unused."""
    from PIL import Image

    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    if (h, w) != (out_h, out_w):
        image = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.BILINEAR))
    scale = np.asarray([out_w / w, out_h / h, out_w / w, out_h / h], np.float32)
    b = np.asarray(boxes, np.float32).reshape(-1, 4) * scale
    # Rounding cannot push a box past the border by more than an ulp; clip that away.
    b = np.clip(b, 0, np.asarray([out_w, out_h, out_w, out_h], np.float32))
    return image, b, labels


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """``[H, W, 3]`` uint8 -> ``[size, size, 3]`` uint8, as :func:`resize` (no boxes)."""
    return resize(image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), size=size)[0]


def network_input(image: np.ndarray, size: int, norm: normalization.Normalization) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB -> ``[size, size, 3]`` float32 network input: the eval
    transform (resize, normalise) for an image without annotations."""
    return norm(resize_image(image, size))


# ---------------------------------------------------------------------------- composition


@dataclasses.dataclass(frozen=True)
class AugmentConfig(Section):
    """Parameters of :func:`ssd_augment` (defaults: the SSD paper's). Built from the
    ``data`` section of an experiment, whose keys have these names.

    Attributes:
      photometric: apply :func:`photometric_distort` (brightness ``+-brightness``, contrast
        and saturation factors in the given ranges, hue ``+-hue`` degrees, each with
        probability ``photometric_p``).
      expand_p, max_expand: zoom out (place the image on a canvas up to ``max_expand``
        times its size, filled with the mean) with probability ``expand_p``.
      crop: the min-IoU random crop; ``crop_min_ious`` are its samplers beside "keep the
        whole image" (``min_ious``), 0 being the unconstrained patch; patches of scale
        ``min_scale``-``max_scale`` and aspect ``min_aspect``-``max_aspect``, ``max_trials``
        tries per sampler.
      flip_p: horizontal flip probability.
    """

    photometric: bool = True
    brightness: float = 32.0
    contrast: tuple[float, float] = (0.5, 1.5)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue: float = 18.0
    photometric_p: float = 0.5
    expand_p: float = 0.5
    max_expand: float = 4.0
    crop: bool = True
    crop_min_ious: tuple[float, ...] = tuple(v for v in SSD_MIN_IOUS if v is not None)
    min_scale: float = 0.3
    max_scale: float = 1.0
    min_aspect: float = 0.5
    max_aspect: float = 2.0
    max_trials: int = 50
    flip_p: float = 0.5

    def __post_init__(self):
        for name in ("photometric_p", "expand_p", "flip_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_expand < 1.0:
            raise ValueError(f"data.max_expand must be >= 1, got {self.max_expand}")
        for name in ("contrast", "saturation"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi:
                raise ValueError(f"data.{name} must be a range (lo, hi) with 0 <= lo <= hi, got {getattr(self, name)}")
        if self.brightness < 0 or self.hue < 0:
            raise ValueError(f"data.brightness and data.hue must be >= 0, got {self.brightness}, {self.hue}")
        if not all(0.0 <= v <= 1.0 for v in self.crop_min_ious):
            raise ValueError(f"data.crop_min_ious must lie in [0, 1], got {self.crop_min_ious}")
        if not 0.0 < self.min_scale <= self.max_scale <= 1.0:
            raise ValueError(f"data.min_scale/max_scale must satisfy 0 < min <= max <= 1, got {self.min_scale}, {self.max_scale}")
        if not 0.0 < self.min_aspect <= self.max_aspect:
            raise ValueError(f"data.min_aspect/max_aspect must satisfy 0 < min <= max, got {self.min_aspect}, {self.max_aspect}")
        if self.max_trials < 1:
            raise ValueError(f"data.max_trials must be >= 1, got {self.max_trials}")

    @property
    def min_ious(self) -> tuple[float | None, ...]:
        """The crop's options: ``None`` (keep the whole image), then each minimum IoU."""
        return (None, *self.crop_min_ious) if self.crop else (None,)


def ssd_augment(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),
    *,
    fill: Sequence[float] = normalization.TORCHVISION.mean_pixel,
) -> Arrays:
    """The SSD training augmentation (before resize): photometric -> expand -> crop -> flip."""
    c = config
    if c.photometric:
        image, boxes, labels = photometric_distort(
            image, boxes, labels, rng, brightness=c.brightness, contrast=c.contrast,
            saturation=c.saturation, hue=c.hue, p=c.photometric_p,
        )  # fmt: skip
    image, boxes, labels = expand(image, boxes, labels, rng, fill=fill, max_ratio=c.max_expand, p=c.expand_p)
    image, boxes, labels = random_crop(
        image, boxes, labels, rng, min_ious=c.min_ious, min_scale=c.min_scale,
        max_scale=c.max_scale, min_aspect=c.min_aspect, max_aspect=c.max_aspect,
        max_trials=c.max_trials,
    )  # fmt: skip
    return horizontal_flip(image, boxes, labels, rng, p=c.flip_p)
