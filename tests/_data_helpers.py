"""Tiny on-disk datasets for the data tests (VOCdevkit and COCO JSON in tmp_path)."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image


def write_jpeg(path: str, width: int, height: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)


def voc_xml(width: int, height: int, objects: list[tuple[str, tuple, int]]) -> str:
    """objects: (name, (xmin, ymin, xmax, ymax) 1-based, difficult)."""
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return (
        f"<annotation><folder>VOC</folder><filename>x.jpg</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>"
    )


def make_voc(root: str, images: dict[str, dict[str, tuple]], split: str = "trainval") -> str:
    """images: {year: {stem: (width, height, objects)}}; returns the VOCdevkit root."""
    for year, stems in images.items():
        base = os.path.join(root, f"VOC{year}")
        for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        with open(os.path.join(base, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("".join(f"{s}\n" for s in stems))
        for k, (stem, (w, h, objects)) in enumerate(stems.items()):
            with open(os.path.join(base, "Annotations", f"{stem}.xml"), "w") as f:
                f.write(voc_xml(w, h, objects))
            write_jpeg(os.path.join(base, "JPEGImages", f"{stem}.jpg"), w, h, seed=k)
    return root


def make_coco(root: str, data: dict, images: bool = True) -> tuple[str, str]:
    """Write ``data`` as instances.json and a JPEG per image entry; returns (json, image dir)."""
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    if images:
        for k, img in enumerate(data["images"]):
            write_jpeg(os.path.join(image_dir, img["file_name"]), img["width"], img["height"], seed=k)
    path = os.path.join(root, "instances.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path, image_dir


def tiny_coco_dict() -> dict:
    """3 images, non-contiguous category ids (3, 7, 12), one crowd box, one empty image."""
    return {
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 20, "file_name": "b.jpg", "width": 32, "height": 32},
            {"id": 30, "file_name": "c.jpg", "width": 24, "height": 36},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2, 3, 10, 5], "iscrowd": 0, "area": 50},
            {"id": 2, "image_id": 10, "category_id": 12, "bbox": [0, 0, 40, 30], "iscrowd": 1, "area": 1200},
            {"id": 3, "image_id": 20, "category_id": 3, "bbox": [5.5, 6.5, 20, 10], "iscrowd": 0, "area": 200},
            {"id": 4, "image_id": 20, "category_id": 12, "bbox": [1, 1, 4, 4], "iscrowd": 0, "area": 16},
        ],
        "categories": [
            {"id": 12, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"},
        ],
    }
