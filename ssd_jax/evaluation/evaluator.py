"""Evaluators the training loop calls: ``reset()``, ``add(...)`` per batch, ``compute()``.

An evaluator is built once from the evaluation split's ground-truth records and class
names. Each evaluation round calls :meth:`reset`, then :meth:`add` for every batch of
detections (the host copy of :class:`ssd_jax.postprocess.Detections`: normalised boxes,
scores, classes, valid mask), then :meth:`compute` for a flat ``{name: float}`` dict
(TensorBoard-ready), and optionally :meth:`precision_recall` for plots. Only the images
given to :meth:`add` are evaluated (an image with no valid detection still counts, with
its truths), so a round may cover a subset of the split.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from ssd_jax.evaluation import coco as coco_lib
from ssd_jax.evaluation import voc as voc_lib
from ssd_jax.evaluation.types import GroundTruth, ImageDetections, check_unique_ids


def _field(detections: Any, name: str):
    if isinstance(detections, Mapping):
        return detections.get(name)
    return getattr(detections, name, None)


class _Evaluator:
    """Shared bookkeeping: the truth records and the detections added since reset."""

    def __init__(self, records: Sequence[GroundTruth], class_names: Sequence[str]):
        self._records = list(records)
        self._index = check_unique_ids(self._records)
        self.class_names = tuple(str(n) for n in class_names)
        if not self.class_names:
            raise ValueError("class_names is empty")
        num_classes = len(self.class_names)
        for r in self._records:
            if len(r) and r.labels.max() > num_classes:
                raise ValueError(f"ground truth of image {r.image_id!r} has label "
                                 f"{r.labels.max()}, but there are {num_classes} classes")
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_images(self) -> int:
        """Images added since the last reset."""
        return len(self._detections)

    def reset(self) -> None:
        """Forget every detection added (start an evaluation round)."""
        self._detections: dict[Hashable, ImageDetections] = {}
        self._cache = None

    def add_image(self, detections: ImageDetections) -> None:
        """Add one image's pixel-space detections."""
        if detections.image_id not in self._index:
            raise KeyError(f"image {detections.image_id!r} is not in the ground-truth records")
        if detections.image_id in self._detections:
            raise ValueError(f"image {detections.image_id!r} was already added in this round")
        if len(detections) and detections.labels.max() > self.num_classes:
            raise ValueError(f"image {detections.image_id!r}: detection label "
                             f"{detections.labels.max()} > {self.num_classes} classes")
        self._detections[detections.image_id] = detections
        self._cache = None

    def add(self, image_ids: Sequence[Hashable | None], detections: Any,
            normalized: bool = True) -> None:
        """Add a batch of detections.

        Args:
          image_ids: ``[B]`` the source image id of each row; ``None`` marks a padding
            row, which is skipped.
          detections: a :class:`~ssd_jax.postprocess.Detections` or a mapping with
            ``boxes [B,K,4]`` xyxy, ``scores [B,K]``, ``classes [B,K]`` (1..C) and either
            ``valid [B,K]`` bool or ``num_detections [B]`` (valid entries first). Device
            arrays are copied to the host.
          normalized: boxes are in [0, 1] of each image (scaled by the record's width
            and height); False: already in pixels.
        """
        boxes = np.asarray(_field(detections, "boxes"), np.float64)
        scores = np.asarray(_field(detections, "scores"), np.float64)
        classes = np.asarray(_field(detections, "classes"))
        valid = _field(detections, "valid")
        if boxes.ndim != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"detections.boxes must be [B, K, 4], got {boxes.shape}")
        b, k = boxes.shape[:2]
        if scores.shape != (b, k) or classes.shape != (b, k):
            raise ValueError(f"scores {scores.shape} and classes {classes.shape} must be "
                             f"[B, K] = {(b, k)}")
        if valid is None:
            count = _field(detections, "num_detections")
            if count is None:
                raise ValueError("detections need a 'valid' mask or a 'num_detections' count")
            valid = np.arange(k)[None, :] < np.asarray(count).reshape(-1, 1)
        valid = np.asarray(valid, bool)
        if valid.shape != (b, k):
            raise ValueError(f"valid must be [B, K] = {(b, k)}, got {valid.shape}")
        if len(image_ids) != b:
            raise ValueError(f"{len(image_ids)} image ids for a batch of {b}")
        for row, image_id in enumerate(image_ids):
            if image_id is None:
                continue
            if image_id not in self._index:
                raise KeyError(f"image {image_id!r} is not in the ground-truth records")
            keep = valid[row]
            row_boxes = boxes[row, keep]
            if normalized:
                r = self._records[self._index[image_id]]
                row_boxes = row_boxes * np.array([r.width, r.height, r.width, r.height])
            self.add_image(ImageDetections(image_id, row_boxes, scores[row, keep],
                                           classes[row, keep].astype(np.int64)))

    def _round(self) -> tuple[list[GroundTruth], list[ImageDetections]]:
        if not self._detections:
            raise ValueError("no image was added since reset(): nothing to evaluate")
        truths = [self._records[self._index[i]] for i in self._detections]
        return truths, list(self._detections.values())

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def precision_recall(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError


class VOCEvaluator(_Evaluator):
    """PASCAL VOC AP at IoU 0.5 (see :mod:`ssd_jax.evaluation.voc` for the exact rules).

    ``compute()`` returns ``mAP`` (11-point if ``use_07_metric`` else area), ``mAP_11pt``,
    ``mAP_area``, ``num_images`` and ``AP/<class>`` (the primary definition; NaN for a
    class without non-difficult truths, which the means leave out).
    """

    def __init__(self, records: Sequence[GroundTruth], class_names: Sequence[str],
                 use_07_metric: bool = True, iou_threshold: float = 0.5,
                 pixel_offset: float = 1.0):
        self.use_07_metric = bool(use_07_metric)
        self.iou_threshold = float(iou_threshold)
        self.pixel_offset = float(pixel_offset)
        super().__init__(records, class_names)

    def results(self) -> list[voc_lib.VOCClassResult]:
        """Per-class outcomes (both AP definitions, curves, TP/FP flags)."""
        if self._cache is None:
            truths, dets = self._round()
            self._cache = voc_lib.evaluate_voc(truths, dets, self.num_classes,
                                               self.iou_threshold, self.pixel_offset)
        return self._cache

    def compute(self) -> dict[str, float]:
        res = self.results()
        out = {
            "mAP": voc_lib.mean_ap(res, self.use_07_metric),
            "mAP_11pt": voc_lib.mean_ap(res, True),
            "mAP_area": voc_lib.mean_ap(res, False),
            "num_images": float(self.num_images),
        }
        for name, r in zip(self.class_names, res):
            out[f"AP/{name}"] = r.ap_11pt if self.use_07_metric else r.ap_area
        return out

    def precision_recall(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{class: (recall [n], precision [n])}``, the devkit curves in rank order."""
        return {name: (r.recall, r.precision) for name, r in zip(self.class_names,
                                                                 self.results())}


class COCOEvaluator(_Evaluator):
    """COCO bbox metrics, identical to pycocotools' ``COCOeval``.

    ``compute()`` returns ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``,
    ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl`` (-1 where pycocotools has no value),
    ``num_images`` and ``AP/<class>`` (AP@[.5:.95]; NaN for a class without truths).

    Args:
      category_ids: ``[C]`` original COCO category id of class 1..C (default 1..C).
    """

    def __init__(self, records: Sequence[GroundTruth], class_names: Sequence[str],
                 category_ids: Sequence[int] | None = None):
        super().__init__(records, class_names)
        ids = category_ids or coco_lib.default_category_ids(self.num_classes)
        self.category_ids = tuple(coco_lib._check_categories(ids, self.class_names))

    def result(self) -> coco_lib.COCOResult:
        if self._cache is None:
            truths, dets = self._round()
            self._cache = coco_lib.evaluate_coco(truths, dets, self.category_ids,
                                                 self.class_names)
        return self._cache

    def compute(self) -> dict[str, float]:
        res = self.result()
        out = dict(res.stats)
        out["num_images"] = float(self.num_images)
        for name, ap in zip(self.class_names, res.per_class_ap):
            out[f"AP/{name}"] = float(ap)
        return out

    def precision_recall(self, iou_threshold: float = 0.5) -> dict[str, tuple[np.ndarray,
                                                                            np.ndarray]]:
        """``{class: (recall thresholds [101], precision [101])}`` at one IoU threshold,
        area "all", 100 detections (COCO's interpolated curve; NaN where undefined)."""
        res = self.result()
        t = np.nonzero(np.isclose(res.iou_thresholds, iou_threshold))[0]
        if t.size != 1:
            raise ValueError(f"iou_threshold {iou_threshold} is not one of "
                             f"{res.iou_thresholds.tolist()}")
        order = {c: k for k, c in enumerate(sorted(self.category_ids))}
        out = {}
        for name, cat in zip(self.class_names, self.category_ids):
            p = res.precision[t[0], :, order[cat], 0, -1].astype(np.float64)
            out[name] = (res.recall_thresholds.copy(), np.where(p > -1, p, np.nan))
        return out

    def results_json(self) -> list[dict]:
        """The added detections in the COCO results format (original ids)."""
        truths, dets = self._round()
        return coco_lib.to_coco_results(dets, self.category_ids)
