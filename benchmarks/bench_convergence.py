"""Our trainer against torchvision's on the same network, weights and batches: per-step loss.

    python benchmarks/bench_convergence.py [--steps 300] [--batch 4] [--optimizers sgd,adamw]
        [--torch /path/to/torch-venv/bin/python] [--out DIR]

Trajectory parity. Both sides run their own real training code:

* torchvision (a subprocess of ``--torch``, default ``$SSD_JAX_TORCH_PYTHON``; 2 threads):
  ``ssdlite320_mobilenet_v3_large(num_classes=C+1)`` from its own random initialisation
  (every convolution N(0, 0.03), no pretrained backbone), ``model(images, targets)`` (its
  transform, matching, hard-negative mining and loss), ``backward``, and
  ``torch.optim.SGD`` (momentum 0.9, weight decay on every parameter, as the detection
  reference passes them) or ``torch.optim.AdamW``, with a per-step cosine schedule
  (``CosineAnnealingLR``);
* ours: the same initial weights (``torchvision_import.from_torchvision_ssdlite_v3``) in
  ``ssdlite_mobilenetv3``, the jitted train step of ``launch.py train`` (matching at 0.5,
  3 negatives per positive, loss weight 1, [-1, 1] inputs) and the same optimiser and
  schedule (``optax``: ``add_decayed_weights`` + ``sgd``, or ``adamw``).

The batches are one stream written once (``DIR/batches.npy``): built-in training images in
a seeded order, resized to 320x320, each flipped horizontally with probability 0.5; both
sides read the same uint8 pixels and boxes. Printed: a table per optimiser (the largest
relative loss difference over the first 50 steps, and of the 20-step running means after;
the final parameters' distance, relative to how far training moved them), the wall time per
step of each side, and ``DIR/convergence_trajectory.png`` (both loss curves). Without torch
the torchvision half is skipped and only our losses are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from ssd_jax import runtime  # noqa: E402 (before JAX starts)

if __name__ == "__main__":  # as launch.py train (ssd_jax/runtime.py)
    runtime.setup_process("train")

import numpy as np  # noqa: E402

IMAGE_SIZE = 320
#: Optimiser settings of each run: torchvision's SSDLite recipe (lr 0.15 at batch 192,
#: weight decay 4e-5) for SGD; AdamW at a usual detection setting.
OPTIMIZERS = {
    "sgd": {"lr": 0.15, "lr_batch": 192, "weight_decay": 4e-5, "momentum": 0.9},
    "adamw": {"lr": 1e-3, "lr_batch": 16, "weight_decay": 0.05},
}

TORCH_SCRIPT = r"""
import json, sys, time
import numpy as np, torch, torchvision
torch.set_num_threads(2)
stream, out, optimizer, lr, wd, momentum, num_classes = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
d = np.load(stream, mmap_mode="r")
labels_all, boxes_all = np.load(stream.replace("batches.npy", "labels.npy")), np.load(stream.replace("batches.npy", "boxes.npy"))
steps, size = d.shape[0], d.shape[2]
torch.manual_seed(0)
m = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
np.savez(out + "_init.npz", **{k: v.numpy() for k, v in m.state_dict().items()})
m.train()
if optimizer == "sgd":
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
else:
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=wd)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
# torchvision's own matching of every image of the stream (its anchors, its SSDMatcher): the
# class each prior is trained towards, 0 for background
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou
with torch.no_grad():
    m.eval()
    x = torch.zeros(1, 3, size, size)
    anchors = m.anchor_generator(ImageList(x, [(size, size)]), list(m.backbone(x).values()))[0]
    m.train()
matched = np.zeros(boxes_all.shape[:2] + (anchors.shape[0],), np.int8)
for s in range(steps):
    for i, (b, l) in enumerate(zip(boxes_all[s], labels_all[s])):
        idx = m.proposal_matcher(box_iou(torch.from_numpy(b[l > 0] * np.float32(size)), anchors)).numpy()
        matched[s, i] = np.where(idx >= 0, l[l > 0][np.maximum(idx, 0)], 0)
