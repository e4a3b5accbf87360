"""The record format every source produces, the source container, and annotation checks.

A :class:`Record` describes one image: where it is, its size, and its objects as
``xyxy`` boxes in **pixels** with 0-based continuous coordinates (the image spans
``[0, width] x [0, height]``; a box that covers the whole image is
``(0, 0, width, height)``). Labels are 1..C (0 is background/padding and never appears
in a record). A :class:`Source` is an ordered, immutable list of records plus the class
names; ``class_names[l - 1]`` names label ``l``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Iterable, Literal, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: What a source does with an invalid box (outside the image, or xmax <= xmin):
#: ``"raise"`` a ValueError naming file, record and box; ``"drop"`` it with a warning.
InvalidBoxPolicy = Literal["raise", "drop"]

#: Boxes may stick out of the image by at most this many pixels (rounding in the
#: annotation tools); they are clipped. Further out is an invalid box.
OUTSIDE_TOLERANCE_PX = 1.0


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
    """One annotated image.

    Attributes:
      image_path: absolute path of the image file.
      boxes: ``[N, 4]`` float32 ``(xmin, ymin, xmax, ymax)`` pixels, 0-based continuous,
        each with ``0 <= xmin < xmax <= width`` and ``0 <= ymin < ymax <= height``.
      labels: ``[N]`` int32 in ``1..C``.
      difficult: ``[N]`` bool; VOC's difficult flag (COCO crowd boxes when a COCO source
        keeps them). Training drops these unless told otherwise; evaluators ignore them.
      height: image height in pixels, from the annotation.
      width: image width in pixels, from the annotation.
      image_id: the dataset's own id: VOC ``"2007/000005"`` (year/stem), COCO's int id.
      annotation: the file the objects came from (for error messages).
      area: ``[N]`` float64 object areas of the annotation (COCO's ``area``, the segment's,
        which decides the small/medium/large split of the COCO metric), or None: the box
        areas.
    """

    image_path: str
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    height: int
    width: int
    image_id: int | str
    annotation: str = ""
    area: np.ndarray | None = None

    @property
    def num_objects(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """An ordered list of records and the class names they use.

    Attributes:
      records: the records, in a fixed order (the order the pipeline indexes).
      class_names: ``C`` names; label ``l`` is ``class_names[l - 1]``.
      name: a label for logs and errors (e.g. ``"voc 2007/trainval+2012/trainval"``).
      category_ids: for COCO-style sources, the dataset's category id of each label
        (``category_ids[l - 1]``), needed to write COCO results; ``None`` otherwise.
    """

    records: tuple[Record, ...]
    class_names: tuple[str, ...]
    name: str = ""
    category_ids: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    @property
    def num_classes(self) -> int:
        """``C``, the number of object classes (the model predicts ``C + 1``)."""
        return len(self.class_names)

    def label_to_category_id(self, labels: np.ndarray) -> np.ndarray:
        """``[...]`` labels 1..C -> ``[...]`` the dataset's category ids (COCO results)."""
        if self.category_ids is None:
            raise ValueError(f"source {self.name!r} has no category ids (not a COCO source)")
        return labels_to_category_ids(labels, self.category_ids)

    def category_id_to_label(self, category_ids: np.ndarray) -> np.ndarray:
        """``[...]`` the dataset's category ids -> ``[...]`` labels 1..C."""
        if self.category_ids is None:
            raise ValueError(f"source {self.name!r} has no category ids (not a COCO source)")
        lookup = {c: i + 1 for i, c in enumerate(self.category_ids)}
        ids = np.asarray(category_ids)
        try:
            return np.vectorize(lookup.__getitem__, otypes=[np.int32])(ids)
        except KeyError as e:
            raise ValueError(f"unknown category id {e.args[0]} in source {self.name!r}") from None


def concat_sources(sources: Sequence[Source], name: str | None = None) -> Source:
    """Concatenate sources that share the class list (e.g. VOC 07+12 trainval)."""
    if not sources:
        raise ValueError("concat_sources: no sources given")
    first = sources[0]
    for s in sources[1:]:
        if s.class_names != first.class_names or s.category_ids != first.category_ids:
            raise ValueError(
                f"cannot concatenate {first.name!r} and {s.name!r}: different class lists"
            )
    records = tuple(r for s in sources for r in s.records)
    return Source(
        records=records,
        class_names=first.class_names,
        name=name if name is not None else "+".join(s.name for s in sources),
        category_ids=first.category_ids,
    )


