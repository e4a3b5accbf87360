"""Inference: network + decode/NMS as one jitted function.

``make_predict_fn`` turns a model's graph definition and prior spec into a pure, jitted
``predict(params, model_state, images [B,S,S,3]) -> Detections`` (normalised boxes);
``image_detections`` takes one image's detections back to pixels. The evaluation loop
that runs ``predict`` over a split is :mod:`ssd_jax.evaluation.loop`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import anchors, postprocess
from ssd_jax import boxes as box_ops

PredictFn = Callable[[Any, Any, jax.Array], postprocess.Detections]


def make_predict_fn(
    graphdef: Any,
    spec: anchors.PriorSpec,
    *,
    score_threshold: float = 0.01,
    nms_iou: float = 0.45,
    candidates_per_class: int = 400,
    max_detections: int = 200,
    variances: tuple[float, float] = box_ops.DEFAULT_VARIANCES,
) -> PredictFn:
    """Jitted ``predict(params, model_state, images) -> Detections`` (inference mode).

    Defaults are the paper's / torchvision's: score 0.01, NMS IoU 0.45, 200 detections;
    ``variances`` must be the box coder's that the network was trained with (a run's
    ``loss.variances``: :func:`ssd_jax.builders.build_predict_fn` passes them).
    """
    from ssd_jax.models import ssd  # models pull in flax; keep this module light to import

    priors = jnp.asarray(anchors.generate(spec))

    @jax.jit
    def predict(params, model_state, images):
        (logits, offsets), _ = ssd.apply(graphdef, params, model_state, images, train=False)
        return postprocess.detect(
            logits, offsets, priors, score_threshold=score_threshold, nms_iou=nms_iou,
            candidates_per_class=candidates_per_class, max_detections=max_detections,
            variances=tuple(variances),
        )

    return predict


def image_detections(detections: Any, index: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The valid detections of image ``index`` of a (host) batch from ``predict``:
    ``(boxes [K,4] xyxy in the pixels of a width x height image, classes [K], scores [K])``."""
    keep = np.asarray(detections.valid[index])
    boxes = np.asarray(detections.boxes[index])[keep] * np.array([width, height, width, height])
    return boxes, np.asarray(detections.classes[index])[keep], np.asarray(detections.scores[index])[keep]
