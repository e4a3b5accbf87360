"""A built-in detection dataset that needs no download ("shapes on photos").

Objects of 10 classes (8 filled shapes and 2 glyphs drawn with Pillow's embedded font)
are composited onto crops of the sample photographs and textures that scikit-image
ships inside its wheel (only files on disk in ``skimage/data``; nothing is fetched).
Each image has 1-6 objects whose sides range from about 5% to 90% of the image's short
side, rotated up to 25 degrees, filled with a solid colour or a photo texture; later
objects may hide up to half of earlier ones (boxes are the tight boxes of the visible
pixels). Every image is a pure function of ``(seed, split, index)``, so the files are
the same whatever the number of generator processes.

The dataset is written once, as COCO JSON + JPEG files, to
``<cache_dir>/<spec.dirname>`` (default cache dir ``~/.cache/ssd_jax``): generation
happens in a temporary sibling folder that is renamed into place at the end, so an
interrupted run never leaves a folder that looks complete. It is then read through
:func:`ssd_jax.data.coco.coco_source`, the same path as any COCO-format dataset.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from ssd_jax.data.coco import coco_source
from ssd_jax import runtime
from ssd_jax.data.records import Source

#: Class names; label ``l`` is ``BUILTIN_CLASSES[l - 1]`` (COCO category id ``l``).
BUILTIN_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent",
    "letter_a", "digit_7",
)  # fmt: skip

#: scikit-image sample images used as backgrounds and textures (all in its wheel).
_PHOTOS: tuple[str, ...] = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png", "hubble_deep_field.jpg",
    "ihc.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png",
    "retina.jpg", "rocket.jpg", "text.png",
)  # fmt: skip

_SPLIT_CODE = {"train": 0, "val": 1}
_CANON = 128  # side of the canonical class masks


@dataclasses.dataclass(frozen=True)
class BuiltinSpec:
    """What to generate. The defaults are the full dataset the main job trains on.

    Attributes:
      seed: generation seed (different seeds give different datasets).
      num_train, num_val: images per split.
      min_side, max_side: image width and height are drawn from this range (pixels).
      min_objects, max_objects: objects per image.
      min_frac, max_frac: object side range, as a fraction of the image's short side.
      max_hidden: the largest fraction of an object later objects may cover.
      jpeg_quality: JPEG quality of the written images.
    """

    seed: int = 0
    num_train: int = 5000
    num_val: int = 500
    min_side: int = 160
    max_side: int = 320
    min_objects: int = 1
    max_objects: int = 6
    min_frac: float = 0.05
    max_frac: float = 0.9
    max_hidden: float = 0.5
    jpeg_quality: int = 90

    #: Bump when the generator's output changes, so old caches are not reused.
    VERSION = 1

    @property
    def dirname(self) -> str:
        return (
            f"builtin_shapes_v{self.VERSION}_seed{self.seed}_n{self.num_train}-{self.num_val}"
            f"_px{self.min_side}-{self.max_side}_obj{self.min_objects}-{self.max_objects}"
            f"_f{self.min_frac:g}-{self.max_frac:g}_h{self.max_hidden:g}_q{self.jpeg_quality}"
        )

    def num_images(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val}[split]


# ---------------------------------------------------------------------------- assets


def _skimage_data_dir() -> str:
    try:
        import skimage
    except ImportError:
        raise ImportError(
            "the built-in dataset draws on scikit-image's sample photos: pip install scikit-image"
        ) from None
    return os.path.join(os.path.dirname(skimage.__file__), "data")


def _class_mask(name: str) -> Any:
    """The canonical ``_CANON``-square 'L' mask of a class (255 = object)."""
    from PIL import Image, ImageDraw, ImageFont

    n = _CANON
    im = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(im)
    c = n / 2

    def regular(k, r, phase=0.0):
        return [(c + r * math.cos(phase + 2 * math.pi * i / k), c + r * math.sin(phase + 2 * math.pi * i / k)) for i in range(k)]

    if name == "circle":
        d.ellipse([0, 0, n - 1, n - 1], fill=255)
    elif name == "square":
        d.rectangle([0, 0, n - 1, n - 1], fill=255)
    elif name == "triangle":
        d.polygon([(c, 0), (n - 1, n - 1), (0, n - 1)], fill=255)
    elif name == "star":
        pts = []
        for i in range(10):
            r = c if i % 2 == 0 else 0.4 * c
            a = -math.pi / 2 + math.pi * i / 5
            pts.append((c + r * math.cos(a), c + r * math.sin(a)))
        d.polygon(pts, fill=255)
    elif name == "cross":
        t = 0.2 * n
        d.rectangle([c - t, 0, c + t, n - 1], fill=255)
        d.rectangle([0, c - t, n - 1, c + t], fill=255)
    elif name == "ring":
        d.ellipse([0, 0, n - 1, n - 1], fill=255)
        d.ellipse([0.28 * n, 0.28 * n, 0.72 * n, 0.72 * n], fill=0)
    elif name == "hexagon":
        d.polygon(regular(6, c), fill=255)
    elif name == "crescent":
        d.ellipse([0, 0, n - 1, n - 1], fill=255)
        d.ellipse([0.35 * n, -0.05 * n, 1.3 * n, 0.95 * n], fill=0)
    elif name in ("letter_a", "digit_7"):
        font = ImageFont.load_default(size=160)  # Pillow's embedded font: no file access
        text = "A" if name == "letter_a" else "7"
        big = Image.new("L", (240, 240), 0)
        ImageDraw.Draw(big).text((20, 0), text, fill=255, font=font)
        return big.crop(big.getbbox())
    else:
        raise ValueError(f"unknown built-in class {name!r}")
    return im.crop(im.getbbox())


@functools.lru_cache(maxsize=1)
def _assets() -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(photos as PIL RGB images, class masks as PIL 'L'); loaded once per process."""
    from PIL import Image

    data = _skimage_data_dir()
    photos = []
    for name in _PHOTOS:
        path = os.path.join(data, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"scikit-image sample image {path} is not installed (this scikit-image wheel "
                "does not ship it); the built-in dataset needs the bundled sample images"
            )
        with Image.open(path) as im:
            photos.append(im.convert("RGB"))
    return tuple(photos), tuple(_class_mask(n) for n in BUILTIN_CLASSES)