np.save(out + "_matched.npy", matched)
rows = []
t0 = time.perf_counter()
for s in range(steps):
    images = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)).astype(np.float32) / 255.0) for im in d[s]]
    targets = [{"boxes": torch.from_numpy(b[l > 0] * np.float32(size)), "labels": torch.from_numpy(l[l > 0].astype(np.int64))}
               for b, l in zip(boxes_all[s], labels_all[s])]
    losses = m(images, targets)
    loss = sum(losses.values())
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    rows.append([float(loss.detach()), float(losses["classification"].detach()), float(losses["bbox_regression"].detach())])
seconds = time.perf_counter() - t0
np.savez(out + "_final.npz", **{k: v.numpy() for k, v in m.state_dict().items()})
json.dump({"losses": rows, "seconds": seconds, "versions": f"torch {torch.__version__}, torchvision {torchvision.__version__}"}, open(out + ".json", "w"))
"""


def write_stream(out_dir: str, steps: int, batch: int, seed: int = 0) -> tuple[str, int]:
    """The batch stream (uint8 ``[steps, B, 320, 320, 3]``, normalised boxes, labels) from the
    built-in training split; returns its path and the number of object classes."""
    from ssd_jax.data import builtin, images, transforms

    source = builtin.builtin_source("train")
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(source)) for _ in range(steps * batch // len(source) + 1)])
    g = max(r.num_objects for r in source.records)
    path = os.path.join(out_dir, "batches.npy")
    pixels = np.lib.format.open_memmap(path, "w+", np.uint8, (steps, batch, IMAGE_SIZE, IMAGE_SIZE, 3))
    boxes = np.zeros((steps, batch, g, 4), np.float32)
    labels = np.zeros((steps, batch, g), np.int32)
    for s in range(steps):
        for i in range(batch):
            rec = source[int(order[s * batch + i])]
            image, b, lab = transforms.resize(images.load_image(rec), rec.boxes, rec.labels, size=IMAGE_SIZE)
            b = b / IMAGE_SIZE
            if rng.random() < 0.5:
                image = image[:, ::-1]
                b = np.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], axis=1)
            pixels[s, i] = image
            boxes[s, i, :len(lab)] = b
            labels[s, i, :len(lab)] = lab
    pixels.flush()
    np.save(os.path.join(out_dir, "boxes.npy"), boxes)
    np.save(os.path.join(out_dir, "labels.npy"), labels)
    return path, source.num_classes


def read_stream(stream: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pixels, boxes, labels)`` of :func:`write_stream`'s files (pixels memory-mapped)."""
    return (np.load(stream, mmap_mode="r"), np.load(stream.replace("batches.npy", "boxes.npy")),
            np.load(stream.replace("batches.npy", "labels.npy")))


