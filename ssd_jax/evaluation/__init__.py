"""Detection evaluation: VOC AP (07 11-point, area), COCO AP (pycocotools-identical).

Modules: ``types`` (GroundTruth, ImageDetections), ``voc`` and ``coco`` (pure metric
functions), ``evaluator`` (reset/add/compute for the training loop), ``plots`` (PR curves).
"""

from ssd_jax.evaluation.evaluator import COCOEvaluator, VOCEvaluator
from ssd_jax.evaluation.types import GroundTruth, ImageDetections

__all__ = ["COCOEvaluator", "VOCEvaluator", "GroundTruth", "ImageDetections"]
