"""Bridge from the data sources (``ssd_jax.data``) to the evaluation records and evaluators.

The readers give continuous pixel boxes: a VOC box with 1-based inclusive corners
``(x0, y0, x1, y1)`` becomes ``(x0 - 1, y0 - 1, x1, y1)``, so its width is the devkit's
``x1 - x0 + 1``. Detections decoded from the network are continuous too. The devkit's
IoU on inclusive coordinates (``+1`` on every width) therefore equals the plain IoU on
ours, and VOC evaluators built here use ``pixel_offset=0``.
"""

from __future__ import annotations

from ssd_jax.data.records import Source
from ssd_jax.evaluation.evaluator import COCOEvaluator, VOCEvaluator
from ssd_jax.evaluation.types import GroundTruth


def ground_truths(source: Source, difficult_as_crowd: bool = False) -> list[GroundTruth]:
    """One :class:`GroundTruth` per record, in the source's order (pixel boxes, labels 1..C).

    ``difficult_as_crowd``: pass the records' difficult flags as COCO ``iscrowd`` (a COCO
    source read with ``crowd="difficult"`` keeps its crowd regions that way).
    """
    truths = []
    for r in source.records:
        flags = dict(iscrowd=r.difficult) if difficult_as_crowd else dict(difficult=r.difficult)
        truths.append(GroundTruth(r.image_id, r.width, r.height, r.boxes, r.labels, area=r.area, **flags))
    return truths


def make_evaluator(source: Source, metric: str = "voc", use_07_metric: bool = True):
    """An evaluator over ``source``'s records: ``"voc"`` (AP at IoU 0.5) or ``"coco"``."""
    if metric == "voc":
        return VOCEvaluator(ground_truths(source), source.class_names,
                            use_07_metric=use_07_metric, pixel_offset=0.0)
    if metric == "coco":
        return COCOEvaluator(ground_truths(source, difficult_as_crowd=True), source.class_names,
                             category_ids=source.category_ids)
    raise ValueError(f"metric must be 'voc' or 'coco', got {metric!r}")
