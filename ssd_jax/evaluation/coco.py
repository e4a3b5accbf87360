"""COCO detection metrics (AP@[.5:.95], AP50, AP75, AP/AR by size, AR1/10/100), per-class AP.

The numbers are pycocotools' ``COCOeval`` ("bbox") numbers; the engine is
``faster-coco-eval`` (a C++ re-implementation of ``COCOeval.evaluate/accumulate`` that
gives the same results, several times faster; the tests check the agreement against
pycocotools itself). This module only converts between our records and the COCO formats:

* ground truth -> a COCO dataset dict: bbox ``[x, y, w, h]`` from the xyxy pixel boxes,
  ``area`` from the record (COCO's segment area) or w*h, ``iscrowd`` from the record;
  VOC's ``difficult`` has no COCO meaning and is ignored here (such objects count);
* detections -> the COCO results format: ``{"image_id", "category_id", "bbox": [x, y, w,
  h] (pixels), "score"}``, with each class 1..C mapped to its original category id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from typing import Hashable, Sequence

import numpy as np

from ssd_jax.evaluation.types import GroundTruth, ImageDetections, check_unique_ids

#: Names of ``COCOeval.stats``, in order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``[n, 4]`` xyxy -> ``[n, 4]`` COCO ``[x, y, w, h]``."""
    boxes = np.asarray(boxes, np.float64)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def default_category_ids(num_classes: int) -> tuple[int, ...]:
    """Class c -> category id c (the identity mapping)."""
    return tuple(range(1, num_classes + 1))


def _check_categories(category_ids: Sequence[int], class_names: Sequence[str] | None):
    ids = [int(c) for c in category_ids]
    if len(set(ids)) != len(ids):
        raise ValueError(f"category_ids must be unique, got {ids}")
    if class_names is not None and len(class_names) != len(ids):
        raise ValueError(f"{len(class_names)} class names for {len(ids)} category ids")
    return ids


