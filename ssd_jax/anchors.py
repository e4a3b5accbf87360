"""Prior (default box) layouts and their generation, with the SSD300/SSD512 presets.

A :class:`PriorSpec` says where the priors of each source feature map sit and how big
they are; :func:`generate` turns it into the ``[P, 4]`` array of normalised
``(cx, cy, w, h)`` priors, ordered map by map, cell by cell in row-major order, and
within a cell: the min-size square, the sqrt(min*max) square, then for each aspect
ratio r the box ``(s*sqrt(r), s/sqrt(r))`` followed by its transpose (ssd.pytorch's
``PriorBox`` and torchvision's ``DefaultBoxGenerator`` order). The network's heads take
their boxes-per-cell from the same spec, so predictions and priors always line up.

Priors are constants of the model: they are computed once, in float64 numpy, and
returned as float32 numpy (usable as a jit constant or a device array).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np


_CLIP_MODES = ("all", "size", "none")


def _as_tuple(values, cast=float) -> tuple:
    return tuple(cast(v) for v in values)


@dataclasses.dataclass(frozen=True)
class PriorSpec:
    """Prior layout of an SSD model.

    Attributes:
      image_size: side of the (square) network input, in pixels.
      feature_sizes: side of each source feature map, shallow to deep.
      steps: pixels between neighbouring cell centres of each map; a centre sits at
        ``(j + 0.5) * step / image_size``.
      min_sizes: side of each map's small square prior, in pixels.
      max_sizes: each map's "max size": the second square has side
        ``sqrt(min * max)``. Empty tuple: no second square.
      aspect_ratios: per map, the ratios r (> 0, != 1) whose boxes
        ``(s*sqrt(r), s/sqrt(r))`` and their transposes are added (s = min size).
      clip: what is clamped to [0, 1]: ``"all"`` of ``(cx, cy, w, h)`` (ssd.pytorch,
        lufficc/SSD), ``"size"`` only ``(w, h)`` (torchvision: SSD300's 10x10 map, step 32,
        keeps its last centre at 1.0133), or ``"none"``. ``True``/``False`` mean
        ``"all"``/``"none"``.
      name: label for tables and error messages.
    """

    image_size: int
    feature_sizes: tuple[int, ...]
    steps: tuple[float, ...]
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    clip: str | bool = "all"
    name: str = ""

    def __post_init__(self):
        # Normalise to tuples so specs built from lists stay hashable and comparable.
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("image_size", int(self.image_size))
        set_("feature_sizes", _as_tuple(self.feature_sizes, int))
        set_("steps", _as_tuple(self.steps))
        set_("min_sizes", _as_tuple(self.min_sizes))
        set_("max_sizes", _as_tuple(self.max_sizes))
        set_("aspect_ratios", tuple(_as_tuple(r) for r in self.aspect_ratios))
        if isinstance(self.clip, bool):
            set_("clip", "all" if self.clip else "none")
        label = f"PriorSpec {self.name!r}" if self.name else "PriorSpec"
        if self.clip not in _CLIP_MODES:
            raise ValueError(f"{label}: clip must be one of {_CLIP_MODES} or a bool, got {self.clip!r}")
        n = len(self.feature_sizes)
        if n == 0:
            raise ValueError(f"{label}: feature_sizes is empty")
        if self.image_size <= 0:
            raise ValueError(f"{label}: image_size must be positive, got {self.image_size}")
        for field in ("steps", "min_sizes", "aspect_ratios"):
            if len(getattr(self, field)) != n:
                raise ValueError(
                    f"{label}: {field} has {len(getattr(self, field))} entries but there are "
                    f"{n} feature maps ({self.feature_sizes})"
                )
        if self.max_sizes and len(self.max_sizes) != n:
            raise ValueError(
                f"{label}: max_sizes has {len(self.max_sizes)} entries, expected {n} or none"
            )
        for field in ("feature_sizes", "steps", "min_sizes", "max_sizes"):
            bad = [v for v in getattr(self, field) if not v > 0]
            if bad:
                raise ValueError(f"{label}: {field} must be positive, got {getattr(self, field)}")
        for k, ratios in enumerate(self.aspect_ratios):
            if any(not r > 0 or r == 1 for r in ratios):
                raise ValueError(
                    f"{label}: aspect ratios of map {k} must be positive and != 1 "
                    f"(the squares are always there), got {ratios}"
                )

    @classmethod
    def from_scales(
        cls,
        image_size: int,
        feature_sizes: Sequence[int],
        scales: Sequence[float],
        aspect_ratios: Sequence[Sequence[float]],
        steps: Sequence[float] | None = None,
        clip: str | bool = "size",
        name: str = "",
    ) -> "PriorSpec":
        """Spec from relative scales, as torchvision's ``DefaultBoxGenerator``.

        ``scales`` has one entry more than there are maps: map k's min size is
        ``scales[k] * image_size`` and its max size ``scales[k + 1] * image_size``.
        ``steps=None`` spaces the centres evenly: ``step = image_size / feature_size``.
        ``clip`` defaults to torchvision's: sizes only.
        """
        if len(scales) != len(feature_sizes) + 1:
            raise ValueError(
                f"scales needs {len(feature_sizes) + 1} entries for {len(feature_sizes)} "
                f"feature maps (one more than maps), got {len(scales)}"
            )
        if steps is None:
            steps = [image_size / f for f in feature_sizes]
        return cls(
            image_size=image_size,
            feature_sizes=tuple(feature_sizes),
            steps=tuple(steps),
            min_sizes=tuple(s * image_size for s in scales[:-1]),
            max_sizes=tuple(s * image_size for s in scales[1:]),
            aspect_ratios=tuple(tuple(r) for r in aspect_ratios),
            clip=clip,
            name=name,
        )

    @property
    def num_maps(self) -> int:
        return len(self.feature_sizes)

    @property
    def boxes_per_cell(self) -> tuple[int, ...]:
        """Priors per feature-map cell of each map (what each head predicts per cell)."""
        squares = 2 if self.max_sizes else 1
        return tuple(squares + 2 * len(r) for r in self.aspect_ratios)

    @property
    def priors_per_map(self) -> tuple[int, ...]:
        return tuple(f * f * b for f, b in zip(self.feature_sizes, self.boxes_per_cell))

    @property
    def num_priors(self) -> int:
        return sum(self.priors_per_map)

    def cell_box_sizes(self, k: int) -> list[tuple[float, float]]:
        """``(w, h)`` in pixels of the priors of one cell of map ``k``, in prior order."""
        s = self.min_sizes[k]
        sizes = [(s, s)]
        if self.max_sizes:
            s_prime = math.sqrt(s * self.max_sizes[k])
            sizes.append((s_prime, s_prime))
        for r in self.aspect_ratios[k]:
            sq = math.sqrt(r)
            sizes += [(s * sq, s / sq), (s / sq, s * sq)]
        return sizes


def generate(spec: PriorSpec) -> np.ndarray:
    """All priors of ``spec``: ``[P, 4]`` float32 normalised ``(cx, cy, w, h)``."""
    per_map = []
    for k, f in enumerate(spec.feature_sizes):
        centres = (np.arange(f, dtype=np.float64) + 0.5) * spec.steps[k] / spec.image_size
        cy, cx = np.meshgrid(centres, centres, indexing="ij")  # row-major: y outer, x inner
        wh = np.asarray(spec.cell_box_sizes(k), dtype=np.float64) / spec.image_size  # [A, 2]
        a = wh.shape[0]
        xy = np.stack([cx.ravel(), cy.ravel()], axis=-1)  # [f*f, 2]
        boxes = np.concatenate(
            [np.repeat(xy, a, axis=0), np.tile(wh, (f * f, 1))], axis=-1
        )  # [f*f*A, 4]: cell-major, box-minor
        per_map.append(boxes)
    priors = np.concatenate(per_map, axis=0)
    if spec.clip == "all":
        priors = np.clip(priors, 0.0, 1.0)
    elif spec.clip == "size":
        priors[:, 2:] = np.clip(priors[:, 2:], 0.0, 1.0)
    return priors.astype(np.float32)


def map_slices(spec: PriorSpec) -> list[slice]:
    """The slice of the ``[P]`` prior axis that belongs to each source map."""
    ends = np.cumsum(spec.priors_per_map)
    starts = np.concatenate([[0], ends[:-1]])
    return [slice(int(s), int(e)) for s, e in zip(starts, ends)]


def describe(spec: PriorSpec) -> list[dict]:
    """One row per source map: size, step, prior sizes, boxes per cell, prior counts."""
    rows, total = [], 0
    for k, f in enumerate(spec.feature_sizes):
        total += spec.priors_per_map[k]
        rows.append(
            dict(
                map=k,
                feature_size=f,
                step=spec.steps[k],
                min_size=spec.min_sizes[k],
                max_size=spec.max_sizes[k] if spec.max_sizes else None,
                mid_size=math.sqrt(spec.min_sizes[k] * spec.max_sizes[k]) if spec.max_sizes else None,
                aspect_ratios=spec.aspect_ratios[k],
                boxes_per_cell=spec.boxes_per_cell[k],
                priors=spec.priors_per_map[k],
                cumulative=total,
            )
        )
    return rows


_RATIOS_6 = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
_RATIOS_7 = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))

#: SSD300 for PASCAL VOC: ssd.pytorch ``data/config.py`` (``voc``), which follows the
#: paper's Caffe prototxt: maps 38..1, steps 8..300, min sizes 30..264, max 60..315.
SSD300_VOC = PriorSpec(
    image_size=300,
    feature_sizes=(38, 19, 10, 5, 3, 1),
    steps=(8, 16, 32, 64, 100, 300),
    min_sizes=(30, 60, 111, 162, 213, 264),
    max_sizes=(60, 111, 162, 213, 264, 315),
    aspect_ratios=_RATIOS_6,
    clip="all",
    name="SSD300_VOC",
)

#: SSD300 for COCO as torchvision's ``ssd300_vgg16``: ``DefaultBoxGenerator(
#: [[2], [2, 3], [2, 3], [2, 3], [2], [2]], scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87,
#: 1.05], steps=[8, 16, 32, 64, 100, 300])`` (torchvision/models/detection/ssd.py), whose
#: ``clip=True`` clamps only the sizes (anchor_utils.py).
SSD300_COCO = PriorSpec.from_scales(
    image_size=300,
    feature_sizes=(38, 19, 10, 5, 3, 1),
    scales=(0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05),
    aspect_ratios=_RATIOS_6,
    steps=(8, 16, 32, 64, 100, 300),
    clip="size",
    name="SSD300_COCO",
)

#: SSD512 for PASCAL VOC: lufficc/SSD ``configs/vgg_ssd512_voc0712.yaml`` (the paper's
#: Caffe SSD512 sizes: min 35.84..460.8, max 76.8..537.65, steps 8..512).
SSD512_VOC = PriorSpec(
    image_size=512,
    feature_sizes=(64, 32, 16, 8, 4, 2, 1),
    steps=(8, 16, 32, 64, 128, 256, 512),
    min_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
    max_sizes=(76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.65),
    aspect_ratios=_RATIOS_7,
    clip="all",
    name="SSD512_VOC",
)

#: SSD512 for COCO: lufficc/SSD ``configs/vgg_ssd512_coco_trainval35k.yaml``
#: (min 20.48..460.8, max 51.2..542.72; scales 0.04, 0.1, 0.26, ..., 1.06 of 512).
SSD512_COCO = PriorSpec(
    image_size=512,
    feature_sizes=(64, 32, 16, 8, 4, 2, 1),
    steps=(8, 16, 32, 64, 128, 256, 512),
    min_sizes=(20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8),
    max_sizes=(51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72),
    aspect_ratios=_RATIOS_7,
    clip="all",
    name="SSD512_COCO",
)

PRESETS: dict[str, PriorSpec] = {
    s.name: s for s in (SSD300_VOC, SSD300_COCO, SSD512_VOC, SSD512_COCO)
}


def get_preset(name: str) -> PriorSpec:
    """A preset by name (case-insensitive), with a clear error listing the choices."""
    for key, spec in PRESETS.items():
        if key.lower() == name.lower():
            return spec
    raise ValueError(f"unknown prior preset {name!r}; choose one of {sorted(PRESETS)}")
