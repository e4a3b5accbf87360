"""``launch.py predict``: detect objects in image files with a training run's checkpoint,
or with a detector exported by ``launch.py export``.

    python launch.py predict --workdir DIR --images A.jpg B.png ... --output OUT
        [--step N] [--score-threshold 0.3]
    python launch.py predict --exported model.onnx|model.stablehlo --images ... --output OUT

Writes ``OUT/<image name>.png`` with the boxes, class names and scores drawn (those at or
above ``--score-threshold``), and ``OUT/detections.json`` in the COCO results format
(every detection above the run's eval score threshold; ``image_id`` is the file name,
boxes ``[x, y, w, h]`` in pixels of the original image). Both ways resize the image as
evaluation does; an exported file gives the same detections as its run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

import numpy as np

#: ``detect(image uint8 [H, W, 3]) -> (boxes [K, 4] xyxy pixels, labels [K] 1..C, scores [K])``
ImageDetector = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _from_workdir(workdir: str, step: int | None) -> tuple[ImageDetector, tuple[str, ...], tuple[int, ...] | None]:
    import jax

    from ssd_jax import builders, inference, restore
    from ssd_jax.data import transforms

    run = restore.restore_run(workdir, step, with_eval_source=False)  # the dataset need not be here
    size = run.model.spec.image_size
    norm = builders.input_normalization(run.settings.model)
    predict = builders.build_predict_fn(run.graphdef, run.model.spec, run.settings)

    def detect(image):
        h, w = image.shape[:2]
        x = transforms.network_input(image, size, norm)[None]  # as the eval pipeline
        return inference.image_detections(jax.device_get(predict(run.params, run.model_state, x)), 0, w, h)

    return detect, run.class_names, run.category_ids


def _from_exported(path: str) -> tuple[ImageDetector, tuple[str, ...], tuple[int, ...] | None]:
    from ssd_jax import export
    from ssd_jax.data import transforms

    detector = export.ExportedDetector(path)
    size = detector.meta.image_size

    def detect(image):
        h, w = image.shape[:2]
        out = detector(transforms.resize_image(image, size)[None])
        n = int(out["num_detections"][0])
        boxes = out["boxes"][0, :n] * np.array([w, h, w, h])
        return boxes, out["labels"][0, :n], out["scores"][0, :n]

    return detect, detector.meta.class_names, detector.meta.category_ids


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a training run's workdir")
    source.add_argument("--exported", help="a file written by launch.py export (ONNX or StableHLO)")
    parser.add_argument("--images", nargs="+", required=True, help="image files (JPEG, PNG, ...)")
    parser.add_argument("--output", required=True, help="folder for the drawn images and detections.json")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="draw detections scoring at least this")
    args = parser.parse_args(argv)
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        parser.error(f"image file(s) not found: {', '.join(missing)}")
    if args.exported and args.step is not None:
        parser.error("--step applies to --workdir (an exported file holds one checkpoint)")

    from PIL import Image

    from ssd_jax import visualize
    from ssd_jax.data.records import labels_to_category_ids

    if args.exported:
        try:
            detect, class_names, category_ids = _from_exported(args.exported)
        except (ImportError, FileNotFoundError, ValueError) as e:
            print(f"launch.py predict: {e}", file=sys.stderr)
            return 1
    else:
        detect, class_names, category_ids = _from_workdir(args.workdir, args.step)
    os.makedirs(args.output, exist_ok=True)
    results = []
    for path in args.images:
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except OSError as e:
            raise SystemExit(f"cannot read image {path}: {e}")
        boxes, classes, scores = detect(image)
        name = os.path.basename(path)
        out = os.path.join(args.output, os.path.splitext(name)[0] + ".png")
        visualize.draw_detections(image, boxes, classes, scores, class_names, args.score_threshold).save(out)
        category = labels_to_category_ids(classes, category_ids) if category_ids else classes
        for b, s, c in zip(boxes, scores, category):
            results.append({"image_id": name, "category_id": int(c), "score": round(float(s), 5),
                            "bbox": [round(float(v), 2) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])]})
        shown = int((scores >= args.score_threshold).sum())
        print(f"{name}: {len(scores)} detections, {shown} drawn at score >= {args.score_threshold} -> {out}")
    json_path = os.path.join(args.output, "detections.json")
    with open(json_path, "w") as f:
        json.dump(results, f)
    print(f"wrote {json_path} ({len(results)} detections)")
    return 0
