"""``launch.py predict``: detect objects in image files with a training run's checkpoint.

    python launch.py predict --workdir DIR --images A.jpg B.png ... --output OUT
        [--step N] [--score-threshold 0.3]

Writes ``OUT/<image name>.png`` with the boxes, class names and scores drawn (those at or
above ``--score-threshold``), and ``OUT/detections.json`` in the COCO results format
(every detection above the config's eval score threshold; ``image_id`` is the file name,
boxes ``[x, y, w, h]`` in pixels of the original image).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a training run's workdir")
    parser.add_argument("--images", nargs="+", required=True, help="image files (JPEG, PNG, ...)")
    parser.add_argument("--output", required=True, help="folder for the drawn images and detections.json")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="draw detections scoring at least this")
    args = parser.parse_args(argv)
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        parser.error(f"image file(s) not found: {', '.join(missing)}")

    import jax
    from PIL import Image

    from ssd_jax import builders, inference, restore, visualize
    from ssd_jax.data import transforms
    from ssd_jax.data.records import labels_to_category_ids

    run = restore.restore_run(args.workdir, args.step, with_eval_source=False)  # the dataset need not be here
    size = run.model.spec.image_size
    norm = builders.input_normalization(run.settings.model)
    predict = builders.build_predict_fn(run.graphdef, run.model.spec, run.settings)
    os.makedirs(args.output, exist_ok=True)
    results = []
    for path in args.images:
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except OSError as e:
            raise SystemExit(f"cannot read image {path}: {e}")
        h, w = image.shape[:2]
        x = transforms.network_input(image, size, norm)[None]  # as the eval pipeline
        det = jax.device_get(predict(run.params, run.model_state, x))
        boxes, classes, scores = inference.image_detections(det, 0, w, h)
        name = os.path.basename(path)
        out = os.path.join(args.output, os.path.splitext(name)[0] + ".png")
        visualize.draw_detections(image, boxes, classes, scores, run.class_names,
                                  args.score_threshold).save(out)
        category = labels_to_category_ids(classes, run.category_ids) if run.category_ids else classes
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
