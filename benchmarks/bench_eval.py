"""Speed of inference post-processing and of metric computation, against the references.

    flock -x /tmp/cpu.lock python benchmarks/bench_eval.py [--torch-python PATH] [--quick]

(a) ``ssd_jax.postprocess.detect`` on a batch of 8 SSD300 outputs (8732 priors, 21
    classes, random logits: every class fills its 400 candidates), against torchvision's
    ``SSD.postprocess_detections`` on the same-shaped inputs. torchvision runs in this
    process if importable, else in ``--torch-python`` (a venv with torch) as a
    subprocess, else the recorded reference is printed.
(b) VOC and COCO metrics over 1,000 images x 100 detections, 20 classes: ours
    (``evaluate_voc``: both AP definitions; ``evaluate_coco``: conversion + engine)
    against pycocotools' ``COCOeval`` on the same data (if importable).
(c) full evaluation throughput: SSD300-VGG16 forward (inference mode) + ``detect`` in one
    jit, batch 8 of 300x300 images, against torchvision's ``ssd300_vgg16`` eval (recorded
    2.4 images/s on this machine; measured here when torch is importable in this process).

Prints a table; record it in benchmarks/RESULTS.md with date, machine and versions.
Timings are medians of repeated runs after a warm-up (jit compilation excluded, and
reported separately).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from ssd_jax import host_malloc, run_info, runtime  # noqa: E402 (before JAX starts)

if __name__ == "__main__" and "--torchvision-reference" not in sys.argv:  # as launch.py eval (ssd_jax/runtime.py)
    runtime.setup_process("eval")

BATCH, NUM_CLASSES_BG = 8, 21
RECORDED_TORCHVISION_MS_PER_IMAGE = 17.0  # torchvision 0.29 on this 2-core machine
RECORDED_PYCOCOTOOLS_S = 5.5  # pycocotools 2.0.x, 1,000 x 100 x 20, "5-6 s"
RECORDED_TORCHVISION_EVAL_IMG_S = 2.4  # torchvision 0.29 ssd300_vgg16 eval, batch 8, this machine


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _ssd300_inputs(seed=0):
    from ssd_jax import anchors

    priors = anchors.generate(anchors.SSD300_VOC)
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(BATCH, priors.shape[0], NUM_CLASSES_BG)).astype(np.float32)
    offsets = rng.normal(size=(BATCH, priors.shape[0], 4)).astype(np.float32)
    return logits, offsets, priors


def torchvision_reference(repeats):
    """Seconds per batch of torchvision's postprocess_detections (this process)."""
    from types import SimpleNamespace

    import torch
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.ssd import SSD

    logits, offsets, priors = _ssd300_inputs()
    model = SimpleNamespace(box_coder=det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)),
                            score_thresh=0.01, nms_thresh=0.45, topk_candidates=400,
                            detections_per_img=200)
    xyxy = np.concatenate([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)
    anchors_px = [torch.from_numpy((xyxy * 300).astype(np.float32))] * BATCH
    head = {"cls_logits": torch.from_numpy(logits), "bbox_regression": torch.from_numpy(offsets)}

    def run():
        with torch.no_grad():
            SSD.postprocess_detections(model, head, anchors_px, [(300, 300)] * BATCH)

    run()
    import torchvision

    return _median_time(run, repeats), f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads"


def bench_detect(repeats):
    import jax

    from ssd_jax import postprocess

    logits, offsets, priors = (jax.device_put(x) for x in _ssd300_inputs())
    t = time.perf_counter()
    jax.block_until_ready(postprocess.detect(logits, offsets, priors))
    compile_s = time.perf_counter() - t
    sec = _median_time(lambda: jax.block_until_ready(postprocess.detect(logits, offsets, priors)),
                       repeats)
    return sec, compile_s


def bench_full_eval(repeats):
    """Images/s of network forward + detect (one jit), SSD300-VGG16, batch 8, 21 classes."""
    import jax
    import jax.numpy as jnp

    from ssd_jax import anchors, postprocess
    from ssd_jax.models import factory, ssd

    model = factory.build_model("ssd300_vgg16", 20)
    graphdef, params, model_state = ssd.split(model)
    priors = jnp.asarray(anchors.generate(model.spec))

    @jax.jit
    def infer(params, model_state, images):
        (logits, offsets), _ = ssd.apply(graphdef, params, model_state, images, train=False)
        return postprocess.detect(logits, offsets, priors)

    images = jnp.asarray(np.random.default_rng(0).normal(size=(BATCH, 300, 300, 3)), jnp.float32)
    t = time.perf_counter()
    jax.block_until_ready(infer(params, model_state, images))
    compile_s = time.perf_counter() - t
    sec = _median_time(lambda: jax.block_until_ready(infer(params, model_state, images)), repeats)
    return BATCH / sec, compile_s


def torchvision_full_eval(repeats):
    """Images/s of torchvision's ssd300_vgg16 in eval mode (transform + network + postprocess)."""
    import torch
    from torchvision.models.detection import ssd300_vgg16

    torch.set_num_threads(os.cpu_count() or 1)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).eval()
    images = [torch.rand(3, 300, 300) for _ in range(BATCH)]
    with torch.no_grad():
        model(images)
        sec = _median_time(lambda: model(images), repeats)
    return BATCH / sec