def labels_to_category_ids(labels: np.ndarray, category_ids: Sequence[int]) -> np.ndarray:
    """``[...]`` labels 1..C -> ``[...]`` the dataset's category ids (``category_ids[l - 1]``)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 1 or labels.max() > len(category_ids)):
        raise ValueError(f"labels must be in 1..{len(category_ids)}, got {labels}")
    return np.asarray(category_ids, np.int64)[labels - 1]


def check_boxes(
    boxes: np.ndarray,
    width: int,
    height: int,
    *,
    where: str,
    policy: InvalidBoxPolicy,
    object_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Validate one image's pixel boxes; returns a keep mask ``[N]`` bool.

    Boxes sticking out by at most :data:`OUTSIDE_TOLERANCE_PX` are clipped in place;
    a box further out, with ``xmax <= xmin`` / ``ymax <= ymin``, or not finite is
    invalid: ``policy="raise"`` raises ``ValueError`` naming ``where`` (file + record)
    and the box, ``"drop"`` logs a warning and marks it dropped.
    """
    tol = OUTSIDE_TOLERANCE_PX
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(boxes).all(axis=1)
        inverted = ~((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
        outside = (
            (boxes[:, 0] < -tol) | (boxes[:, 1] < -tol)
            | (boxes[:, 2] > width + tol) | (boxes[:, 3] > height + tol)
        )  # fmt: skip
        ok = finite & ~inverted & ~outside
        before = boxes[ok].copy()
        boxes[ok] = np.clip(boxes[ok], 0, np.asarray([width, height, width, height], boxes.dtype))
        clipped = int(np.any(boxes[ok] != before, axis=1).sum())
        if clipped:  # within the tolerance: a rounding of the annotation tool, not an error
            logger.debug("%s: %d box(es) clipped to the %dx%d image", where, clipped, width, height)
        empty_after_clip = ok & ~((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    keep = ok & ~empty_after_clip
    for i in np.flatnonzero(~keep):  # only the bad boxes take the slow path
        x0, y0, x1, y1 = boxes[i]
        if not finite[i]:
            problem = "has non-finite coordinates"
        elif inverted[i]:
            problem = "is empty or inverted (needs xmin < xmax and ymin < ymax)"
        elif outside[i]:
            problem = f"lies outside the {width}x{height} image"
        else:
            problem = f"is empty once clipped to the {width}x{height} image"
        what = f" ({object_names[i]})" if object_names is not None else ""
        msg = (
            f"{where}: object {i}{what} box (xmin, ymin, xmax, ymax) = "
            f"({x0:g}, {y0:g}, {x1:g}, {y1:g}) pixels {problem}"
        )
        if policy == "raise":
            raise ValueError(msg + " [pass invalid_boxes='drop' to skip such boxes]")
        logger.warning("dropping invalid box: %s", msg)
    return keep


def check_images_exist(records: Iterable[Record], source_name: str) -> None:
    """Raise ``FileNotFoundError`` listing (up to 5 of) the records whose image is missing."""
    missing = [r for r in records if not os.path.isfile(r.image_path)]
    if missing:
        listed = "; ".join(
            f"record {r.image_id!r} (annotation {r.annotation}): {r.image_path}"
            for r in missing[:5]
        )
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"{source_name}: {len(missing)} image file(s) missing: {listed}{more} "
            "[pass check_images=False to defer this to load time]"
        )


def make_record(
    *,
    image_path: str,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    difficult: Sequence[bool],
    height: int,
    width: int,
    image_id: int | str,
    annotation: str,
    policy: InvalidBoxPolicy,
    object_names: Sequence[str] | None = None,
    area: Sequence[float] | None = None,
) -> Record:
    """Build a :class:`Record`, validating (and clipping) its boxes with :func:`check_boxes`
    (``area``, one per box, follows the boxes that are kept)."""
    where = f"{annotation} (record {image_id!r})"
    if height <= 0 or width <= 0:
        raise ValueError(f"{where}: image size {width}x{height} must be positive")
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    keep = check_boxes(b, width, height, where=where, policy=policy, object_names=object_names)
    return Record(
        image_path=image_path,
        boxes=b[keep],
        labels=np.asarray(labels, np.int32).reshape(-1)[keep],
        difficult=np.asarray(difficult, bool).reshape(-1)[keep],
        height=int(height),
        width=int(width),
        image_id=image_id,
        annotation=annotation,
        area=None if area is None else np.asarray(area, np.float64).reshape(-1)[keep],
    )
