"""The ``data`` section of an experiment: which dataset, batch sizes, workers.

The same section also holds the augmentation's keys
(:class:`ssd_jax.data.transforms.AugmentConfig`).
"""

from __future__ import annotations

import dataclasses
import os

from ssd_jax.schema import Section

DATASETS = ("builtin", "voc", "coco")
#: The device path's canvas side for files of unknown size (``canvas_size=0`` off the
#: built-in set): VOC's images, at most 500 px, keep their full resolution.
CANVAS_SIDE = 512
_COCO_KEYS = ("coco_train_json", "coco_train_images", "coco_val_json", "coco_val_images")


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """Dataset and input-pipeline settings.

    Attributes:
      dataset: ``builtin`` (generated on first use), ``voc`` or ``coco`` (any COCO-format JSON).
      batch_size: the global batch, over all devices and hosts.
      max_boxes: object slots per image (more objects are dropped, with a warning).
      num_workers: grain worker processes (0: in the training process).
      augment: the SSD augmentation (its settings: ``AugmentConfig``); False: resize only.
      augment_on: where it runs: ``host`` (NumPy in the input pipeline, batches of finished
        float32 images), ``device`` (the pipeline only decodes into uint8 canvases of side
        ``canvas_size``; ``ssd_jax.data.device_augment`` augments, resizes and normalises
        inside the jitted train step) or ``auto``: ``device`` on a GPU or TPU, ``host`` on
        the CPU (see :func:`ssd_jax.builders.augment_on` for why).
      canvas_size: side of the device path's canvas (a multiple of 8); larger images are
        downscaled into it, aspect kept. 0: the built-in dataset's ``builtin_max_side``
        (rounded up to a multiple of 8), else 512 (VOC's images are at most 500 px, so
        they keep their full resolution for the crops' zoom-in). See :attr:`canvas_side`.
      use_difficult: train on objects flagged difficult (VOC) or crowd (COCO).
      cache_dir: where the built-in dataset is written ("" : the default cache folder).
      builtin_num_train, builtin_num_val, builtin_min_side, builtin_max_side: the built-in
        dataset's size and image sides.
      voc_root: folder holding ``VOCdevkit/VOC2007`` and ``VOC2012`` (or the ``VOC20xx`` folders).
      voc_train: training splits, ``"<year>/<set>"``; voc_test: the evaluation split(s).
      coco_train_json, coco_train_images, coco_val_json, coco_val_images: a COCO-format
        dataset, instances JSON and image folder per split.
    """

    dataset: str = "builtin"
    batch_size: int = 32
    max_boxes: int = 50
    num_workers: int = 0
    augment: bool = True
    augment_on: str = "auto"
    canvas_size: int = 0
    use_difficult: bool = False
    cache_dir: str = ""
    builtin_num_train: int = 5000
    builtin_num_val: int = 500
    builtin_min_side: int = 160
    builtin_max_side: int = 320
    voc_root: str = ""
    voc_train: tuple[str, ...] = ("2007/trainval", "2012/trainval")
    voc_test: tuple[str, ...] | str = "2007/test"
    coco_train_json: str = ""
    coco_train_images: str = ""
    coco_val_json: str = ""
    coco_val_images: str = ""

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"data.dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.batch_size < 1 or self.max_boxes < 1:
            raise ValueError(f"data.batch_size ({self.batch_size}) and data.max_boxes ({self.max_boxes}) must be positive")
        if self.augment_on not in ("auto", "host", "device"):
            raise ValueError(f"data.augment_on must be 'auto', 'host' or 'device', got {self.augment_on!r}")
        if self.canvas_size < 0 or self.canvas_size % 8:
            raise ValueError(f"data.canvas_size must be 0 (chosen from the dataset) or a positive multiple of 8, "
                             f"got {self.canvas_size}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.builtin_num_train < 1 or self.builtin_num_val < 1 or not 0 < self.builtin_min_side <= self.builtin_max_side:
            raise ValueError("data.builtin_num_train/num_val must be positive and 0 < builtin_min_side <= builtin_max_side")
        for split in (*self.voc_train, *self.voc_test_splits):
            if split.count("/") != 1:
                raise ValueError(f"VOC splits look like '2007/trainval', got {split!r}")
        if self.dataset == "voc" and not self.voc_root:
            raise ValueError("data.dataset='voc' needs data.voc_root: --config.data.voc_root=/path/to/VOCdevkit")
        if self.dataset == "coco":
            for key in _COCO_KEYS:
                if not getattr(self, key):
                    raise ValueError(f"data.dataset='coco' needs data.{key}")

    @property
    def canvas_side(self) -> int:
        """The device path's canvas side: ``canvas_size``, or when 0 the dataset's."""
        if self.canvas_size:
            return self.canvas_size
        if self.dataset == "builtin":
            return -(-self.builtin_max_side // 8) * 8
        return CANVAS_SIDE

    @property
    def voc_test_splits(self) -> tuple[str, ...]:
        return (self.voc_test,) if isinstance(self.voc_test, str) else tuple(self.voc_test)

    def check_paths(self) -> None:
        """ValueError naming the key when a dataset path this config reads does not exist."""
        if self.dataset == "voc" and not os.path.isdir(self.voc_root):
            raise ValueError(f"data.voc_root {self.voc_root!r} is not a folder")
        if self.dataset == "coco":
            for key in _COCO_KEYS:
                if not os.path.exists(getattr(self, key)):
                    raise ValueError(f"data.{key} {getattr(self, key)!r} does not exist")
