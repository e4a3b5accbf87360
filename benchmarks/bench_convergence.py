"""Our trainer against torchvision's on the same network, weights and batches: per-step loss.

    python benchmarks/bench_convergence.py [--steps 300] [--batch 4] [--optimizers sgd,adamw]
        [--torch /path/to/torch-venv/bin/python] [--out DIR]

    python benchmarks/bench_convergence.py --convergence [--steps 1000] [--batch 16]
        [--image-size 160] [--points 4] [--seeds 0,1] [--full] [--torch ...] [--out DIR]

Trajectory parity (the default). Both sides run their own real training code:

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

Convergence (``--convergence``): each side trains SSDLite-MobileNetV3 from its own random
initialisation (torchvision's: every convolution N(0, 0.03)) on the built-in training split
with its own data pipeline and the SSDLite recipe of ``experiments/ssdlite_mobilenetv3_parity.py``
(SGD, lr 0.15 at batch 192 scaled to the batch, cosine, weight decay 4e-5 on everything):

* ours: ``launch.py train``'s loop (``training_loop.train_and_evaluate``) on that
  experiment, at ``--image-size``, a checkpoint at each of ``--points`` evenly spaced steps;
* torchvision: ``model(images, targets)`` fed by a ``DataLoader`` with the detection
  reference's ``ssdlite`` augmentation (``transforms.v2``: ``RandomIoUCrop``,
  ``RandomHorizontalFlip``, ``SanitizeBoundingBoxes``), its transform's fixed size set to
  ``--image-size``; its state dict saved at the same steps (the wall time excludes saving).

Every saved point of both sides is then evaluated the same way: the weights in our network
(torchvision's through ``torchvision_import``), our eval pipeline and ``detect`` with the
experiment's eval settings, the project's VOC (11-point mAP@0.5) and COCO (AP) evaluators on
the built-in val split. Printed: a table (side, seed, step, training minutes, VOC mAP, COCO
AP), our final mAP over torchvision's (mean over the seeds), and our time to reach
torchvision's final mAP (linear between the points) over its time; written:
``DIR/convergence.json`` and ``DIR/convergence_map.png`` (mAP against training minutes).
``--full`` is the GPU budget: 320 px, batch 32, 24,000 steps (unless given). The CPU
default (1,000 steps at 160 px) shows the benchmark runs; SSDLite from scratch reaches too
small an mAP there to compare trainers.
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


TORCH_TRAIN_SCRIPT = r"""
import json, os, sys, time
import numpy as np, torch, torchvision
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
torch.set_num_threads(int(os.environ.get("SSD_JAX_TORCH_THREADS", "2")))
records_file, out, seed, steps, batch, size, lr, wd, momentum, points = sys.argv[1:11]
seed, steps, batch, size, points = int(seed), int(steps), int(batch), int(size), [int(p) for p in points.split(",")]
lr, wd, momentum = float(lr), float(wd), float(momentum)
spec = json.load(open(records_file))
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(seed)
m = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                               num_classes=spec["num_classes"] + 1)
m.transform.min_size, m.transform.max_size, m.transform.fixed_size = (size,), size, (size, size)
m.to(device).train()
# the detection reference's "ssdlite" preset (references/detection/presets.py, transforms v2)
aug = T.Compose([T.RandomIoUCrop(), T.RandomHorizontalFlip(p=0.5), T.ToImage(), T.ToDtype(torch.float, scale=True),
                 T.SanitizeBoundingBoxes()])

class Data(torch.utils.data.Dataset):
    def __len__(self):
        return len(spec["records"])

    def __getitem__(self, i):
        r = spec["records"][i]
        image = Image.open(r["path"]).convert("RGB")
        boxes = tv_tensors.BoundingBoxes(torch.tensor(r["boxes"], dtype=torch.float32).reshape(-1, 4), format="XYXY",
                                         canvas_size=(image.height, image.width))
        return aug(image, {"boxes": boxes, "labels": torch.tensor(r["labels"], dtype=torch.int64)})

g = torch.Generator().manual_seed(seed)
loader = torch.utils.data.DataLoader(Data(), batch_size=batch, sampler=torch.utils.data.RandomSampler(Data(), generator=g,
                                     replacement=True, num_samples=steps * batch), collate_fn=lambda b: tuple(zip(*b)),
                                     num_workers=int(os.environ.get("SSD_JAX_TORCH_WORKERS", "0")), drop_last=True)
opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
trained, step, t0, log = 0.0, 0, time.perf_counter(), []
for images, targets in loader:
    images = [x.to(device) for x in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    losses = m(images, targets)
    loss = sum(losses.values())
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    step += 1
    if step in points:
        float(loss)  # waits for the device
        trained += time.perf_counter() - t0
        np.savez(f"{out}_step{step}.npz", **{k: v.detach().cpu().numpy() for k, v in m.state_dict().items()})
        log.append({"step": step, "minutes": trained / 60, "loss": float(loss)})
        print(json.dumps(log[-1]), flush=True)
        t0 = time.perf_counter()
json.dump({"points": log, "versions": f"torch {torch.__version__}, torchvision {torchvision.__version__}",
           "device": str(device)}, open(out + ".json", "w"))
"""


def convergence_config(seed: int, steps: int, batch: int, size: int, points: list[int], cache_dir: str | None):
    """The parity experiment at this budget: a checkpoint at each point, none evaluated
    during training (every point is evaluated afterwards, both sides alike)."""
    from experiments.ssdlite_mobilenetv3_parity import get_config

    c = get_config()
    c.seed = seed
    c.num_steps = steps
    c.model.image_size = size
    c.data.batch_size = batch
    if cache_dir:
        c.data.cache_dir = cache_dir
    c.checkpoint_every = points[0]
    c.keep_checkpoints = len(points)
    c.keep_best = False
    c.eval_every = 0
    c.eval_at_end = False
    c.eval_draw_images = 0
    c.log_every = max(1, points[0] // 10)  # the pace of the 2nd interval stands in for the 1st (compilation)
    c.progress_bar = False
    return c


def train_ours_convergence(workdir: str, config) -> list[dict]:
    """``[{"step", "minutes", "loss"}]`` of each log line: training minutes, the first
    interval (which holds the compilation) counted at the pace of the second, as the
    torchvision side has nothing to compile."""
    from ssd_jax import training_loop
    from ssd_jax.metric_writers import read_metrics

    t0 = time.time()
    training_loop.train_and_evaluate(config, workdir)
    rows = [m for m in read_metrics(workdir) if "loss" in m]
    first = rows[0]
    per_step = (rows[1]["time"] - first["time"]) / (rows[1]["step"] - first["step"]) if len(rows) > 1 else 0.0
    start = first["time"] - per_step * first["step"]
    print(f"  ours: {time.time() - t0:.0f} s in all (compilation, data, checkpoints)", flush=True)
    return [{"step": m["step"], "minutes": (m["time"] - start) / 60, "loss": m["loss"]} for m in rows]


def train_torch_convergence(python: str, source, prefix: str, seed: int, steps: int, batch: int, size: int,
                            points: list[int]) -> dict:
    o = OPTIMIZERS["sgd"]
    spec = {"num_classes": source.num_classes, "records": [
        {"path": r.image_path, "boxes": r.boxes[~r.difficult].tolist(), "labels": r.labels[~r.difficult].tolist()}
        for r in source.records]}
    with open(prefix + "_records.json", "w") as f:
        json.dump(spec, f)
    proc = subprocess.run([python, "-c", TORCH_TRAIN_SCRIPT, prefix + "_records.json", prefix, str(seed), str(steps),
                           str(batch), str(size), str(o["lr"] * batch / o["lr_batch"]), str(o["weight_decay"]),
                           str(o["momentum"]), ",".join(map(str, points))], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"torchvision training failed:\n{proc.stderr[-3000:]}")
    with open(prefix + ".json") as f:
        return json.load(f)


class _VocAndCoco:
    """Both evaluators fed by one pass of the predictions."""

    def __init__(self, source, eval_settings):
        from ssd_jax import builders

        self.voc = builders.build_evaluator(source, eval_settings, "voc")
        self.coco = builders.build_evaluator(source, eval_settings, "coco")

    def reset(self):
        self.voc.reset()
        self.coco.reset()

    def add(self, ids, detections):
        self.voc.add(ids, detections)
        self.coco.add(ids, detections)

    def compute(self):
        return {"voc_map": float(self.voc.compute()["mAP"]), "coco_ap": float(self.coco.compute()["AP"])}


def make_point_evaluator(run):
    """``evaluate(params, model_state) -> {"voc_map", "coco_ap"}``: VOC mAP@0.5 (11-point)
    and COCO AP of one set of weights in ``run``'s network, through our eval pipeline and
    ``detect`` (compiled once for all the points)."""
    from ssd_jax import builders
    from ssd_jax.evaluation import loop as eval_loop

    predict = builders.build_predict_fn(run.graphdef, run.model.spec, run.settings)
    pcfg = builders.eval_pipeline_config(run.settings, run.model.spec.image_size, 16)
    evaluator = _VocAndCoco(run.eval_source, run.settings.eval)

    def evaluate(params, model_state):
        result, _ = eval_loop.evaluate(predict, params, model_state, run.eval_source, pcfg, run.mesh, evaluator)
        return {k: result[k] for k in ("voc_map", "coco_ap")}

    return evaluate


def torch_weights(run, sd: dict):
    """torchvision's state dict in our network of ``run``: ``(params, model_state)``."""
    from flax import nnx

    from ssd_jax import builders, parallel
    from ssd_jax.models import params_io, ssd, torchvision_import as ti

    params, stats, num_classes = ti.from_torchvision_ssdlite_v3(sd)
    model = builders.build_model(run.settings.model, num_classes, nnx.Rngs(0))  # at the run's image size
    params_io.assign(model, params, strict=True)
    params_io.assign(model, stats, variables=nnx.BatchStat, strict=True)
    _, p, s = ssd.split(model)
    return parallel.replicate(p, run.mesh), parallel.replicate(s, run.mesh)


def time_to_reach(points: list[dict], target: float) -> float | None:
    """Training minutes at which the mAP first reaches ``target``, linear between points
    (from 0 at minute 0); None if it never does."""
    prev_m, prev_v = 0.0, 0.0
    for p in points:
        if p["voc_map"] >= target:
            if p["voc_map"] == prev_v:
                return p["minutes"]
            return prev_m + (target - prev_v) / (p["voc_map"] - prev_v) * (p["minutes"] - prev_m)
        prev_m, prev_v = p["minutes"], p["voc_map"]
    return None


def plot_convergence(runs: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (side, seed), points in sorted(runs.items()):
        ax.plot([0] + [p["minutes"] for p in points], [0] + [p["voc_map"] for p in points],
                "-o" if side == "ours" else "--s", ms=4, label=f"{side}, seed {seed}")
    ax.set_xlabel("training minutes")
    ax.set_ylabel("VOC mAP@0.5 (built-in val)")
    ax.set_title("SSDLite-MobileNetV3 from scratch, SSDLite recipe", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_convergence(args) -> int:
    from ssd_jax import builders, restore
    from ssd_jax.config import Settings

    steps = args.steps
    points = [round(steps * (i + 1) / args.points) for i in range(args.points)]
    seeds = [int(x) for x in args.seeds.split(",") if x]
    train_src = builders.build_source(Settings.from_config(
        convergence_config(0, steps, args.batch, args.image_size, points, args.cache_dir)).data, "train")
    runs: dict[tuple[str, int], list[dict]] = {}
    versions = ""
    for seed in seeds:
        workdir = os.path.join(args.out, f"ours_seed{seed}")
        if os.path.isdir(workdir):
            shutil.rmtree(workdir)
        print(f"[seed {seed}] ours: {steps} steps at {args.image_size} px, batch {args.batch} ...", flush=True)
        timeline = {r["step"]: r for r in train_ours_convergence(
            workdir, convergence_config(seed, steps, args.batch, args.image_size, points, args.cache_dir))}
        saved = restore.checkpoint_steps(workdir)
        missing = sorted(set(points) - set(saved))
        if missing:
            raise RuntimeError(f"ours: no checkpoint at steps {missing} (saved: {saved})")
        ours, evaluate = [], None
        for step in points:
            run = restore.restore_run(workdir, step)
            evaluate = evaluate or make_point_evaluator(run)
            ours.append({"step": step, "minutes": timeline[step]["minutes"], **evaluate(run.params, run.model_state)})
            print(f"  ours step {step}: {ours[-1]}", flush=True)
        runs[("ours", seed)] = ours
        if args.torch:
            prefix = os.path.join(args.out, f"torchvision_seed{seed}")
            print(f"[seed {seed}] torchvision: {steps} steps ...", flush=True)
            tv = train_torch_convergence(args.torch, train_src, prefix, seed, steps, args.batch, args.image_size, points)
            versions = tv["versions"] + f" on {tv['device']}"
            runs[("torchvision", seed)] = [
                {"step": p["step"], "minutes": p["minutes"],
                 **evaluate(*torch_weights(run, dict(np.load(f"{prefix}_step{p['step']}.npz"))))}
                for p in tv["points"]]
    print(f"\nSSDLite-MobileNetV3 from scratch on the built-in set: {args.image_size} px, batch {args.batch}, "
          f"{steps} steps, seeds {seeds}{'; ' + versions if versions else ''}")
    print(f"{'side':12} {'seed':>4} {'step':>7} {'train min':>10} {'VOC mAP':>8} {'COCO AP':>8}")
    for (side, seed), pts in sorted(runs.items()):
        for p in pts:
            print(f"{side:12} {seed:>4} {p['step']:>7} {p['minutes']:>10.2f} {p['voc_map']:>8.4f} {p['coco_ap']:>8.4f}")
    summary = {}
    if args.torch:
        final_ours = np.mean([runs[("ours", s)][-1]["voc_map"] for s in seeds])
        final_tv = np.mean([runs[("torchvision", s)][-1]["voc_map"] for s in seeds])
        summary["final_map_ratio"] = float(final_ours / final_tv) if final_tv > 0 else None
        reach = []
        for s in seeds:
            target = runs[("torchvision", s)][-1]["voc_map"]
            t = time_to_reach(runs[("ours", s)], target)
            reach.append(None if t is None else t / runs[("torchvision", s)][-1]["minutes"])
        summary["time_to_tv_final_map_ratio"] = reach
        print(f"final VOC mAP, mean over seeds: ours {final_ours:.4f}, torchvision {final_tv:.4f}, ratio "
              f"{summary['final_map_ratio'] if summary['final_map_ratio'] is None else round(summary['final_map_ratio'], 3)}")
        print("our training time to reach torchvision's final mAP / torchvision's time, per seed: "
              + ", ".join("not reached" if r is None else f"{r:.2f}" for r in reach))
    png = os.path.join(args.out, "convergence_map.png")
    plot_convergence(runs, png)
    with open(os.path.join(args.out, "convergence.json"), "w") as f:
        json.dump({"steps": steps, "batch": args.batch, "image_size": args.image_size, "versions": versions,
                   "runs": {f"{side}_seed{seed}": pts for (side, seed), pts in runs.items()}, "summary": summary}, f,
                  indent=1)
    print(f"wrote {png} and convergence.json")
    return 0


def _prepare(p: argparse.ArgumentParser, args) -> None:
    """Check ``--torch`` (or say that the torchvision half is skipped) and make ``--out``."""
    if args.torch and not shutil.which(args.torch) and not os.path.exists(args.torch):
        p.error(f"--torch {args.torch}: not found")
    if not args.torch:
        print("torchvision half skipped: no --torch python (or $SSD_JAX_TORCH_PYTHON) given; our side only")
    os.makedirs(args.out, exist_ok=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="300 (--convergence: 1,000; --full: 24,000)")
    p.add_argument("--batch", type=int, default=None, help="4 (--convergence: 16; --full: 32)")
    p.add_argument("--optimizers", default="sgd,adamw")
    p.add_argument("--torch", default=os.environ.get("SSD_JAX_TORCH_PYTHON"),
                   help="a python with torch + torchvision (default $SSD_JAX_TORCH_PYTHON)")
    p.add_argument("--out", default="runs/bench_convergence")
    p.add_argument("--convergence", action="store_true", help="train both sides to an mAP instead")
    p.add_argument("--image-size", type=int, default=None, help="--convergence: 160 (--full: 320)")
    p.add_argument("--points", type=int, default=4, help="--convergence: evaluated points per run")
    p.add_argument("--seeds", default="0,1", help="--convergence: seeds of each side")
    p.add_argument("--full", action="store_true", help="--convergence on a GPU: 320 px, batch 32, 24,000 steps")
    p.add_argument("--cache-dir", default=None, help="the built-in dataset's folder (default: its cache)")
    args = p.parse_args(argv)
    if args.convergence:
        args.steps = args.steps or (24_000 if args.full else 1000)
        args.batch = args.batch or (32 if args.full else 16)
        args.image_size = args.image_size or (320 if args.full else 160)
        if args.steps < args.points or args.points < 1 or args.batch < 2:
            p.error("--convergence needs --steps >= --points >= 1 and --batch >= 2")
        _prepare(p, args)
        return run_convergence(args)
    args.steps, args.batch = args.steps or 300, args.batch or 4
    names = [n for n in args.optimizers.split(",") if n]
    unknown = sorted(set(names) - set(OPTIMIZERS))
    python = args.torch
    if unknown or (python and args.steps < 70) or args.steps < 1 or args.batch < 2:
        p.error(f"--optimizers from {sorted(OPTIMIZERS)} (got {unknown}), --steps >= 70 with torch (20-step means "
                f"after step 50), --batch >= 2 (batch norm on the 1x1 maps)")
    _prepare(p, args)

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
            window = min(20, len(loss))
            print(f"{name}: ours only, loss {loss[0]:.3f} -> {running_mean(loss, window)[-1]:.3f} ({window}-step mean), "
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
