"""Check a dataset before training on it: read every annotation, decode every image.

:func:`validate_data` builds the train and eval sources of a ``data`` config as training
would (the same readers and box policies, so a reader's error is reported as training
would meet it; every one of them, not only the first), then decodes every image and
gathers what it found into a :class:`SourceReport` per split: counts (images, objects, objects per class, difficult or
crowd objects, images without objects, boxes clipped to the image or dropped) and the
problems, each naming its file. ``launch.py validate`` prints the reports.

A problem is something training cannot use: an annotation a reader rejects (malformed
file, unknown class, duplicate id, box far outside its image ...), or an image that is
missing, does not decode, or whose size differs from its annotation's (training would skip
it, evaluation would count its objects as missed). Clipped boxes and boxes that the COCO
reader drops (training drops them too) are counted, not problems.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import re
from typing import Callable

from ssd_jax.data.config import DataConfig
from ssd_jax.data.images import ImageLoadError, load_image
from ssd_jax.data.records import Source

_CLIPPED = re.compile(r": (\d+) box\(es\) clipped")


@dataclasses.dataclass
class SourceReport:
    """What :func:`validate_data` found in one split (``split``: ``train`` or ``eval``)."""

    split: str
    name: str = ""
    images: int = 0
    objects: int = 0
    per_class: dict[str, int] = dataclasses.field(default_factory=dict)
    difficult: int = 0
    without_objects: int = 0
    clipped_boxes: int = 0
    dropped_boxes: int = 0
    decoded: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """The report as text: counts, objects per class, then each problem."""
        head = f"{self.split}: {self.name or 'not read'}"
        if not self.name:
            return "\n".join([head, *(f"  problem: {p}" for p in self.problems)])
        lines = [head,
                 f"  images {self.images} (decoded {self.decoded}), objects {self.objects} "
                 f"({self.difficult} difficult/crowd), images without objects {self.without_objects}",
                 f"  boxes clipped to the image {self.clipped_boxes}, dropped {self.dropped_boxes}"]
        width = max((len(c) for c in self.per_class), default=0)
        lines += [f"    {c.ljust(width)}  {n}" for c, n in self.per_class.items()]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


class _Capture(logging.Handler):
    """Collects the readers' log records about boxes (clipped, dropped)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.clipped = 0
        self.dropped: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("dropping invalid box: "):
            self.dropped.append(message[len("dropping invalid box: "):])
        elif (m := _CLIPPED.search(message)) is not None:
            self.clipped += int(m.group(1))


def _count(report: SourceReport, source: Source) -> None:
    report.name = source.name
    report.images = len(source)
    counts = collections.Counter()
    for r in source.records:
        counts.update(int(label) for label in r.labels)
        report.objects += r.num_objects
        report.difficult += int(r.difficult.sum())
        report.without_objects += int(r.num_objects == 0)
    report.per_class = {name: counts.get(i + 1, 0) for i, name in enumerate(source.class_names)}


def _decode_all(report: SourceReport, source: Source, workers: int, progress: Callable[[int], None] | None) -> None:
    def check(record):
        try:
            load_image(record)
            return None
        except ImageLoadError as e:
            return str(e)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:  # decoders release the GIL
        for k, problem in enumerate(pool.map(check, source.records), 1):
            if problem is None:
                report.decoded += 1
            else:
                report.problems.append(problem)
            if progress is not None:
                progress(k)


def _read(data: DataConfig, split: str, report: SourceReport) -> Source | None:
    """Build the ``split`` source as training would, collecting the readers' problems and
    box counts into ``report``; None when the annotations cannot be read at all."""
    from ssd_jax import builders

    capture = _Capture()
    reader_log = logging.getLogger("ssd_jax.data.records")  # where the readers report boxes
    level = reader_log.level
    reader_log.addHandler(capture)
    reader_log.setLevel(logging.DEBUG)
    errors: list[str] = []
    try:  # missing images are found by decoding, one problem per record
        source = builders.build_source(data, split, errors=errors, check_images=False)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        source = None
        errors.append(f"the annotations cannot be read: {e.args[0] if isinstance(e, KeyError) else e}")
    finally:
        reader_log.removeHandler(capture)
        reader_log.setLevel(level)
    report.problems.extend(errors)
    report.clipped_boxes, report.dropped_boxes = capture.clipped, len(capture.dropped)
    return source


def validate_data(data: DataConfig, *, workers: int | None = None,
                  progress: Callable[[str, int, int], None] | None = None) -> list[SourceReport]:
    """Reports for the train and eval splits of ``data`` (one report when both are the
    same files). Every problem is reported, not only the first: records a reader rejects
    are left out of the counts. ``progress(split, done, total)`` is called while images
    decode."""
    workers = workers or min(16, os.cpu_count() or 1)
    train_report, eval_report = SourceReport("train"), SourceReport("eval")
    train, evaluation = _read(data, "train", train_report), _read(data, "eval", eval_report)
    paths = lambda source: None if source is None else [r.image_path for r in source.records]  # noqa: E731
    same = paths(train) == paths(evaluation) and train_report.problems == eval_report.problems
    if same:
        train_report.split = "train+eval"
    splits = [(train_report, train)] if same else [(train_report, train), (eval_report, evaluation)]
    for report, source in splits:
        if source is None:
            continue
        _count(report, source)
        _decode_all(report, source, workers,
                    None if progress is None else (lambda done, s=report.split, n=len(source): progress(s, done, n)))
    return [report for report, _ in splits]