# ---------------------------------------------------------------------------- one image


def _photo_patch(rng: np.random.Generator, photos, width: int, height: int) -> np.ndarray:
    """A random crop of a random photo (PIL RGB), resized to ``[height, width, 3]`` uint8."""
    from PIL import Image

    photo = photos[int(rng.integers(len(photos)))]
    pw, ph = photo.size
    scale = rng.uniform(0.35, 1.0)
    ch = max(8, int(ph * scale))
    cw = int(np.clip(ch * (width / height) * rng.uniform(0.8, 1.25), 8, pw))
    ch = min(ch, ph)
    y0, x0 = int(rng.integers(ph - ch + 1)), int(rng.integers(pw - cw + 1))
    out = np.asarray(
        photo.resize((width, height), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch), reducing_gap=2.0)
    )
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.3:  # tint (the grey photos become coloured)
        out = np.clip(out * rng.uniform(0.6, 1.2, size=3), 0, 255).astype(np.uint8)
    return out


def generate_image(spec: BuiltinSpec, split: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw image ``index`` of ``split``; a pure function of ``(spec, split, index)``.

    Returns:
      image ``[H, W, 3]`` uint8, boxes ``[N, 4]`` float32 xyxy pixels (tight boxes of the
      visible pixels), labels ``[N]`` int32 in 1..10.
    """
    from PIL import Image

    photos, masks = _assets()
    rng = np.random.default_rng([spec.seed, _SPLIT_CODE[split], index])
    width = int(rng.integers(spec.min_side, spec.max_side + 1))
    height = int(rng.integers(spec.min_side, spec.max_side + 1))
    image = _photo_patch(rng, photos, width, height).astype(np.float32)
    short = min(width, height)
    n_wanted = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    full: list[np.ndarray] = []  # [H, W] bool: each placed object's own pixels
    visible: list[np.ndarray] = []  # [H, W] bool: what is still visible of it
    labels: list[int] = []
    for _ in range(n_wanted):
        label = int(rng.integers(len(BUILTIN_CLASSES))) + 1
        frac = math.exp(rng.uniform(math.log(spec.min_frac), math.log(spec.max_frac)))
        aspect = math.exp(rng.uniform(math.log(0.7), math.log(1.4)))
        ow = int(np.clip(round(frac * short * math.sqrt(aspect)), 6, width))
        oh = int(np.clip(round(frac * short / math.sqrt(aspect)), 6, height))
        angle = rng.uniform(-25, 25)
        m = masks[label - 1].rotate(angle, resample=Image.BILINEAR, expand=True)
        m = m.crop(m.getbbox()).resize((ow, oh), Image.BILINEAR)
        alpha = np.asarray(m, np.float32) / 255.0
        solid = alpha > 0.5
        if solid.sum() < 4:
            continue
        if rng.random() < 0.5:
            fill = rng.integers(0, 256, size=3).astype(np.float32)
            fill = np.broadcast_to(fill * rng.uniform(0.85, 1.0, size=(oh, ow, 1)), (oh, ow, 3))
        else:
            fill = _photo_patch(rng, photos, ow, oh).astype(np.float32)
        for _try in range(10):
            x0, y0 = int(rng.integers(width - ow + 1)), int(rng.integers(height - oh + 1))
            placed = np.zeros((height, width), bool)
            placed[y0 : y0 + oh, x0 : x0 + ow] = solid
            ok = all(
                (v & ~placed).sum() >= (1.0 - spec.max_hidden) * f.sum() for f, v in zip(full, visible)
            )
            if ok:
                break
        else:
            continue  # no placement keeps the others visible enough: skip this object
        a = alpha[..., None]
        region = image[y0 : y0 + oh, x0 : x0 + ow]
        image[y0 : y0 + oh, x0 : x0 + ow] = region * (1 - a) + fill * a
        for v in visible:
            v &= ~placed
        full.append(placed)
        visible.append(placed.copy())
        labels.append(label)
    boxes = []
    for v in visible:
        ys, xs = np.nonzero(v)
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    return (
        np.clip(np.rint(image), 0, 255).astype(np.uint8),
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int32),
    )


def _write_images(spec: BuiltinSpec, split: str, indices: list[int], out_dir: str) -> list[dict]:
    """Generate and write ``indices`` of ``split`` as JPEGs; returns their COCO entries."""
    from PIL import Image

    entries = []
    for i in indices:
        image, boxes, labels = generate_image(spec, split, i)
        file_name = f"{i:06d}.jpg"
        Image.fromarray(image).save(os.path.join(out_dir, file_name), quality=spec.jpeg_quality)
        entries.append(
            {
                "image": {"id": i + 1, "file_name": file_name, "width": image.shape[1], "height": image.shape[0]},
                "annotations": [
                    {"bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "category_id": int(l)}
                    for b, l in zip(boxes, labels)
                ],
            }
        )
    return entries


# ---------------------------------------------------------------------------- the cache


def _generate(spec: BuiltinSpec, root: str, workers: int, progress: bool) -> None:
    """Write the whole dataset under ``root`` (which exists and is empty)."""
    from tqdm import tqdm

    os.makedirs(os.path.join(root, "annotations"))
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(BUILTIN_CLASSES)]
    total = spec.num_train + spec.num_val
    chunk = 50
    executor = None
    if workers > 0:
        executor = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn")
        )
    try:
        with tqdm(total=total, desc="generating built-in dataset", unit="img", disable=not progress) as bar:
            for split in ("train", "val"):
                out_dir = os.path.join(root, split)
                os.makedirs(out_dir)
                n = spec.num_images(split)
                chunks = [list(range(s, min(s + chunk, n))) for s in range(0, n, chunk)]
                if executor is None:
                    results = (_write_images(spec, split, c, out_dir) for c in chunks)
                else:
                    results = executor.map(_write_images, *zip(*[(spec, split, c, out_dir) for c in chunks]))
                entries = []
                for part in results:
                    entries.extend(part)
                    bar.update(len(part))
                images, annotations = [], []
                for e in entries:  # in index order: executor.map keeps it
                    images.append(e["image"])
                    for a in e["annotations"]:
                        w, h = a["bbox"][2], a["bbox"][3]
                        annotations.append(
                            {"id": len(annotations) + 1, "image_id": e["image"]["id"], "area": w * h, "iscrowd": 0, **a}
                        )
                with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
                    json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    finally:
        if executor is not None:
            executor.shutdown()
    with open(os.path.join(root, "SPEC.json"), "w") as f:
        json.dump({**dataclasses.asdict(spec), "version": spec.VERSION, "classes": BUILTIN_CLASSES}, f, indent=1)


def builtin_dataset_dir(
    spec: BuiltinSpec = BuiltinSpec(),
    cache_dir: str | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> str:
    """Return the folder of the dataset ``spec``, generating it first if it is not cached.

    Args:
      spec: what to generate.
      cache_dir: parent folder; default :func:`ssd_jax.runtime.cache_dir`.
      workers: generator processes (0: in this process); default ``min(4, usable CPUs)``.
      progress: show a progress bar while generating.
    """
    cache_dir = cache_dir or runtime.cache_dir()
    final = os.path.join(cache_dir, spec.dirname)
    if os.path.isdir(final):
        return final
    os.makedirs(cache_dir, exist_ok=True)
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        workers = min(4, cpus or 1)
    tmp = tempfile.mkdtemp(prefix=f".{spec.dirname}.partial-", dir=cache_dir)
    try:
        _generate(spec, os.path.join(tmp, "data"), workers, progress)
        try:
            os.rename(os.path.join(tmp, "data"), final)
        except OSError:
            if not os.path.isdir(final):  # not a lost race with another generator
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def builtin_source(
    split: str = "train",
    spec: BuiltinSpec = BuiltinSpec(),
    cache_dir: str | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> Source:
    """The built-in dataset's ``split`` ("train" or "val"), generated on first use and read
    through :func:`~ssd_jax.data.coco.coco_source`."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"built-in dataset split must be 'train' or 'val', got {split!r}")
    root = builtin_dataset_dir(spec, cache_dir, workers=workers, progress=progress)
    return coco_source(
        os.path.join(root, "annotations", f"instances_{split}.json"),
        os.path.join(root, split),
        name=f"builtin {split}",
    )
