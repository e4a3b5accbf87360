"""COCO-format reader: ``instances_*.json`` + image folder -> :class:`~ssd_jax.data.records.Source`.

Works for any dataset in COCO detection JSON (the built-in dataset is written this way).
Category ids (COCO's run 1..90 with gaps) map to contiguous labels 1..C in increasing id
order; :attr:`Source.category_ids` maps back (needed to write COCO results). Boxes
``[x, y, w, h]`` (pixels, 0-based continuous) become ``(x, y, x + w, y + h)``.
Crowd annotations (``iscrowd=1``) are excluded, or kept flagged ``difficult`` (so
training drops them and evaluators can ignore them) with ``crowd="difficult"``.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Literal

from ssd_jax.data.records import InvalidBoxPolicy, Source, check_images_exist, make_record


def coco_source(
    annotation_file: str,
    image_dir: str,
    *,
    crowd: Literal["exclude", "difficult"] = "exclude",
    invalid_boxes: InvalidBoxPolicy = "raise",
    check_images: bool = True,
    keep_images_without_objects: bool = True,
    name: str | None = None,
    errors: list[str] | None = None,
) -> Source:
    """Read a COCO detection JSON.

    Args:
      annotation_file: the ``instances_<split>.json`` file.
      image_dir: folder the images' ``file_name`` entries are relative to.
      crowd: ``"exclude"`` crowd boxes, or keep them as ``difficult``.
      invalid_boxes: ``"raise"`` (default) or ``"drop"`` boxes outside the image / empty.
      check_images: check every image file exists now rather than at load time.
      keep_images_without_objects: keep images that have no (non-crowd) object.
      name: label for logs; defaults to the file name.
      errors: a list to collect the problems of single image entries and annotations into
        (each message names the file) instead of raising at the first one; the entries
        concerned are skipped. Problems of the file as a whole still raise.

    Returns:
      A :class:`Source` with one record per image in the JSON's ``images`` order;
      ``image_id`` is COCO's integer image id.
    """
    where = annotation_file
    if not os.path.isfile(annotation_file):
        raise FileNotFoundError(f"COCO annotation file {annotation_file} not found")
    if os.path.getsize(annotation_file) == 0:
        raise ValueError(f"{where}: annotation file is empty")
    try:
        with open(annotation_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or key not in data:
            raise ValueError(f"{where}: no {key!r} list (not a COCO detection file)")
    if not data["categories"]:
        raise ValueError(f"{where}: 'categories' is empty")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    category_ids = tuple(int(c["id"]) for c in categories)
    if len(set(category_ids)) != len(category_ids):
        raise ValueError(f"{where}: duplicate category ids {category_ids}")
    class_names = tuple(str(c["name"]) for c in categories)
    label_of = {cid: i + 1 for i, cid in enumerate(category_ids)}

    def problem(message: str) -> None:
        if errors is None:
            raise ValueError(f"{where}: {message}")
        errors.append(f"{where}: {message}")

    images = {}
    for img in data["images"]:
        missing = [key for key in ("id", "file_name", "width", "height") if key not in img]
        if missing:
            problem(f"image entry {img!r} has no {missing[0]!r}")
        elif img["id"] in images:
            problem(f"duplicate image id {img['id']!r}")
        elif not all(_is_number(img[k]) and img[k] > 0 for k in ("width", "height")):
            problem(f"image {img['id']!r} has size {img['width']!r}x{img['height']!r}, expected positive numbers")
        else:
            images[img["id"]] = img
    by_image = collections.defaultdict(list)
    annotation_ids = set()
    for ann in data["annotations"]:
        aid = ann.get("id")
        if aid in annotation_ids:  # pycocotools indexes annotations by id: a duplicate hides one
            problem(f"duplicate annotation id {aid!r}")
            continue
        annotation_ids.add(aid)
        bbox, area = ann.get("bbox"), ann.get("area")
        if ann.get("image_id") not in images:
            problem(f"annotation {aid} refers to unknown image id {ann.get('image_id')!r}")
        elif ann.get("category_id") not in label_of:
            problem(f"annotation {aid} (image {ann['image_id']}) has category id {ann.get('category_id')!r}, "
                    f"not in the categories {category_ids}")
        elif not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(_is_number, bbox)):
            problem(f"annotation {aid} has bbox {bbox!r}, expected [x, y, w, h] numbers")
        elif area is not None and not (_is_number(area) and area >= 0):
            problem(f"annotation {aid} has area {area!r}, expected a number >= 0")
        elif not (ann.get("iscrowd", 0) and crowd == "exclude"):
            by_image[ann["image_id"]].append(ann)

    records = []
    for image_id, img in images.items():
        anns = by_image.get(image_id, [])
        if not anns and not keep_images_without_objects:
            continue
        boxes = [
            (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3])
            for a in anns
        ]
        try:
            records.append(
                make_record(
                    image_path=os.path.join(image_dir, img["file_name"]),
                    boxes=boxes,
                    labels=[label_of[a["category_id"]] for a in anns],
                    difficult=[bool(a.get("iscrowd", 0)) for a in anns],
                    height=int(img["height"]),
                    width=int(img["width"]),
                    image_id=image_id,
                    annotation=annotation_file,
                    policy=invalid_boxes,
                    object_names=[f"annotation {a.get('id')}, {class_names[label_of[a['category_id']] - 1]}"
                                  for a in anns],
                    # the annotation's area (pycocotools' small/medium/large split), else the box's
                    area=[float(a["area"]) if a.get("area") is not None else float(a["bbox"][2]) * float(a["bbox"][3])
                          for a in anns],
                )
            )
        except ValueError as e:  # a box outside its image (invalid_boxes="raise")
            if errors is None:
                raise
            errors.append(str(e))
    name = name if name is not None else f"coco {os.path.basename(annotation_file)}"
    if check_images:
        check_images_exist(records, name)
    return Source(
        records=tuple(records), class_names=class_names, name=name, category_ids=category_ids
    )


def _is_number(value) -> bool:
    """A JSON number (not a boolean, not a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
