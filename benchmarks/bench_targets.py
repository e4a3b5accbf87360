"""Benchmark: SSD targets (vmapped matching) + multibox loss on the CPU.

The case: batch 32, SSD300 priors (8732), 21 classes, 5 truth boxes per image.
Prints median milliseconds over repeats after compilation, forward (match + loss) and
forward+backward (gradient w.r.t. logits and offsets), against the reference: the
torchvision 0.29 loss path (box_iou + SSDMatcher per image + SSD.compute_loss), measured
in the same command when torch/torchvision import, else the recorded figures
(42 ms forward, 67 ms with backward on this kind of 2-core machine).

    python benchmarks/bench_targets.py [--batch 32] [--repeats 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from ssd_jax import run_info, runtime  # noqa: E402 (before JAX starts)

if __name__ == "__main__":  # as launch.py train (ssd_jax/runtime.py)
    runtime.setup_process("train")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ssd_jax import anchors, losses, matching  # noqa: E402

RECORDED_REFERENCE_MS = {"forward": 42.0, "forward+backward": 67.0}
TARGET_MS = {"forward": 8.0, "forward+backward": 15.0}


def make_case(batch: int, num_gt: int, num_classes: int, seed: int = 0):
    """Random but realistic truths (sides 5%..80% of the image) and random predictions."""
    rng = np.random.default_rng(seed)
    priors = anchors.generate(anchors.SSD300_VOC)
    centre = rng.uniform(0.15, 0.85, (batch, num_gt, 2))
    size = rng.uniform(0.05, 0.8, (batch, num_gt, 2))
    boxes = np.clip(np.concatenate([centre - size / 2, centre + size / 2], -1), 0, 1)
    labels = rng.integers(1, num_classes + 1, (batch, num_gt))
    logits = rng.normal(size=(batch, priors.shape[0], num_classes + 1))
    offsets = rng.normal(size=(batch, priors.shape[0], 4))
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    return f32(priors), f32(boxes), labels.astype(np.int32), f32(logits), f32(offsets)


def time_ms(fn, repeats: int) -> float:
    fn()  # compile / warm up
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_jax(case, repeats: int) -> dict[str, float]:
    priors, boxes, labels, logits, offsets = (jnp.asarray(a) for a in case)

    def loss_fn(logits, offsets, boxes, labels):
        loc_t, cls_t = matching.match_batch(boxes, labels, priors)
        return losses.multibox_loss(logits, offsets, cls_t, loc_t)[0]

    fwd = jax.jit(loss_fn)
    fwd_bwd = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
    return {
        "forward": time_ms(lambda: fwd(logits, offsets, boxes, labels).block_until_ready(), repeats),
        "forward+backward": time_ms(
            lambda: jax.block_until_ready(fwd_bwd(logits, offsets, boxes, labels)), repeats
        ),
    }


def bench_torchvision(case, repeats: int) -> dict[str, float] | None:
    """torchvision's own SSD loss path, on the same inputs; None if torch is missing."""
    try:
        import torch
        from torchvision.models.detection import ssd as tv_ssd
        from torchvision.ops import boxes as tv_boxes
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    priors, boxes, labels, logits, offsets = case
    # torchvision works in pixels on xyxy priors; use a 300x300 image.
    p = torch.from_numpy(priors) * 300
    anchors_xyxy = torch.cat([p[:, :2] - p[:, 2:] / 2, p[:, :2] + p[:, 2:] / 2], -1)
    model = tv_ssd.SSD.__new__(tv_ssd.SSD)  # only the loss machinery, no network
    torch.nn.Module.__init__(model)
    model.box_coder = tv_ssd.det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    model.proposal_matcher = tv_ssd.det_utils.SSDMatcher(0.5)
    model.neg_to_pos_ratio = 3
    targets = [
        {"boxes": torch.from_numpy(b * 300), "labels": torch.from_numpy(l).long()}
        for b, l in zip(boxes, labels)
    ]
    anchors_list = [anchors_xyxy] * len(targets)

    def run(backward: bool):
        cls = torch.from_numpy(logits).requires_grad_(backward)
        reg = torch.from_numpy(offsets).requires_grad_(backward)
        matched = []
        for t in targets:
            quality = tv_boxes.box_iou(t["boxes"], anchors_xyxy)
            matched.append(model.proposal_matcher(quality))
        out = model.compute_loss(
            targets, {"bbox_regression": reg, "cls_logits": cls}, anchors_list, matched
        )
        loss = out["bbox_regression"] + out["classification"]
        if backward:
            loss.backward()
        return loss

    with torch.no_grad():
        fwd = time_ms(lambda: run(False), repeats)
    return {"forward": fwd, "forward+backward": time_ms(lambda: run(True), repeats)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--num-gt", type=int, default=5)
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    case = make_case(args.batch, args.num_gt, args.num_classes)
    ours = bench_jax(case, args.repeats)
    ref = bench_torchvision(case, args.repeats)
    ref_label = "torchvision (same run)" if ref else "torchvision (recorded)"
    ref = ref or RECORDED_REFERENCE_MS
    print(
        f"match + multibox loss: batch {args.batch}, {case[0].shape[0]} priors, "
        f"{args.num_classes + 1} classes, {args.num_gt} truths/image; median of {args.repeats}"
    )
    print(f"machine: {run_info.cpu_model()}, {os.cpu_count()} cores, jax {jax.__version__}")
    header = f"{'pass':<18} {'ssd_jax ms':>11} {ref_label + ' ms':>30} {'speed-up':>9} {'target ms':>10}"
    print(header)
    print("-" * len(header))
    for key in ("forward", "forward+backward"):
        print(
            f"{key:<18} {ours[key]:>11.2f} {ref[key]:>30.2f} {ref[key] / ours[key]:>8.2f}x "
            f"{TARGET_MS[key]:>10.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
