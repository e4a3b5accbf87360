"""PASCAL VOC reader: a VOCdevkit folder -> :class:`~ssd_jax.data.records.Source`.

Layout: ``<root>/VOC<year>/ImageSets/Main/<split>.txt`` lists image stems,
``Annotations/<stem>.xml`` holds the objects, ``JPEGImages/<stem>.jpg`` the image.
Several (year, split) pairs concatenate in the order given (the usual "07+12 trainval").

Coordinates: VOC's ``xmin..xmax`` are 1-based *inclusive pixel indices*. We convert to
0-based continuous coordinates, where pixel ``i`` (1-based) spans ``[i - 1, i]``:
``(xmin - 1, ymin - 1, xmax, ymax)``. A box over the whole image becomes
``(0, 0, width, height)`` and normalises to exactly ``[0, 1]``. (ssd.pytorch subtracts
1 from all four coordinates, which makes every box one pixel narrower and shifts its
right/bottom edge; with our convention width = ``xmax - xmin + 1`` pixels, as VOC's
own devkit counts it.)
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Sequence

from ssd_jax.data.records import (
    InvalidBoxPolicy,
    Record,
    Source,
    check_images_exist,
    concat_sources,
    make_record,
)

#: The 20 PASCAL VOC classes; label ``l`` is ``VOC_CLASSES[l - 1]``.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

#: The usual training set "VOC07+12 trainval" and test set "VOC07 test".
VOC0712_TRAINVAL: tuple[tuple[str, str], ...] = (("2007", "trainval"), ("2012", "trainval"))
VOC07_TEST: tuple[tuple[str, str], ...] = (("2007", "test"),)


def _text(node: ET.Element, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{where}: missing <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, where: str) -> float:
    text = _text(node, tag, where)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: <{tag}> is {text!r}, not a number") from None


def parse_annotation(
    xml_path: str,
    image_path: str,
    image_id: str,
    class_names: Sequence[str],
    invalid_boxes: InvalidBoxPolicy = "raise",
) -> Record:
    """Parse one VOC XML file into a :class:`Record` (boxes converted as the module says)."""
    where = f"{xml_path} (record {image_id!r})"
    if os.path.getsize(xml_path) == 0:
        raise ValueError(f"{where}: annotation file is empty")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{where}: not valid XML ({e})") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"{where}: missing <size>")
    width = int(_number(size, "width", where))
    height = int(_number(size, "height", where))
    index = {name: i + 1 for i, name in enumerate(class_names)}
    boxes, labels, difficult, names = [], [], [], []
    for k, obj in enumerate(root.iter("object")):
        owhere = f"{where} object {k}"
        name = _text(obj, "name", owhere)
        if name not in index:
            raise ValueError(
                f"{owhere}: class {name!r} is not in the class list ({', '.join(class_names)})"
            )
        bnd = obj.find("bndbox")
        if bnd is None:
            raise ValueError(f"{owhere} ({name}): missing <bndbox>")
        x0, y0, x1, y1 = (_number(bnd, t, owhere) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((x0 - 1.0, y0 - 1.0, x1, y1))
        labels.append(index[name])
        diff = obj.find("difficult")
        flag = "0" if diff is None else (diff.text or "0").strip()
        if flag not in ("0", "1"):
            raise ValueError(f"{owhere} ({name}): <difficult> is {flag!r}, expected 0 or 1")
        difficult.append(flag == "1")
        names.append(name)
    return make_record(
        image_path=image_path,
        boxes=boxes,
        labels=labels,
        difficult=difficult,
        height=height,
        width=width,
        image_id=image_id,
        annotation=xml_path,
        policy=invalid_boxes,
        object_names=names,
    )


def voc_source(
    root: str,
    splits: Sequence[tuple[str, str]] = VOC0712_TRAINVAL,
    *,
    class_names: Sequence[str] = VOC_CLASSES,
    invalid_boxes: InvalidBoxPolicy = "raise",
    check_images: bool = True,
    errors: list[str] | None = None,
) -> Source:
    """Read VOC (year, split) pairs from a VOCdevkit folder and concatenate them.

    Args:
      root: the ``VOCdevkit`` folder (holding ``VOC2007``, ``VOC2012``, ...).
      splits: ``(year, split)`` pairs, e.g. ``(("2007", "trainval"), ("2012", "trainval"))``.
      class_names: the class list; an object of another class is an error.
      invalid_boxes: ``"raise"`` (default) or ``"drop"`` boxes outside the image or empty.
      check_images: check every image file exists now (cheap) rather than at load time.
      errors: a list to collect problems into instead of raising at the first one: a
        split whose image list is missing or empty, a missing or malformed annotation
        (each message names its file); the records concerned are skipped.

    Returns:
      A :class:`Source`; records keep all objects with their ``difficult`` flags
      (the pipeline decides whether training uses difficult objects). ``image_id`` is
      ``"<year>/<stem>"``.
    """
    if not splits:
        raise ValueError("voc_source: no (year, split) pairs given")

    def problem(error: Exception) -> None:
        if errors is None:
            raise error
        errors.append(str(error))

    parts = []
    for year, split in splits:
        base = os.path.join(root, f"VOC{year}")
        list_file = os.path.join(base, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(list_file):
            problem(FileNotFoundError(f"VOC {year} {split}: image list {list_file} not found"))
            continue
        with open(list_file) as f:
            stems = [line.split()[0] for line in f if line.strip()]
        if not stems:
            problem(ValueError(f"VOC {year} {split}: image list {list_file} is empty"))
            continue
        records = []
        for stem in stems:
            xml_path = os.path.join(base, "Annotations", f"{stem}.xml")
            image_path = os.path.join(base, "JPEGImages", f"{stem}.jpg")
            try:
                if not os.path.isfile(xml_path):
                    raise FileNotFoundError(f"{list_file} lists {stem!r} but its annotation {xml_path} is missing")
                records.append(parse_annotation(xml_path, image_path, f"{year}/{stem}", class_names, invalid_boxes))
            except (ValueError, FileNotFoundError) as e:
                problem(e)
        name = f"voc {year}/{split}"
        if check_images:
            check_images_exist(records, name)
        parts.append(Source(records=tuple(records), class_names=tuple(class_names), name=name))
    if not parts:  # only when collecting errors
        return Source(records=(), class_names=tuple(class_names),
                      name="voc " + "+".join(f"{y}/{s}" for y, s in splits))
    return concat_sources(parts)