def to_coco_dataset(
    truths: Sequence[GroundTruth],
    category_ids: Sequence[int],
    class_names: Sequence[str] | None = None,
) -> dict:
    """A COCO ground-truth dataset dict (``images``, ``annotations``, ``categories``).

    Image ids are the records' ids when all are ints, else their positions (1-based);
    annotation ids run from 1 (pycocotools treats id 0 as "unmatched").
    """
    ids = _check_categories(category_ids, class_names)
    check_unique_ids(truths)
    image_ids = _coco_image_ids(truths)
    names = class_names or [str(c) for c in ids]
    images, annotations = [], []
    for t, image_id in zip(truths, image_ids):
        images.append({"id": image_id, "width": t.width, "height": t.height})
        if len(t) and t.labels.max() > len(ids):
            raise ValueError(f"image {t.image_id!r}: label {t.labels.max()} but only "
                             f"{len(ids)} categories")
        xywh = xyxy_to_xywh(t.boxes)
        for j in range(len(t)):
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": ids[int(t.labels[j]) - 1],
                "bbox": [float(v) for v in xywh[j]],
                "area": float(t.area[j]),
                "iscrowd": int(t.iscrowd[j]),
            })
    categories = [{"id": c, "name": str(n)} for c, n in zip(ids, names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco_image_ids(truths: Sequence[GroundTruth]) -> list[int]:
    if all(isinstance(t.image_id, (int, np.integer)) for t in truths):
        return [int(t.image_id) for t in truths]
    return list(range(1, len(truths) + 1))


def to_coco_results(
    detections: Sequence[ImageDetections],
    category_ids: Sequence[int],
    image_id_map: dict[Hashable, int] | None = None,
) -> list[dict]:
    """Detections in the COCO results format (a JSON-able list of dicts).

    Args:
      detections: per image, pixel xyxy boxes and classes 1..C.
      category_ids: ``category_ids[c - 1]`` is class c's original category id.
      image_id_map: source image id -> COCO image id (default: the id itself).
    """
    ids = _check_categories(category_ids, None)
    out = []
    for d in detections:
        image_id = d.image_id if image_id_map is None else image_id_map[d.image_id]
        if len(d) and d.labels.max() > len(ids):
            raise ValueError(f"image {d.image_id!r}: label {d.labels.max()} but only "
                             f"{len(ids)} categories")
        xywh = xyxy_to_xywh(d.boxes)
        for j in range(len(d)):
            out.append({
                "image_id": image_id,
                "category_id": ids[int(d.labels[j]) - 1],
                "bbox": [float(v) for v in xywh[j]],
                "score": float(d.scores[j]),
            })
    return out


def write_coco_results(path: str | os.PathLike, results: list[dict]) -> None:
    """Write :func:`to_coco_results` output as a COCO results JSON file."""
    with open(path, "w") as f:
        json.dump(results, f)


@dataclasses.dataclass(frozen=True)
class COCOResult:
    """COCO evaluation outcome.

    Attributes:
      stats: ``STAT_NAMES`` -> value (pycocotools' ``stats``; -1 where undefined).
      per_class_ap: ``[C]`` AP@[.5:.95] per class (area all, 100 detections), NaN for a
        class without truths.
      precision: ``[T, R, C, A, M]`` pycocotools' ``eval['precision']`` (-1: undefined).
      recall: ``[T, C, A, M]`` ``eval['recall']``.
      iou_thresholds: ``[T]``; recall_thresholds: ``[R]``.
    """

    stats: dict
    per_class_ap: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray


def _detections_array(detections, category_ids, image_id_map) -> np.ndarray:
    """``[N, 7]`` (image id, x, y, w, h, score, category id), the engine's numpy input."""
    ids = np.asarray(category_ids, np.float64)
    rows = []
    for d in detections:
        if not len(d):
            continue
        if d.labels.max() > len(ids):
            raise ValueError(f"image {d.image_id!r}: label {d.labels.max()} but only "
                             f"{len(ids)} categories")
        rows.append(np.concatenate([
            np.full((len(d), 1), image_id_map[d.image_id], np.float64),
            xyxy_to_xywh(d.boxes),
            d.scores[:, None],
            ids[d.labels - 1][:, None],
        ], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 7))


def evaluate_coco(
    truths: Sequence[GroundTruth],
    detections: Sequence[ImageDetections],
    category_ids: Sequence[int],
    class_names: Sequence[str] | None = None,
) -> COCOResult:
    """pycocotools-identical bbox metrics over the images of ``truths``.

    Args:
      truths: one record per evaluated image.
      detections: per image (a subset of ``truths``' ids; missing: no detections).
      category_ids: ``[C]`` original category id of each class 1..C.
      class_names: ``[C]`` names (only for the COCO dict).
    """
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as e:  # a runtime dependency; say which
        raise ImportError(
            "COCO metrics need the faster-coco-eval package (pip install "
            "'faster-coco-eval>=1.8,<1.9')"
        ) from e

    ids = _check_categories(category_ids, class_names)
    index = check_unique_ids(truths)
    coco_ids = _coco_image_ids(truths)
    image_id_map = {t.image_id: i for t, i in zip(truths, coco_ids)}
    for d in detections:
        if d.image_id not in index:
            raise ValueError(f"detections for image {d.image_id!r}, which has no ground truth")
    dataset = to_coco_dataset(truths, ids, class_names)
    dets = _detections_array(detections, ids, image_id_map)
    quiet = lambda *a, **k: None  # noqa: E731 (the engine prints progress otherwise)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(dataset, print_function=quiet)
        dt = _results_coco(COCO, dataset, dets, quiet)
        ev = COCOeval_faster(gt, dt, "bbox", print_function=quiet)
        ev.params.imgIds = coco_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = np.asarray(ev.eval["precision"])
    recall = np.asarray(ev.eval["recall"])
    # per class: mean over IoUs and recall points of area "all", last maxDets (100)
    per_class = np.full(len(ids), np.nan)
    cat_pos = {c: k for k, c in enumerate(ev.params.catIds)}
    for c_index, cat in enumerate(ids):
        p = precision[:, :, cat_pos[cat], 0, -1]
        p = p[p > -1]
        if p.size:
            per_class[c_index] = float(p.mean())
    return COCOResult(
        stats=dict(zip(STAT_NAMES, (float(s) for s in ev.stats[: len(STAT_NAMES)]))),
        per_class_ap=per_class,
        precision=precision,
        recall=recall,
        iou_thresholds=np.asarray(ev.params.iouThrs),
        recall_thresholds=np.asarray(ev.params.recThrs),
    )


def _results_coco(coco_cls, dataset: dict, dets: np.ndarray, print_function):
    """The detections as a COCO object, as ``COCO.loadRes`` builds it for "bbox" results
    (``area = w * h``, ``id`` from 1, ``iscrowd = 0``), without the segmentation polygons
    it adds (bbox evaluation never reads them), from ``[N, 7]`` rows in one pass."""
    image_ids = {img["id"] for img in dataset["images"]}
    if dets.shape[0] and not set(np.unique(dets[:, 0]).astype(np.int64).tolist()) <= image_ids:
        raise ValueError("detections refer to images outside the ground truth")
    img, x, y, w, h, score, cat = (dets[:, i].tolist() for i in range(7))
    area = (dets[:, 3] * dets[:, 4]).tolist()
    annotations = [
        {"image_id": int(img[i]), "bbox": [x[i], y[i], w[i], h[i]], "score": score[i],
         "category_id": int(cat[i]), "area": area[i], "id": i + 1, "iscrowd": 0}
        for i in range(dets.shape[0])
    ]
    res = coco_cls(print_function=print_function)
    res.dataset = {"images": list(dataset["images"]), "annotations": annotations,
                   "categories": [dict(c) for c in dataset["categories"]]}
    res.createIndex()
    return res
