"""The grain input pipeline: training batches that resume exactly, and one-pass eval batches.

Training (:func:`train_dataset`)::

    source -> this host's shard (records process_index::process_count)
      -> seeded shuffle, a new permutation every epoch (grain's index shuffle)
      -> repeat (num_epochs, default forever)
      -> groups of B consecutive stream positions, one batch each
      -> decode + augment + resize + normalise + pad, per record with a numpy RNG from
         (seed, record index, epoch), stacked into the batch
                                                  [in worker processes if num_workers > 0]
         {'image': [B, S, S, 3] float32, 'boxes': [B, G, 4] float32 normalised xyxy,
          'labels': [B, G] int32 (0 = padding)}
      -> warnings with running counts for failed images and dropped objects (this process)

A record whose image fails to load keeps its slot: the next record of the shard (in the
epoch's order) that loads takes its place, with its own augmentation draw (counted
warning; strict mode raises). Every batch is therefore a pure function of its index in
the stream: whole batches are built in the worker processes and cross to this one as
one shared-memory block per array (not one per image), they are the same for any worker
count, and the iterator's ``get_state``/``set_state`` (or orbax, through
``grain.checkpoint.CheckpointSave(iterator)`` / ``CheckpointRestore(iterator)``, e.g. in
``ocp.args.Composite(..., data=grain.checkpoint.CheckpointSave(it))``) resumes exactly.

Evaluation (:func:`eval_dataset`): no shuffle, no repeat, one pass in record order, no
augmentation; the last batch is padded and ``'valid'`` [B] marks real images,
``'index'`` [B] is the record index in the source (-1 for padding) so detections map
back to ``source.records[index]`` (its ``image_id``, size and full annotation).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from typing import Any, Sequence

import grain
import numpy as np

from ssd_jax.data.images import ImageLoadError, load_canvas, load_image
from ssd_jax.data.records import Record, Source
from ssd_jax.data.transforms import AugmentConfig, resize, ssd_augment
from ssd_jax.normalization import TORCHVISION, Normalization

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Input pipeline settings.

    Attributes:
      image_size: side ``S`` of the square network input.
      batch_size: ``B``, images per batch on this host.
      max_boxes: ``G``, object slots per image; objects beyond it are dropped (warned).
      seed: shuffle and augmentation seed (< 2**32).
      num_workers: worker processes for decode + augment (0: in this process).
      worker_buffer_size: batches each worker (or, without workers, this process)
        prepares ahead.
      read_threads: threads per process that run the per-record work.
      use_difficult: train on objects flagged difficult (VOC) / crowd (COCO, if kept).
      normalization: input convention of the backbone (also the zoom-out fill colour).
      augment: the SSD augmentation; ``None`` trains on resized images only.
      strict: raise on an image that fails to load instead of skipping it.
      num_epochs: passes over the data; ``None`` repeats forever.
      canvas: 0: training batches are finished network inputs (augmented here, on the
        host). A side ``C`` (a multiple of 8): they are the images in ``[C, C, 3]`` uint8
        canvases with their sizes and boxes normalised to them, left for
        :func:`ssd_jax.data.device_augment.augment` (``augment`` is then not used here).
    """

    image_size: int = 300
    batch_size: int = 32
    max_boxes: int = 100
    seed: int = 0
    num_workers: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 1
    use_difficult: bool = False
    normalization: Normalization = TORCHVISION
    augment: AugmentConfig | None = AugmentConfig()
    strict: bool = False
    num_epochs: int | None = None
    canvas: int = 0

    def __post_init__(self):
        for name in ("image_size", "batch_size", "max_boxes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PipelineConfig.{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"PipelineConfig.seed must be in [0, 2**32), got {self.seed}")
        if self.num_workers < 0 or self.read_threads < 1 or self.worker_buffer_size < 1:
            raise ValueError("PipelineConfig: num_workers must be >= 0, read_threads and worker_buffer_size >= 1")
        if self.canvas < 0 or self.canvas % 8:
            raise ValueError(f"PipelineConfig.canvas must be 0 or a positive multiple of 8, got {self.canvas}")


def pad_objects(
    boxes: np.ndarray, labels: np.ndarray, max_boxes: int, *extra: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Pad or cut one image's objects to ``max_boxes`` slots.

    Args:
      boxes: ``[N, 4]`` boxes; labels: ``[N]`` labels; extra: more ``[N]`` arrays.

    Returns:
      ``([G, 4] float32 boxes, [G] int32 labels, *[G] extras, dropped)``: padding slots
      have zero boxes and label 0 (extras 0/False); the first ``G`` objects are kept and
      ``dropped = max(N - G, 0)``.
    """
    n = min(len(labels), max_boxes)
    out_boxes = np.zeros((max_boxes, 4), np.float32)
    out_boxes[:n] = boxes[:n]
    out_labels = np.zeros((max_boxes,), np.int32)
    out_labels[:n] = labels[:n]
    out_extra = []
    for e in extra:
        padded = np.zeros((max_boxes,), e.dtype)
        padded[:n] = e[:n]
        out_extra.append(padded)
    return (out_boxes, out_labels, *out_extra, max(len(labels) - max_boxes, 0))


def shard_indices(num_records: int, process_index: int, process_count: int) -> np.ndarray:
    """Record indices of one host: ``process_index::process_count``."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return np.arange(process_index, num_records, process_count)


def _host(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only the main process needs it

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return process_index, process_count


def _allow_grain_workers() -> None:
    """Work around grain 0.2.18's worker start reading an absl flag even when the program
    never parsed flags (``UnparsedFlagAccessError``; grain issue 1355, fixed upstream after
    this release). If nobody parsed absl flags, mark them parsed so their defaults apply;
    a program that uses ``absl.app`` is left untouched."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class _TrainLoader:
    """Batch index + its B shard positions -> one training batch (runs in workers)."""

    def __init__(self, records: Sequence[Record], shard: np.ndarray, order: grain.MapDataset, config: PipelineConfig):
        self._records = records
        self._shard = shard
        self._order = order  # stream position -> shard position (the shuffled epochs)
        self._config = config

    def _element(self, record_index: int, epoch: int, *extra_seed: int) -> dict[str, Any]:
        """One record's training element; raises ``ImageLoadError``."""
        c = self._config
        record = self._records[record_index]
        if c.canvas:
            canvas, size = load_canvas(record, c.canvas, c.canvas)
        else:
            image = load_image(record)
        keep = np.ones(record.num_objects, bool) if c.use_difficult else ~record.difficult
        boxes, labels = record.boxes[keep], record.labels[keep]
        if c.canvas:  # the device augments; the boxes are normalised to the image
            scale = np.asarray([record.width, record.height] * 2, np.float32)
            boxes, labels, dropped = pad_objects(boxes / scale, labels, c.max_boxes)
            return {"image": canvas, "size": size, "boxes": boxes, "labels": labels, "dropped": dropped}
        if c.augment is not None:
            rng = np.random.default_rng([c.seed, record_index, epoch, *extra_seed])
            image, boxes, labels = ssd_augment(image, boxes, labels, rng, c.augment, fill=c.normalization.mean_pixel)
        image, boxes, labels = resize(image, boxes, labels, size=c.image_size)
        boxes, labels, dropped = pad_objects(boxes / np.float32(c.image_size), labels, c.max_boxes)
        return {"image": c.normalization(image), "boxes": boxes, "labels": labels, "dropped": dropped}

    def __call__(self, batch_index: int, positions: np.ndarray) -> dict[str, Any]:
        n = len(self._shard)
        elements, skipped, dropped = [], [], []
        for k, pos in enumerate(positions):
            index = batch_index * len(positions) + k  # position in the stream
            epoch = index // n
            # A failed image's slot goes to the next record of the epoch's order that loads,
            # with an augmentation draw of its own (the slot's stream position in its seed).
            for attempt in range(n):
                pos_k = int(pos) if attempt == 0 else int(self._order[epoch * n + (index + attempt) % n])
                record_index = int(self._shard[pos_k])
                try:
                    element = self._element(record_index, epoch, *((index,) if attempt else ()))
                    break
                except ImageLoadError as e:
                    if self._config.strict:
                        raise
                    skipped.append((record_index, str(e)))
            else:
                raise ImageLoadError(f"none of the {n} images of this host's shard loads")
            if element["dropped"]:
                dropped.append((record_index, int(element["dropped"])))
            elements.append(element)
        batch: dict[str, Any] = {k: np.stack([e[k] for e in elements]) for k in elements[0] if k != "dropped"}
        batch["events"] = {"skipped": skipped, "dropped": dropped}
        return batch


class _Batches(grain.IterDataset):
    """The training batches as this process receives them (see :class:`_BatchesIterator`)."""

    def __init__(self, parent: grain.IterDataset, source_name: str, max_boxes: int):
        super().__init__(parent)
        self._source_name = source_name
        self._max_boxes = max_boxes

    def __iter__(self) -> grain.DatasetIterator:
        return _BatchesIterator(self._parent.__iter__(), self._source_name, self._max_boxes)


class _BatchesIterator(grain.DatasetIterator):
    """Warns, with running counts, of each batch's failed images and dropped objects (its
    ``"events"`` entry, which it removes); its state is grain's under ``"batch_stream"``."""

    def __init__(self, parent: grain.DatasetIterator, source_name: str, max_boxes: int):
        super().__init__(parent)
        self._source_name = source_name
        self._max_boxes = max_boxes
        self.skipped_images = 0
        self.dropped_objects = 0

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._parent)
        events = batch.pop("events")
        for record_index, error in events["skipped"]:
            self.skipped_images += 1
            logger.warning(
                "%s: skipping record #%d of the source (the next record that loads takes its slot): %s "
                "(%d image(s) skipped so far)",
                self._source_name, record_index, error, self.skipped_images,
            )  # fmt: skip
        for record_index, count in events["dropped"]:
            self.dropped_objects += count
            logger.warning(
                "%s: record #%d has more than max_boxes=%d objects; dropped %d "
                "(%d object(s) dropped so far)",
                self._source_name, record_index, self._max_boxes, count, self.dropped_objects,
            )  # fmt: skip
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"batch_stream": self._parent.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a position from :meth:`get_state`. A position without the
        ``"batch_stream"`` key was saved by the earlier pipeline that counted images
        (``{"next_index": images}``), not batches: read here it would silently start at
        another batch, so it is refused."""
        if set(state) != {"batch_stream"}:
            raise ValueError(
                f"this data position ({json.dumps(state)[:120]}) was not saved by this training "
                "pipeline: positions saved before batches were built in the worker processes "
                "count images, not batches. Resume that run with the version that started it"
            )
        self._parent.set_state(state["batch_stream"])


def train_dataset(
    source: Source,
    config: PipelineConfig,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """The training input pipeline of this host (see the module docstring).

    Args:
      source: the records.
      config: pipeline settings.
      process_index, process_count: this host's shard; default ``jax.process_index()``
        and ``jax.process_count()``.

    Returns:
      A grain ``IterDataset``; ``iter()`` it for a ``DatasetIterator`` with
      ``get_state``/``set_state``. Batches: ``'image'`` [B, S, S, 3] float32,
      ``'boxes'`` [B, G, 4] float32 normalised xyxy, ``'labels'`` [B, G] int32; with
      ``config.canvas``: ``'image'`` [B, C, C, 3] uint8 canvases, ``'size'`` [B, 2] int32.
      With ``num_workers > 0`` call the iterator's ``close()`` when done (grain's advice:
      it stops the worker processes and frees their shared memory).
    """
    pi, pc = _host(process_index, process_count)
    shard = shard_indices(len(source), pi, pc)
    if len(shard) == 0:
        raise ValueError(f"{source.name}: host {pi} of {pc} has no records ({len(source)} in all)")
    order = grain.MapDataset.range(len(shard)).shuffle(seed=config.seed).repeat(config.num_epochs)
    loader = _TrainLoader(source.records, shard, order, config)
    ds = order.batch(config.batch_size, drop_remainder=True).map_with_index(loader)
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.worker_buffer_size)
    )
    if config.num_workers > 0:
        _allow_grain_workers()
        _warn_if_shared_memory_is_short(config)
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=config.num_workers, per_worker_buffer_size=config.worker_buffer_size
            )
        )
    return _Batches(it, source.name, config.max_boxes)


def _warn_if_shared_memory_is_short(config: PipelineConfig, shm_dir: str = "/dev/shm") -> None:
    """Warn when ``shm_dir`` has less room than the workers' batches may hold at once.

    Each worker keeps up to ``worker_buffer_size`` finished batches for this process in
    shared memory, plus the one it is handing over; a container's default
    ``/dev/shm`` (Docker: 64 MB) is far smaller than that for 300-512 px images, and
    running out can end a worker with a bus error rather than a message.
    """
    side = config.canvas or config.image_size
    image_bytes = side * side * 3 * (1 if config.canvas else 4)
    need = (config.worker_buffer_size + 1) * config.num_workers * config.batch_size * image_bytes
    try:
        free = shutil.disk_usage(shm_dir).free
    except OSError:  # no such folder (not Linux): nothing to check
        return
    if free < need:
        logger.warning(
            "%s has %.0f MB free, and %d workers may hold up to %.0f MB of batches there "
            "(worker_buffer_size=%d + 1 batches of %d images of %dx%d each): a worker that runs "
            "out may die with a bus error. Give the container more shared memory (docker run "
            "--shm-size=...) or use fewer workers.",
            shm_dir, free / 2**20, config.num_workers, need / 2**20, config.worker_buffer_size,
            config.batch_size, side, side,
        )  # fmt: skip


class _EvalLoader:
    """Padded position -> one eval element (runs in workers)."""

    def __init__(self, records: Sequence[Record], shard: np.ndarray, config: PipelineConfig):
        self._records = records
        self._shard = shard
        self._config = config

    def _blank(self) -> dict[str, np.ndarray]:
        c = self._config
        return {
            "image": np.zeros((c.image_size, c.image_size, 3), np.float32),
            "boxes": np.zeros((c.max_boxes, 4), np.float32),
            "labels": np.zeros((c.max_boxes,), np.int32),
            "difficult": np.zeros((c.max_boxes,), bool),
            "valid": np.bool_(False),
            "index": np.int32(-1),
            "image_size": np.zeros((2,), np.int32),
        }

    def __call__(self, pos: int) -> dict[str, np.ndarray]:
        c = self._config
        if pos >= len(self._shard):
            return self._blank()
        record_index = int(self._shard[pos])
        record = self._records[record_index]
        try:
            image = load_image(record)
        except ImageLoadError as e:
            if c.strict:
                raise
            logger.warning("skipping eval record #%d (marked not valid): %s", record_index, e)
            out = self._blank()
            out["index"] = np.int32(record_index)
            return out
        image, boxes, labels = resize(image, record.boxes, record.labels, size=c.image_size)
        boxes, labels, difficult, dropped = pad_objects(
            boxes / np.float32(c.image_size), labels, c.max_boxes, record.difficult
        )
        if dropped:
            logger.warning(
                "eval record #%d has %d objects, more than max_boxes=%d: the batch carries the "
                "first %d (evaluate against the source's records)",
                record_index, record.num_objects, c.max_boxes, c.max_boxes,
            )  # fmt: skip
        return {
            "image": c.normalization(image),
            "boxes": boxes,
            "labels": labels,
            "difficult": difficult,
            "valid": np.bool_(True),
            "index": np.int32(record_index),
            "image_size": np.asarray([record.height, record.width], np.int32),
        }


def eval_dataset(
    source: Source,
    config: PipelineConfig,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """One pass over this host's records in order, resized and normalised, never augmented.

    Every host yields the same number of batches (``ceil(ceil(N / hosts) / B)``), the
    tail padded. Batch keys: ``'image'`` [B, S, S, 3] float32, ``'boxes'`` [B, G, 4]
    normalised xyxy, ``'labels'`` [B, G] int32, ``'difficult'`` [B, G] bool (all objects
    are kept, flagged), ``'valid'`` [B] bool, ``'index'`` [B] int32 record index (-1:
    padding), ``'image_size'`` [B, 2] int32 original (height, width). An image that
    fails to load gives ``valid=False`` with its index (strict mode raises).
    """
    pi, pc = _host(process_index, process_count)
    shard = shard_indices(len(source), pi, pc)
    per_host = math.ceil(len(source) / pc)
    total = math.ceil(per_host / config.batch_size) * config.batch_size
    ds = grain.MapDataset.range(total).map(_EvalLoader(source.records, shard, config))
    it = ds.batch(config.batch_size).to_iter_dataset(
        grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=2)
    )
    if config.num_workers > 0:
        _allow_grain_workers()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=config.num_workers, per_worker_buffer_size=2)
        )
    return it
