"""Inference: network + decode/NMS as one jitted function, and the evaluation loop.

``make_predict_fn`` turns a model's graph definition and prior spec into a pure, jitted
``predict(params, model_state, images [B,S,S,3]) -> Detections`` (normalised boxes).
``evaluate`` runs it over an eval iterator (``ssd_jax.data.pipeline.eval_dataset``),
feeds an evaluator (``ssd_jax.evaluation``) and reports the metrics and images/s.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import anchors, postprocess
from ssd_jax.data.records import Source

PredictFn = Callable[[Any, Any, jax.Array], postprocess.Detections]


def make_predict_fn(
    graphdef: Any,
    spec: anchors.PriorSpec,
    *,
    score_threshold: float = 0.01,
    nms_iou: float = 0.45,
    candidates_per_class: int = 400,
    max_detections: int = 200,
) -> PredictFn:
    """Jitted ``predict(params, model_state, images) -> Detections`` (inference mode).

    Defaults are the paper's / torchvision's: score 0.01, NMS IoU 0.45, 200 detections.
    """
    from ssd_jax.models import ssd  # models pull in flax; keep this module light to import

    priors = jnp.asarray(anchors.generate(spec))

    @jax.jit
    def predict(params, model_state, images):
        (logits, offsets), _ = ssd.apply(graphdef, params, model_state, images, train=False)
        return postprocess.detect(
            logits, offsets, priors, score_threshold=score_threshold, nms_iou=nms_iou,
            candidates_per_class=candidates_per_class, max_detections=max_detections,
        )

    return predict


def image_detections(detections: Any, index: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The valid detections of image ``index`` of a (host) batch from ``predict``:
    ``(boxes [K,4] xyxy in the pixels of a width x height image, classes [K], scores [K])``."""
    keep = np.asarray(detections.valid[index])
    boxes = np.asarray(detections.boxes[index])[keep] * np.array([width, height, width, height])
    return boxes, np.asarray(detections.classes[index])[keep], np.asarray(detections.scores[index])[keep]


def evaluate(
    predict: PredictFn,
    params: Any,
    model_state: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    evaluator: Any,
    source: Source,
    *,
    progress: Callable[[int], None] | None = None,
    shard: Callable[[np.ndarray], jax.Array] | None = None,
    gather: Callable[[Any, Mapping[str, np.ndarray]], tuple[Any, np.ndarray, np.ndarray]] | None = None,
) -> tuple[dict[str, float], float]:
    """One pass of ``batches`` through ``predict`` into ``evaluator``.

    Args:
      batches: eval batches with ``'image'``, ``'index'`` (record index, -1 for padding)
        and ``'valid'``.
      evaluator: has ``reset()``, ``add(image_ids, detections)`` and ``compute()``.
      source: the records the batch indices refer to.
      progress: called with the number of images done after each batch.
      shard: places a batch of images on the devices (e.g. split over a mesh's data
        axis); default: jit's placement.
      gather: ``gather(detections, batch) -> (host detections, index, valid)`` for the
        whole global batch; several hosts use it to collect every host's share (see
        ``training_loop.evaluate``). Default: this process's batch, ``jax.device_get``.

    Returns:
      ``(metrics, images_per_second)``; the rate counts real images over the wall time
      after the first batch (which includes compilation), or over the whole pass when
      there is only one batch.
    """
    evaluator.reset()
    begin = time.perf_counter()
    done, start, first_images = 0, None, 0
    for batch in batches:
        images = batch["image"] if shard is None else shard(batch["image"])
        detections = predict(params, model_state, images)
        if gather is None:
            detections, index, valid = jax.device_get(detections), batch["index"], batch["valid"]
        else:
            detections, index, valid = gather(detections, batch)
        ids = [
            source.records[int(i)].image_id if ok and i >= 0 else None
            for i, ok in zip(np.asarray(index), np.asarray(valid))
        ]
        evaluator.add(ids, detections)
        n = sum(i is not None for i in ids)
        done += n
        if start is None:  # the first batch pays for compilation: time the rest
            start, first_images = time.perf_counter(), n
        if progress is not None:
            progress(done)
    if start is None:
        raise ValueError("the eval iterator gave no batch")
    end = time.perf_counter()
    timed = done - first_images
    rate = timed / (end - start) if timed else done / (end - begin)
    return evaluator.compute(), rate
