"""The host-side records evaluation works on: one image's truth, one image's detections.

Both hold pixel boxes ``(xmin, ymin, xmax, ymax)`` of the original image (pixels
appear only at the edges of the system; inside the model boxes are normalised) and object classes 1..C (0 is background and never
appears here). They are plain frozen dataclasses of numpy arrays, checked on creation so
that a bad record fails with its image id instead of a wrong number later.
"""

from __future__ import annotations

import dataclasses
from typing import Hashable

import numpy as np


def _bool_array(value, n: int, name: str, where: str) -> np.ndarray:
    if value is None:
        return np.zeros((n,), bool)
    arr = np.asarray(value).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"{where}: {name} has {arr.shape[0]} entries for {n} boxes")
    return arr.astype(bool)


def _boxes(value, where: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{where}: boxes must be [n, 4] xyxy, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: boxes contain NaN or inf")
    bad = np.nonzero((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1]))[0]
    if bad.size:
        raise ValueError(
            f"{where}: box {int(bad[0])} {arr[bad[0]].tolist()} has xmax < xmin or ymax < ymin"
        )
    return arr


def _labels(value, n: int, where: str) -> np.ndarray:
    arr = np.asarray(value).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"{where}: {arr.shape[0]} labels for {n} boxes")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 1):
        raise ValueError(f"{where}: labels must be integers 1..C (0 is background), got {arr}")
    return arr.astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class GroundTruth:
    """The truth of one image.

    Attributes:
      image_id: the source's id of the image (an int for COCO; VOC uses strings such
        as ``"000005"``). Unique within an evaluation.
      width, height: original image size in pixels (detections in normalised
        coordinates are scaled by these).
      boxes: ``[n, 4]`` float64 xyxy pixel boxes.
      labels: ``[n]`` int64 classes 1..C.
      difficult: ``[n]`` bool, VOC's "difficult" flag (neither TP nor FP in VOC AP;
        ordinary objects for COCO AP, which has no such notion). Default all False.
      iscrowd: ``[n]`` bool, COCO's crowd flag (COCO AP only). Default all False.
      area: ``[n]`` float64 COCO area (the segment area in COCO annotations; it decides
        small/medium/large). Default: box width * height.
    """

    image_id: Hashable
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray | None = None
    iscrowd: np.ndarray | None = None
    area: np.ndarray | None = None

    def __post_init__(self):
        where = f"ground truth of image {self.image_id!r}"
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen)
        if not (int(self.width) > 0 and int(self.height) > 0):
            raise ValueError(f"{where}: width and height must be positive, got "
                             f"{self.width}x{self.height}")
        set_("width", int(self.width))
        set_("height", int(self.height))
        boxes = _boxes(self.boxes, where)
        n = boxes.shape[0]
        set_("boxes", boxes)
        set_("labels", _labels(self.labels, n, where))
        set_("difficult", _bool_array(self.difficult, n, "difficult", where))
        set_("iscrowd", _bool_array(self.iscrowd, n, "iscrowd", where))
        if self.area is None:
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        else:
            area = np.asarray(self.area, np.float64).reshape(-1)
            if area.shape != (n,):
                raise ValueError(f"{where}: area has {area.shape[0]} entries for {n} boxes")
        set_("area", area)

    def __len__(self) -> int:
        return self.boxes.shape[0]


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDetections:
    """The detections of one image, in pixels.

    Attributes:
      image_id: the id of the :class:`GroundTruth` they belong to.
      boxes: ``[n, 4]`` float64 xyxy pixel boxes.
      scores: ``[n]`` float64 confidences (higher is better).
      labels: ``[n]`` int64 classes 1..C.
    """

    image_id: Hashable
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        where = f"detections of image {self.image_id!r}"
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen)
        boxes = _boxes(self.boxes, where)
        n = boxes.shape[0]
        scores = np.asarray(self.scores, np.float64).reshape(-1)
        if scores.shape != (n,):
            raise ValueError(f"{where}: {scores.shape[0]} scores for {n} boxes")
        if not np.isfinite(scores).all():
            raise ValueError(f"{where}: scores contain NaN or inf")
        set_("boxes", boxes)
        set_("scores", scores)
        set_("labels", _labels(self.labels, n, where))

    def __len__(self) -> int:
        return self.boxes.shape[0]


def check_unique_ids(truths) -> dict:
    """``{image_id: position}`` of ``truths``; raises on a repeated id."""
    index = {}
    for i, t in enumerate(truths):
        if t.image_id in index:
            raise ValueError(f"image id {t.image_id!r} appears twice in the ground truth")
        index[t.image_id] = i
    return index