def eval_dataset(seed=0, num_images=1000, dets_per_image=100, num_classes=20):
    """Truths (1-14 per image) and 100 detections per image, half near a truth."""
    from ssd_jax.evaluation.types import GroundTruth, ImageDetections

    rng = np.random.default_rng(seed)
    truths, dets = [], []
    for i in range(num_images):
        w, h = 500, 375
        n = int(rng.integers(1, 15))
        xy = rng.uniform(0, [w * 0.8, h * 0.8], (n, 2))
        wh = rng.uniform(8, [w * 0.5, h * 0.5], (n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)
        labels = rng.integers(1, num_classes + 1, n)
        truths.append(GroundTruth(i + 1, w, h, boxes, labels, difficult=rng.random(n) < 0.1))
        src = rng.integers(0, n, dets_per_image)
        near = rng.random(dets_per_image) < 0.5
        jitter = rng.normal(0, 6, (dets_per_image, 4))
        rand_xy = rng.uniform(0, [w * 0.8, h * 0.8], (dets_per_image, 2))
        rand = np.concatenate([rand_xy, rand_xy + rng.uniform(8, 150, (dets_per_image, 2))], 1)
        d_boxes = np.where(near[:, None], boxes[src] + jitter, rand)
        d_boxes = np.concatenate([np.minimum(d_boxes[:, :2], d_boxes[:, 2:]),
                                  np.maximum(d_boxes[:, :2], d_boxes[:, 2:])], 1)
        d_labels = np.where(near & (rng.random(dets_per_image) < 0.8), labels[src],
                            rng.integers(1, num_classes + 1, dets_per_image))
        dets.append(ImageDetections(i + 1, d_boxes, rng.random(dets_per_image), d_labels))
    return truths, dets


def pycocotools_reference(truths, dets, category_ids):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ssd_jax.evaluation import coco

    dataset = coco.to_coco_dataset(truths, category_ids)
    results = coco.to_coco_results(dets, category_ids)

    def run():
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = dataset
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes(results), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return ev.stats

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch-python", default=os.environ.get("SSD_JAX_TORCH_PYTHON"),
                        help="python with torch+torchvision for the reference, if this one lacks it")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--torchvision-reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    reps = 5 if args.quick else 20

    if args.torchvision_reference:  # subprocess mode: print the reference time as JSON
        sec, desc = torchvision_reference(reps)
        print(json.dumps({"sec": sec, "desc": desc}))
        return

    import jax

    import ssd_jax.evaluation.coco as coco
    import ssd_jax.evaluation.voc as voc

    rows = []  # (what, ours, reference, unit, ratio, note)

    # (a) detect
    det_s, compile_s = bench_detect(reps)
    ref_note = "recorded"
    ref_ms = RECORDED_TORCHVISION_MS_PER_IMAGE
    try:
        sec, desc = torchvision_reference(reps)
        ref_ms, ref_note = sec / BATCH * 1e3, f"measured ({desc})"
    except ImportError:
        if args.torch_python and os.path.exists(args.torch_python):
            proc = subprocess.run([args.torch_python, os.path.abspath(__file__),
                                   "--torchvision-reference"] + (["--quick"] if args.quick else []),
                                  capture_output=True, text=True,
                                  env={**host_malloc.without_added(), "PYTHONPATH": os.getcwd()})
            if proc.returncode == 0:
                out = json.loads(proc.stdout.strip().splitlines()[-1])
                ref_ms, ref_note = out["sec"] / BATCH * 1e3, f"measured, subprocess ({out['desc']})"
            else:
                ref_note = f"recorded (subprocess failed: {proc.stderr.strip()[-200:]})"
    ours_ms = det_s / BATCH * 1e3
    rows.append(("detect, SSD300 batch 8, per image", ours_ms, ref_ms, "ms",
                 ref_ms / ours_ms, f"torchvision postprocess_detections, {ref_note}; "
                 f"ours {det_s * 1e3:.1f} ms per batch, first call (compile) {compile_s:.1f} s"))

    # (b) metrics
    truths, dets = eval_dataset()
    names = [f"c{c}" for c in range(1, 21)]
    cat_ids = list(range(1, 21))
    m_reps = 3 if args.quick else 5
    voc_s = _median_time(lambda: voc.evaluate_voc(truths, dets, 20), m_reps)
    coco_s = _median_time(lambda: coco.evaluate_coco(truths, dets, cat_ids, names), m_reps)
    rows.append(("VOC AP (11-pt + area), 1000 img x 100 det, 20 cls", voc_s, 1.0, "s",
                 1.0 / voc_s, "reference = the 1 s target"))
    try:
        run_ref = pycocotools_reference(truths, dets, cat_ids)
        from importlib.metadata import version

        ref_s = _median_time(run_ref, 1 if args.quick else 2)
        ref_stats = run_ref()
        ours = coco.evaluate_coco(truths, dets, cat_ids, names)
        diff = np.max(np.abs(np.asarray([ours.stats[n] for n in coco.STAT_NAMES]) - ref_stats))
        note = f"pycocotools {version('pycocotools')} measured; max |stats diff| {diff:.1e}"
    except ImportError:
        ref_s, note = RECORDED_PYCOCOTOOLS_S, "pycocotools recorded (not importable here)"
    import faster_coco_eval

    rows.append(("COCO AP/AR, 1000 img x 100 det, 20 cls", coco_s, ref_s, "s", ref_s / coco_s,
                 f"{note}; engine faster-coco-eval {faster_coco_eval.__version__}"))

    # (c) full evaluation throughput
    img_s, full_compile_s = bench_full_eval(2 if args.quick else 3)
    try:
        ref_img_s, ref_note = torchvision_full_eval(2 if args.quick else 3), "measured (this process)"
    except ImportError:
        ref_img_s, ref_note = RECORDED_TORCHVISION_EVAL_IMG_S, "recorded"
    rows.append(("full eval SSD300 batch 8 (network + detect)", img_s, ref_img_s, "im/s",
                 img_s / ref_img_s, f"torchvision ssd300_vgg16 eval, {ref_note}; "
                 f"ours first call (compile) {full_compile_s:.1f} s"))

    print(f"python {platform.python_version()}, jax {jax.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs, {run_info.cpu_model()}")
    print(f"{'benchmark':52s} {'ours':>9s} {'reference':>10s} {'unit':>4s} {'speed-up':>9s}  note")
    for what, ours_v, ref_v, unit, ratio, note in rows:
        print(f"{what:52s} {ours_v:9.3f} {ref_v:10.3f} {unit:>4s} {ratio:8.1f}x  {note}")


if __name__ == "__main__":
    main()