def run_torch(python: str, stream: str, prefix: str, name: str, batch: int, num_classes: int) -> dict:
    o = OPTIMIZERS[name]
    lr = o["lr"] * batch / o["lr_batch"]
    proc = subprocess.run([python, "-c", TORCH_SCRIPT, stream, prefix, name, str(lr), str(o["weight_decay"]),
                           str(o.get("momentum", 0.0)), str(num_classes + 1)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"torchvision run failed:\n{proc.stderr[-3000:]}")
    with open(prefix + ".json") as f:
        return json.load(f)


def run_ours(stream: str, init_sd: dict | None, name: str, batch: int, steps: int, num_classes: int) -> dict:
    """Our train step over the stream, from torchvision state dict ``init_sd`` (or, without
    one, our own draw of torchvision's initialisation: ``model.init = "normal"``, 0.03)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ssd_jax import anchors, models, normalization, train_step as T
    from ssd_jax.models import params_io, torchvision_import as ti

    conv = models.resolve_conv_choices()
    if init_sd is None:
        from ssd_jax import builders

        model = models.build_model("ssdlite_mobilenetv3", num_classes, conv=conv, rngs=nnx.Rngs(0))
        builders.normal_init(model, 0.03, nnx.Rngs(0))
        params = params_io.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    else:
        params, stats, num_classes = ti.from_torchvision_ssdlite_v3(init_sd)
        model = ti.ssdlite_v3_model(params, stats, num_classes, conv=conv)
    o = OPTIMIZERS[name]
    cfg = T.OptimConfig(optimizer=name, lr=o["lr"], lr_batch_size=o["lr_batch"], batch_size=batch, schedule="cosine",
                        total_steps=steps, momentum=o.get("momentum", 0.0), weight_decay=o["weight_decay"], decay="all")
    tx, schedule = T.make_optimizer(cfg)
    graphdef, state = T.create_train_state(model, tx)
    step = jax.jit(T.make_train_step(graphdef, tx, schedule, jnp.asarray(anchors.generate(model.spec)), T.LossConfig()),
                   donate_argnums=0)
    d, boxes, labels = read_stream(stream)

    def batch_at(s):
        return {"image": normalization.SYMMETRIC(d[s]), "boxes": boxes[s], "labels": labels[s]}

    t = time.perf_counter()
    step.lower(state, batch_at(0)).compile()
    compile_s = time.perf_counter() - t
    rows, t0 = [], time.perf_counter()
    for s in range(steps):
        state, m = step(state, batch_at(s))
        rows.append([float(m["loss"]), float(m["conf_loss"]), float(m["loc_loss"])])
    seconds = time.perf_counter() - t0
    flat = params_io.flatten(nnx.to_pure_dict(jax.device_get(state.params)))
    return {"losses": rows, "seconds": seconds, "compile_s": compile_s, "params": flat, "init": params}


def running_mean(x: np.ndarray, window: int = 20) -> np.ndarray:
    c = np.cumsum(np.insert(x, 0, 0.0))
    return (c[window:] - c[:-window]) / window


def matching_agreement(stream: str, matched_tv: np.ndarray) -> tuple[int, int]:
    """``(differing, positives)``: priors whose class target differs between our matching
    (``match_batch``, jitted, as in the train step) and torchvision's, over the stream, and
    torchvision's positive count."""
    import jax
    import jax.numpy as jnp

    from ssd_jax import anchors, matching
    from ssd_jax.models import factory

    priors = jnp.asarray(anchors.generate(factory.default_prior_spec("ssdlite_mobilenetv3", IMAGE_SIZE)))
    match = jax.jit(lambda b, l: matching.match_batch(b, l, priors, 0.5, (0.1, 0.2))[1])
    _, boxes, labels = read_stream(stream)
    differing = sum(int(np.sum(np.asarray(match(boxes[s], labels[s])) != matched_tv[s])) for s in range(len(boxes)))
    return differing, int(np.sum(matched_tv > 0))


def compare(ours: dict, ref: dict, final_sd: dict) -> dict:
    from ssd_jax.models import torchvision_import as ti

    a, b = np.asarray(ours["losses"])[:, 0], np.asarray(ref["losses"])[:, 0]
    rel = np.abs(a - b) / np.abs(b)
    after = np.abs(running_mean(a)[50:] - running_mean(b)[50:]) / running_mean(b)[50:]  # windows wholly after step 50
    final, _, _ = ti.from_torchvision_ssdlite_v3(final_sd)
    num = sum(float(np.sum((ours["params"][k] - final[k]) ** 2)) for k in final)
    moved = sum(float(np.sum((final[k] - ours["init"][k]) ** 2)) for k in final)
    first_diff = int(np.argmax(rel > 0.01)) if np.any(rel > 0.01) else None
    return {"max_rel_first50": float(rel[:50].max()), "max_rel_running_after50": float(after.max()),
            "first_step_over_1pct": first_diff, "param_distance_rel_to_update": (num / moved) ** 0.5,
            "final_loss_ours": float(running_mean(a)[-1]), "final_loss_torch": float(running_mean(b)[-1])}


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        for side, style in (("torchvision", "-"), ("ours", "--")):
            if side in r:
                loss = np.asarray(r[side]["losses"])
                ax.plot(np.arange(1, len(loss) + 1), loss[:, 0], style, label=f"{side} total", lw=1)
                ax.plot(np.arange(1, len(loss) + 1), loss[:, 2], style, label=f"{side} box", lw=0.8)
        ax.set_title(f"SSDLite320-MobileNetV3, {name}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--optimizers", default="sgd,adamw")
    p.add_argument("--torch", default=os.environ.get("SSD_JAX_TORCH_PYTHON"),
                   help="a python with torch + torchvision (default $SSD_JAX_TORCH_PYTHON)")
    p.add_argument("--out", default="runs/bench_convergence")
    args = p.parse_args(argv)
    names = [n for n in args.optimizers.split(",") if n]
    unknown = sorted(set(names) - set(OPTIMIZERS))
    if unknown or args.steps < 70 or args.batch < 2:
        p.error(f"--optimizers from {sorted(OPTIMIZERS)} (got {unknown}), --steps >= 70 (20-step means after step 50), --batch >= 2 (batch norm on the 1x1 maps)")
    os.makedirs(args.out, exist_ok=True)
    python = args.torch
    if python and not shutil.which(python) and not os.path.exists(python):
        p.error(f"--torch {python}: not found")
    if python is None:
        print("torchvision half skipped: no --torch python (or $SSD_JAX_TORCH_PYTHON) given; our losses only")

    print(f"writing the batch stream: {args.steps} steps x {args.batch} images at {IMAGE_SIZE} px ...", flush=True)
    stream, num_classes = write_stream(args.out, args.steps, args.batch)
    results = {}
    for name in names:
        prefix = os.path.join(args.out, f"torchvision_{name}")
        r = results[name] = {}
        if python:
            print(f"[{name}] torchvision: {args.steps} steps ...", flush=True)
            r["torchvision"] = run_torch(python, stream, prefix, name, args.batch, num_classes)
            init_sd = dict(np.load(prefix + "_init.npz"))
        else:
            init_sd = None
        print(f"[{name}] ours: {args.steps} steps ...", flush=True)
        r["ours"] = run_ours(stream, init_sd, name, args.batch, args.steps, num_classes)
        if python:
            r["compare"] = compare(r["ours"], r["torchvision"], dict(np.load(prefix + "_final.npz")))
            r["compare"]["matching_differs"], r["compare"]["positives_tv"] = matching_agreement(
                stream, np.load(prefix + "_matched.npy"))
    if not python:
        for name, r in results.items():
            loss = np.asarray(r["ours"]["losses"])[:, 0]
            print(f"{name}: ours only, loss {loss[0]:.3f} -> {running_mean(loss)[-1]:.3f} (20-step mean), "
                  f"{r['ours']['seconds'] / args.steps:.3f} s/step")
        plot(results, os.path.join(args.out, "convergence_trajectory.png"))
        return 0

    print(f"\nSSDLite320-MobileNetV3, {num_classes + 1} classes, batch {args.batch}, {args.steps} steps, "
          f"same initial weights and batches ({results[names[0]]['torchvision']['versions']})")
    head = (f"{'optimiser':9} {'max |dL|/L steps 1-50':>22} {'max running-mean diff 51+':>26} {'first step >1%':>15} "
            f"{'param dist / update':>20} {'final loss ours / tv':>21} {'s/step ours':>12} {'s/step tv':>10} {'ratio':>6}")
    print(head)
    for name, r in results.items():
        c = r["compare"]
        so, st = r["ours"]["seconds"] / args.steps, r["torchvision"]["seconds"] / args.steps
        print(f"{name:9} {c['max_rel_first50']:>22.2%} {c['max_rel_running_after50']:>26.2%} "
              f"{str(c['first_step_over_1pct']):>15} {c['param_distance_rel_to_update']:>20.3f} "
              f"{c['final_loss_ours']:>10.3f} / {c['final_loss_torch']:<8.3f} {so:>12.3f} {st:>10.3f} {st / so:>6.2f}x")
    c = results[names[0]]["compare"]
    print(f"matching over the stream: {c['matching_differs']} priors of torchvision's {c['positives_tv']} positives "
          f"({c['matching_differs'] / max(c['positives_tv'], 1):.1%}) have another class target in ours")
    png = os.path.join(args.out, "convergence_trajectory.png")
    plot(results, png)
    summary = {n: {"compare": r["compare"], "ours": {k: r["ours"][k] for k in ("losses", "seconds", "compile_s")},
                   "torchvision": r["torchvision"]} for n, r in results.items()}
    with open(os.path.join(args.out, "convergence_trajectory.json"), "w") as f:
        json.dump({"steps": args.steps, "batch": args.batch, "results": summary}, f)
    print(f"wrote {png} and convergence_trajectory.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
