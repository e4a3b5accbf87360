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

    images = {}
    for img in data["images"]:
        if img.get("id") in images:
            raise ValueError(f"{where}: duplicate image id {img.get('id')!r}")
        for key in ("id", "file_name", "width", "height"):
            if key not in img:
                raise ValueError(f"{where}: image entry {img!r} has no {key!r}")
        images[img["id"]] = img
    by_image = collections.defaultdict(list)
    annotation_ids = set()
    for ann in data["annotations"]:
        aid = ann.get("id")
        if aid in annotation_ids:  # pycocotools indexes annotations by id: a duplicate hides one
            raise ValueError(f"{where}: duplicate annotation id {aid!r}")
        annotation_ids.add(aid)
        if ann.get("image_id") not in images:
            raise ValueError(
                f"{where}: annotation {aid} refers to unknown image id {ann.get('image_id')!r}"
            )
        if ann.get("category_id") not in label_of:
            raise ValueError(
                f"{where}: annotation {aid} (image {ann['image_id']}) has category id "
                f"{ann.get('category_id')!r}, not in the categories {category_ids}"
            )
        bbox = ann.get("bbox")
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            raise ValueError(f"{where}: annotation {aid} has bbox {bbox!r}, expected [x, y, w, h] numbers")
        area = ann.get("area")
        if area is not None and (isinstance(area, bool) or not isinstance(area, (int, float)) or not area >= 0):
            raise ValueError(f"{where}: annotation {aid} has area {area!r}, expected a number >= 0")
        if ann.get("iscrowd", 0) and crowd == "exclude":
            continue
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
                object_names=[f"annotation {a.get('id')}, {class_names[label_of[a['category_id']] - 1]}" for a in anns],
                # the annotation's area (pycocotools' small/medium/large split), else the box's
                area=[float(a["area"]) if a.get("area") is not None else float(a["bbox"][2]) * float(a["bbox"][3])
                      for a in anns],
            )
        )
    name = name if name is not None else f"coco {os.path.basename(annotation_file)}"
    if check_images:
        check_images_exist(records, name)
    return Source(
        records=tuple(records), class_names=class_names, name=name, category_ids=category_ids
    )
