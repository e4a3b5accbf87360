"""The evaluation loop: predictions over an eval split into an evaluator, on one or many hosts.

:func:`evaluate` is what training's periodic evaluation, ``launch.py eval`` and the
benchmarks run: the split's batches go through a jitted ``predict`` (see
:func:`ssd_jax.inference.make_predict_fn`) with the images split over the mesh's data axis,
and every detection reaches the evaluator (:mod:`ssd_jax.evaluation.evaluator`). With
several processes each reads and predicts its shard of the images, and every batch's
detections are gathered to all hosts, so every host computes the same metrics.
:func:`evaluate_batches` is its inner loop over ready batches.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

from ssd_jax.data.records import Source
from ssd_jax.schema import Section

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalConfig(Section):
    """The ``eval`` section of an experiment (defaults: the paper's and torchvision's).

    Attributes:
      metric: ``voc`` (AP at IoU 0.5) or ``coco`` (AP over IoU 0.5:0.95, pycocotools-identical).
      use_07_metric: VOC: the 11-point AP of VOC2007 (False: the area under the curve).
      score_threshold: detections scoring below are dropped before NMS.
      nms_iou: per-class NMS IoU.
      candidates_per_class: top-scoring boxes per class that enter NMS.
      max_detections: detections kept per image.
    """

    metric: str = "voc"
    use_07_metric: bool = True
    score_threshold: float = 0.01
    nms_iou: float = 0.45
    candidates_per_class: int = 400
    max_detections: int = 200

    def __post_init__(self):
        if self.metric not in ("voc", "coco"):
            raise ValueError(f"eval.metric must be 'voc' or 'coco', got {self.metric!r}")
        if not 0.0 <= self.score_threshold < 1.0 or not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"eval.score_threshold must be in [0, 1) and eval.nms_iou in (0, 1], "
                             f"got {self.score_threshold}, {self.nms_iou}")
        if self.candidates_per_class < 1 or self.max_detections < 1:
            raise ValueError("eval.candidates_per_class and eval.max_detections must be positive")

    @property
    def best_key(self) -> str:
        """The metric that ranks checkpoints: ``AP`` (COCO) or ``mAP`` (VOC)."""
        return "AP" if self.metric == "coco" else "mAP"


def evaluate_batches(
    predict: Callable,
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
      predict: ``predict(params, model_state, images [B,S,S,3]) -> Detections``.
      batches: eval batches with ``'image'``, ``'index'`` (record index, -1 for padding)
        and ``'valid'``.
      evaluator: has ``reset()``, ``add(image_ids, detections)`` and ``compute()``.
      source: the records the batch indices refer to.
      progress: called with the number of images done after each batch.
      shard: places a batch of images on the devices (e.g. split over a mesh's data
        axis); default: jit's placement.
      gather: ``gather(detections, batch) -> (host detections, index, valid)`` for the
        whole global batch (several hosts collect every host's share with it). Default:
        this process's batch, ``jax.device_get``.

    An image that failed to load (a row with a record index but ``valid`` False; the
    pipeline's strict mode raises instead) counts as an image without detections: its
    objects stay in the recall denominator, as they would for a model that found nothing.
    ``metrics['failed_images']`` says how many there were.

    Returns:
      ``(metrics, images_per_second)``; the rate counts real images over the wall time
      after the first batch (which includes compilation), or over the whole pass when
      there is only one batch.
    """
    evaluator.reset()
    begin = time.perf_counter()
    done, start, first_images, failed = 0, None, 0, []
    for batch in batches:
        images = batch["image"] if shard is None else shard(batch["image"])
        detections = predict(params, model_state, images)
        if gather is None:
            detections, index, valid = jax.device_get(detections), batch["index"], batch["valid"]
        else:
            detections, index, valid = gather(detections, batch)
        index, valid = np.asarray(index), np.asarray(valid, bool)
        unloaded = (index >= 0) & ~valid
        if unloaded.any():
            detections = _without_detections(detections, unloaded)
            failed += [source.records[int(i)].image_id for i in index[unloaded]]
        ids = [source.records[int(i)].image_id if i >= 0 else None for i in index]
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
    if failed:
        logger.warning("evaluation: %d image(s) failed to load and count as images without detections "
                       "(their objects are misses): %s", len(failed), ", ".join(map(str, failed[:10]))
                       + (" ..." if len(failed) > 10 else ""))
    return {**evaluator.compute(), "failed_images": float(len(failed))}, rate


def covers_split(num_images: int, max_images: int) -> bool:
    """Whether an evaluation of the first ``max_images`` (0: all) of a split of
    ``num_images`` images covers the whole split."""
    return not max_images or max_images >= num_images


def _without_detections(detections: Any, rows: np.ndarray) -> Any:
    """``detections`` (a :class:`~ssd_jax.postprocess.Detections` or a mapping with
    ``valid [B,K]``) with every entry of the ``rows [B]`` marked not valid."""
    if isinstance(detections, Mapping):
        if "valid" not in detections:
            raise ValueError("detections of images that failed to load need a 'valid' mask to be cleared")
        return {**detections, "valid": np.asarray(detections["valid"], bool) & ~rows[:, None]}
    return detections._replace(valid=np.asarray(detections.valid, bool) & ~rows[:, None])


def evaluate(
    predict: Callable,
    params: Any,
    model_state: Any,
    source: Source,
    pcfg: Any,
    mesh: jax.sharding.Mesh,
    evaluator: Any,
    *,
    max_images: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, float], float]:
    """One evaluation round over ``source`` (its first ``max_images`` images if > 0), the
    batches split over the mesh's data axis; returns ``(metrics, images_per_second)``.

    ``pcfg`` (a :class:`ssd_jax.data.pipeline.PipelineConfig`): its ``batch_size`` is this
    process's share of the batch. With several processes (hosts), each reads and predicts
    its shard of the images, every batch's detections and record indices are gathered to
    all hosts (one ``process_allgather`` per batch), and every host feeds the whole split
    to its evaluator: the metrics are the same on all hosts.

    ``metrics['complete']`` is 1.0 when every image of ``source`` was evaluated, 0.0 for a
    partial round (``max_images``): only complete rounds rank checkpoints
    (:func:`ssd_jax.restore.best_step`).
    """
    from ssd_jax import parallel
    from ssd_jax.data import pipeline

    complete = covers_split(len(source), max_images)
    if max_images:
        source = dataclasses.replace(source, records=tuple(source.records[:max_images]))
    count = jax.process_count()
    if count == 1:
        batches = pipeline.eval_dataset(source, pcfg, process_index=0, process_count=1)
        sharding = parallel.data_sharding(mesh)
        shard, gather = (lambda images: jax.device_put(images, sharding)), None
    else:
        from jax.experimental import multihost_utils

        batches = pipeline.eval_dataset(source, pcfg)  # this host's shard
        global_bs = pcfg.batch_size * count

        def shard(images):
            return parallel.global_batch({"image": images}, mesh, global_bs)["image"]

        def gather(detections, batch):  # one collective per batch
            return multihost_utils.process_allgather(
                (detections, np.asarray(batch["index"]), np.asarray(batch["valid"])), tiled=True)
    metrics, rate = evaluate_batches(predict, params, model_state, batches, evaluator, source,
                                     progress=progress, shard=shard, gather=gather)
    return {**metrics, "complete": float(complete)}, rate
