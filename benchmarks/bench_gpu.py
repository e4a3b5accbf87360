"""Accelerator benchmark: SSD300-VGG16 train / inference speed, MFU, and the input pipeline.

Run through ``benchmarks/gpu.sh`` on a GPU machine (one H100/H200); each part is its own
process so one failure or timeout leaves the others' numbers:

    python benchmarks/bench_gpu.py jax   --out OUT/jax.json    # our train step and inference
    python benchmarks/bench_gpu.py torch --out OUT/torch.json  # torchvision's, same batches
    python benchmarks/bench_gpu.py data  --out OUT/data.json   # grain pipeline, 16 workers
    python benchmarks/bench_gpu.py table OUT/*.json            # the markdown tables
    python benchmarks/bench_gpu.py hloflops --into OUT/jax.json  # redo FLOPs (any machine)

``jax`` cases, in this order (results are rewritten to ``--out`` after each one):

(order: bf16 train, bf16 inference, f32 train, files, augcost, ssdlite, predict, wgrad;
``--parts`` picks among them, ``--batch-sizes`` sets the train rows' batches, default 32,64)

* ``train`` SSD300-VGG16, 21 classes: the project's real train step (``match_batch`` +
  ``multibox_loss`` + SGD-momentum with weight decay, jitted with the state donated),
  bf16 compute (``f32``: f32 compute) at batch 32 and 64. Data from memory: one fixed
  batch already on the device (random image, 8 random boxes per image).
* ``infer`` the network alone (inference mode), bf16, batch 32 / 64 / 1; ``predict`` the
  network + ``postprocess.detect`` (per-class NMS, 200 detections) at batch 32.
* ``ssdlite`` SSDLite-MobileNetV2 320px train step, bf16, batch 64.
* ``wgrad`` the bf16 batch-32 train step with the CPU's shifted-matmul kernel gradient forced
  on (``resolve_conv_choices("shifted")``): checks that GPUs are right to keep cuDNN's.
* ``files`` the bf16 train step fed by the grain pipeline from files (``--workers``
  processes, 300 px, full SSD augmentation), data included: the built-in set and VOC-size
  JPEGs (500x375, written on the machine; ``--files``), the augmentation on the host
  (float batches) and on the device (uint8 canvases, augmentation compiled into the step).
  Timing starts once the step has run for 2 s, so what the workers buffered during the
  compilation is not counted.
* ``augcost`` the bf16 step with the device augmentation on a canvas batch in memory
  (512 px canvases): with ``train``, the time the augmentation adds to a step.

MFU: the step's FLOPs from XLA's HLO cost analysis of the lowered step, over the step time and
the card's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s; f32 rows use the same peak, so
they read as a fraction of what bf16 could do).

``--tiny``: batch 2, one step per case, the built-in set cut to 64 images: a smoke test of the
script on a CPU (no meaningful numbers).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import glob
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

#: Dense bf16 tensor-core peak, FLOP/s, by a substring of ``device_kind``.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def _now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def _write(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _time_steps(run_one, min_steps: int, min_seconds: float) -> tuple[float, int]:
    """Seconds per step over at least ``min_steps`` steps and ``min_seconds``; ``run_one``
    returns something to block on (blocked only at the end of each chunk)."""
    import jax

    steps, start = 0, time.perf_counter()
    while True:
        out = None
        for _ in range(min_steps):
            out = run_one()
        jax.block_until_ready(out)
        steps += min_steps
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / steps, steps


def _flops(lowered) -> float:
    """FLOPs of a lowered (not yet compiled) program: XLA's HLO cost analysis, which counts
    convolutions on every backend (the compiled GPU program's analysis leaves out cuDNN's
    convolution calls)."""
    try:
        cost = lowered.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports it
        return float("nan")
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def _peak(device_kind: str) -> float:
    for key, value in PEAK_BF16.items():
        if key in device_kind:
            return value
    return float("nan")


def _random_batch(batch: int, size: int, boxes: int = 8, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0.0, 0.7, size=(batch, boxes, 2))
    wh = rng.uniform(0.05, 0.3, size=(batch, boxes, 2))
    return {
        "image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
        "boxes": np.concatenate([xy, np.minimum(xy + wh, 1.0)], -1).astype(np.float32),
        "labels": rng.integers(1, 21, size=(batch, boxes)).astype(np.int32),
    }


def jax_train_case(model_name: str, batch: int, dtype: str, steps: int, seconds: float, *, image_size=None,
                   source_iter=None, lower_only: bool = False, wgrad: str = "auto", canvas: int = 0) -> dict:
    """The project's train step (match + multibox loss + SGD) on one device. ``canvas``:
    batches of uint8 canvases (``data.augment_on='device'``), the full SSD augmentation
    compiled into the step; from memory, one fixed canvas batch."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ssd_jax import anchors, models, parallel
    from ssd_jax import train_step as train_lib

    kw = dict(compute_dtype=jnp.bfloat16 if dtype == "bf16" else jnp.float32, rngs=nnx.Rngs(0),
              conv=models.resolve_conv_choices(wgrad))
    if image_size:
        kw["image_size"] = image_size
    model = models.build_model(model_name, 20, **kw)
    size = model.spec.image_size
    tx, schedule = train_lib.make_optimizer(train_lib.OptimConfig())
    graphdef, state = train_lib.create_train_state(model, tx)
    mesh = parallel.make_mesh()
    state = parallel.replicate(state, mesh)
    inner = train_lib.make_train_step(graphdef, tx, schedule, anchors.generate(model.spec))
    keys = ("image", "boxes", "labels")
    if canvas:
        from ssd_jax import normalization
        from ssd_jax.data import device_augment, transforms

        keys += ("size",)

        def train_step(state, b):
            k = device_augment.image_keys(0, state.step, b["image"].shape[0])
            return inner(state, device_augment.augment(k, b, transforms.AugmentConfig(), size, normalization.TORCHVISION))
    else:
        train_step = inner
    step_fn = parallel.jit_train_step(train_step, mesh, state)
    if source_iter is None:
        host = _random_batch(batch, size)
        if canvas:
            import numpy as np

            rng = np.random.default_rng(1)
            host["image"] = rng.integers(0, 256, (batch, canvas, canvas, 3), dtype=np.uint8)
            host["size"] = np.tile(np.asarray([375, 500], np.int32), (batch, 1))
        batch_dev = parallel.global_batch(host, mesh, batch)

        def next_batch():
            return batch_dev
    else:
        def next_batch():
            host = next(source_iter)
            return parallel.global_batch({k: host[k] for k in keys}, mesh, batch)

    t0 = time.perf_counter()
    lowered = step_fn.lower(state, next_batch())
    if lower_only:
        return {"flops_per_step": _flops(lowered)}
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops = _flops(lowered)
    holder = [state]

    def run_one():
        holder[0], metrics = compiled(holder[0], next_batch())
        return metrics["loss"]

    t_warm = time.perf_counter()
    while True:  # warm-up (autotuning, allocator); from a pipeline, also drain what it buffered meanwhile
        for _ in range(3):
            loss = run_one()
        jax.block_until_ready(loss)
        if source_iter is None or time.perf_counter() - t_warm >= min(seconds, 2.0):
            break
    step_s, n = _time_steps(run_one, steps, seconds)
    final_loss = float(run_one())
    device = jax.devices()[0]
    peak = _peak(device.device_kind)
    out = {"kind": "train", "model": model_name, "batch": batch, "dtype": dtype, "image_size": size,
           "imgs_per_s": batch / step_s, "step_ms": step_s * 1e3, "steps_timed": n, "compile_s": compile_s,
           "flops_per_step": flops, "tflops_per_s": flops / step_s / 1e12, "mfu_bf16_peak": flops / step_s / peak,
           "loss_finite": bool(final_loss == final_loss and abs(final_loss) != float("inf")),
           "data": "memory" if source_iter is None else "grain pipeline",
           "augment_on": "device" if canvas else ("host" if source_iter is not None else "none"),
           **({"canvas": canvas} if canvas else {})}
    del holder, state, compiled
    return out


def jax_infer_case(model_name: str, batch: int, dtype: str, steps: int, seconds: float, with_detect: bool,
                   lower_only: bool = False, wgrad: str = "auto") -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ssd_jax import inference, models

    model = models.build_model(model_name, 20, compute_dtype=jnp.bfloat16 if dtype == "bf16" else jnp.float32,
                               conv=models.resolve_conv_choices(wgrad), rngs=nnx.Rngs(0))
    graphdef, params, model_state = models.split(model)
    x = jax.device_put(_random_batch(batch, model.spec.image_size)["image"])
    if with_detect:
        fn = inference.make_predict_fn(graphdef, model.spec)
    else:
        fn = jax.jit(lambda p, s, x: models.apply(graphdef, p, s, x, train=False)[0])
    t0 = time.perf_counter()
    lowered = fn.lower(params, model_state, x)
    if lower_only:
        return {"flops_per_step": _flops(lowered)}
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops = _flops(lowered)

    def run_one():
        return compiled(params, model_state, x)

    for _ in range(3):
        jax.block_until_ready(run_one())
    step_s, n = _time_steps(run_one, steps, seconds)
    peak = _peak(jax.devices()[0].device_kind)
    return {"kind": "predict" if with_detect else "infer", "model": model_name, "batch": batch, "dtype": dtype,
            "image_size": model.spec.image_size, "imgs_per_s": batch / step_s, "step_ms": step_s * 1e3,
            "steps_timed": n, "compile_s": compile_s, "flops_per_step": flops,
            "tflops_per_s": flops / step_s / 1e12, "mfu_bf16_peak": flops / step_s / peak, "data": "memory"}


def cmd_jax(args) -> None:
    import jax

    info = {"date": _now(), "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
            "python": platform.python_version()}
    try:
        import flax
        info["flax"] = flax.__version__
    except Exception:  # noqa: BLE001
        pass
    results = {"info": info, "cases": []}
    _write(args.out, results)
    print(json.dumps(info), flush=True)
    tiny = args.tiny
    steps, seconds = (1, 0.0) if tiny else (args.steps, args.seconds)
    b = (2, 2) if tiny else tuple(int(n) for n in args.batch_sizes.split(","))
    plan = []  # most wanted first: a timeout cuts the tail
    if "train" in args.parts:
        plan += [("train", "ssd300_vgg16", n, "bf16") for n in b]
    if "infer" in args.parts:
        plan += [("infer", "ssd300_vgg16", n, "bf16") for n in ((2,) if tiny else (32, 64, 1))]
    if "f32" in args.parts:
        plan += [("train", "ssd300_vgg16", n, "f32") for n in b]
    if "files" in args.parts:  # from files, both augmentation modes, built-in and VOC-size JPEGs
        plan += [(f"files-{where}-{files}", "ssd300_vgg16", n, "bf16") for files in args.files.split(",")
                 for where in ("device", "host") for n in b]
    if "augcost" in args.parts:  # the device augmentation inside the step, batches in memory
        plan += [("augcost", "ssd300_vgg16", n, "bf16") for n in b]
    if "ssdlite" in args.parts and not tiny:
        plan += [("ssdlite", "ssdlite_mobilenetv2", 64, "bf16")]
    if "infer" in args.parts:
        plan += [("predict", "ssd300_vgg16", b[0], "bf16")]
    if "wgrad" in args.parts and not tiny:
        plan += [("wgrad", "ssd300_vgg16", 32, "bf16")]
    for part, model_name, batch, dtype in plan:
        label = f"{part} {model_name} b{batch} {dtype}"
        print(f"[{_now()}] {label} ...", flush=True)
        try:
            if part in ("train", "ssdlite"):
                row = jax_train_case(model_name, batch, dtype, steps, seconds,
                                     image_size=320 if part == "ssdlite" else None)
            elif part == "wgrad":
                row = jax_train_case(model_name, batch, dtype, steps, seconds, wgrad="shifted")
                row["kind"] = "train, shifted-matmul wgrad"
            elif part.startswith("files-"):
                _, where, files = part.split("-")
                row = _e2e_case(model_name, batch, dtype, steps, seconds, args,
                                canvas=_canvas(args, files) if where == "device" else 0, voc=files == "voc")
            elif part == "augcost":
                row = jax_train_case(model_name, batch, dtype, steps, seconds, canvas=_canvas(args, "voc"))
            else:
                row = jax_infer_case(model_name, batch, dtype, steps, seconds, with_detect=part == "predict")
        except Exception as e:  # noqa: BLE001 - record and go on to the next case
            row = {"kind": part, "model": model_name, "batch": batch, "dtype": dtype, "error": repr(e)[:500]}
        results["cases"].append(row)
        _write(args.out, results)
        print(f"[{_now()}] {label}: {json.dumps(row)}", flush=True)
        jax.clear_caches()
        gc.collect()


_VOC_FILES: dict = {}


def _canvas(args, files: str) -> int:
    """``--canvas``, else what ``data.canvas_size=0`` gives for these files: the built-in
    set's largest side (its defaults) or 512 for VOC-size files."""
    from ssd_jax.data.config import CANVAS_SIDE, DataConfig

    return args.canvas or (CANVAS_SIDE if files == "voc" else DataConfig().canvas_side)


def _e2e_case(model_name, batch, dtype, steps, seconds, args, canvas: int = 0, voc: bool = False,
              image_size: int = 300) -> dict:
    """The step fed by the grain pipeline from files: the built-in set, or VOC-size JPEGs
    (500x375) written once on this machine from it (``bench_data.voc_size_source``)."""
    import tempfile

    from ssd_jax.data.builtin import BuiltinSpec, builtin_source
    from ssd_jax.data.pipeline import PipelineConfig, train_dataset

    spec = BuiltinSpec(num_train=64, num_val=8) if args.tiny else BuiltinSpec()
    source = builtin_source("train", spec, args.cache_dir, workers=args.workers, progress=False)
    if voc:
        if "source" not in _VOC_FILES:
            from bench_data import voc_size_source

            folder = tempfile.mkdtemp(prefix="ssd_jax_voc_size_")
            _VOC_FILES["source"] = voc_size_source(source, folder, min(len(source), 64 if args.tiny else 2000))
        source = _VOC_FILES["source"]
    cfg = PipelineConfig(image_size=image_size, batch_size=batch, max_boxes=16, num_workers=args.workers, seed=0,
                         canvas=canvas)
    it = iter(train_dataset(source, cfg, process_index=0, process_count=1))
    try:
        row = jax_train_case(model_name, batch, dtype, steps, seconds, source_iter=it, canvas=canvas,
                             image_size=image_size)
    finally:
        it.close()
    row["workers"] = args.workers
    row["files"] = "VOC-size 500x375 JPEG" if voc else "built-in"
    return row


TORCH_DOC = "torchvision ssd300_vgg16 (21 classes) full train step: model(images, targets) incl. its matching and loss"


def cmd_torch(args) -> None:
    import torch
    import torchvision

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    info = {"date": _now(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "what": TORCH_DOC}
    results = {"info": info, "cases": []}
    _write(args.out, results)
    tiny = args.tiny
    plan = [("train", 2, "f32")] if tiny else [("train", 32, "bf16"), ("train", 32, "f32"), ("train", 64, "bf16"),
                                              ("predict", 32, "bf16")]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for kind, batch, dtype in plan:
        print(f"[{_now()}] torch {kind} b{batch} {dtype} ...", flush=True)
        try:
            torch.manual_seed(0)
            m = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).to(dev)
            data = _random_batch(batch, 300)
            images = [torch.from_numpy(im).permute(2, 0, 1).contiguous().to(dev) for im in data["image"]]
            targets = [{"boxes": torch.from_numpy(bx * 300.0).to(dev), "labels": torch.from_numpy(lb).long().to(dev)}
                       for bx, lb in zip(data["boxes"], data["labels"])]
            amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
            if kind == "train":  # "predict": model(images) in eval mode, its transform + postprocess included
                m.train()
                opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

                def step():
                    opt.zero_grad(set_to_none=True)
                    with amp:
                        losses = m(images, targets)
                        loss = losses["bbox_regression"] + losses["classification"]
                    loss.backward()
                    opt.step()
            else:
                m.eval()

                def step():
                    with torch.no_grad(), amp:
                        m(images)
            for _ in range(3):
                step()
            sync()
            n, start = 0, time.perf_counter()
            while True:
                for _ in range(1 if tiny else args.steps):
                    step()
                sync()
                n += 1 if tiny else args.steps
                if time.perf_counter() - start >= (0.0 if tiny else args.seconds):
                    break
            step_s = (time.perf_counter() - start) / n
            row = {"kind": kind, "batch": batch, "dtype": dtype, "imgs_per_s": batch / step_s,
                   "step_ms": step_s * 1e3, "steps_timed": n}
            del m
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001
            row = {"kind": kind, "batch": batch, "dtype": dtype, "error": repr(e)[:500]}
        results["cases"].append(row)
        _write(args.out, results)
        print(f"[{_now()}] torch: {json.dumps(row)}", flush=True)


def cmd_data(args) -> None:
    from ssd_jax.data.builtin import BuiltinSpec, builtin_source
    from ssd_jax.data.pipeline import PipelineConfig, train_dataset

    spec = BuiltinSpec(num_train=64, num_val=8) if args.tiny else BuiltinSpec()
    t0 = time.perf_counter()
    source = builtin_source("train", spec, args.cache_dir, workers=args.workers, progress=False)
    gen_s = time.perf_counter() - t0
    results = {"info": {"date": _now(), "cpus": len(os.sched_getaffinity(0)), "images": len(source),
                        "generate_or_open_s": gen_s}, "cases": []}
    for workers in sorted({0 if args.tiny else 8, args.workers}):
        batches, warmup = (2, 1) if args.tiny else (args.batches, 5)
        cfg = PipelineConfig(image_size=300, batch_size=32, max_boxes=16, num_workers=workers, seed=0)
        it = iter(train_dataset(source, cfg, process_index=0, process_count=1))
        try:
            t0 = time.perf_counter()
            for _ in range(warmup):
                next(it)
            startup_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            rate = batches * 32 / (time.perf_counter() - t0)
        finally:
            it.close()
        row = {"kind": "data", "workers": workers, "batch": 32, "imgs_per_s": rate, "batches_timed": batches,
               "startup_s": startup_s}
        results["cases"].append(row)
        _write(args.out, results)
        print(f"[{_now()}] data: {json.dumps(row)}", flush=True)


def cmd_hloflops(args) -> None:
    """Fill in HLO FLOPs (and TFLOP/s, MFU) of a ``jax.json`` whose programs were analysed
    after compilation (a GPU's compiled analysis leaves out cuDNN convolutions): each case is
    lowered again here, on any backend, with the kernel gradient the GPU used."""
    with open(args.into) as f:
        results = json.load(f)
    kind = results["info"]["devices"][0]
    peak = _peak(kind)
    for row in results["cases"]:
        if "error" in row:
            continue
        wgrad = "shifted" if "shifted" in row["kind"] else "xla"
        if row["kind"] in ("infer", "predict"):
            f = jax_infer_case(row["model"], row["batch"], row["dtype"], 0, 0, row["kind"] == "predict", lower_only=True,
                               wgrad=wgrad)
        else:
            f = jax_train_case(row["model"], row["batch"], row["dtype"], 0, 0,
                               image_size=row.get("image_size"), lower_only=True, wgrad=wgrad)
        step_s = row["step_ms"] / 1e3
        row["flops_compiled"] = row.get("flops_compiled", row["flops_per_step"])
        row["flops_per_step"] = f["flops_per_step"]
        row["tflops_per_s"] = f["flops_per_step"] / step_s / 1e12
        row["mfu_bf16_peak"] = f["flops_per_step"] / step_s / peak
        print(f"{row['kind']} {row['model']} b{row['batch']} {row['dtype']}: {f['flops_per_step'] / 1e9:.1f} GFLOP/step, "
              f"MFU {row['mfu_bf16_peak'] * 100:.1f}%", flush=True)
    results["info"]["flops_note"] = "HLO FLOPs of the lowered programs, recomputed by bench_gpu.py hloflops"
    _write(args.into, results)


def _fmt(v, spec=".1f"):
    return "-" if v is None or v != v else format(v, spec)


def cmd_table(args) -> None:
    parts = {}
    for path in args.files:
        for p in glob.glob(path):
            with open(p) as f:
                loaded = json.load(f)
            key = os.path.basename(p).split(".")[0].split("_")[-1]  # [prefix_]jax.json
            if key in parts:  # several files of one part (e.g. two jax runs): one table
                parts[key]["cases"] += loaded["cases"]
            else:
                parts[key] = loaded
    jx, tv, data = parts.get("jax"), parts.get("torch"), parts.get("data")
    if jx:
        i = jx["info"]
        print(f"# ssd_jax on {', '.join(i['devices'])} | jax {i['jax']} flax {i.get('flax', '?')} | {i['date']}")
    torch_ref = {}
    if tv:
        i = tv["info"]
        print(f"# torchvision {i['torchvision']} / torch {i['torch']} on {i['device']}: {i['what']}")
        for r in tv["cases"]:
            if "error" not in r:
                kind = "predict" if r["kind"] == "infer" else r["kind"]  # full eval-mode model (older files: "infer")
                torch_ref[(kind, r["batch"], r["dtype"])] = r["imgs_per_s"]
    print()
    print("| case | model | batch | dtype | img/s | step ms | compile s | TFLOP/s | MFU (bf16 peak) | torchvision img/s | ratio |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in (jx or {}).get("cases", []):
        if "error" in r:
            print(f"| {r['kind']} | {r['model']} | {r['batch']} | {r['dtype']} | error: {r['error'][:120]} |||||||")
            continue
        same = r["model"] == "ssd300_vgg16" and r.get("data") == "memory"
        ref = torch_ref.get((r["kind"], r["batch"], r["dtype"])) if same else None
        ratio = r["imgs_per_s"] / ref if ref else None
        where = ", ".join(x for x in (r.get("data") if r.get("data") != "memory" else None, r.get("files"),
                                      "device augmentation" if r.get("augment_on") == "device" else None) if x)
        print(f"| {r['kind']}{' (' + where + ')' if where else ''} | {r['model']} | "
              f"{r['batch']} | {r['dtype']} | {_fmt(r['imgs_per_s'])} | {_fmt(r['step_ms'])} | {_fmt(r['compile_s'])} | "
              f"{_fmt(r['tflops_per_s'])} | {_fmt(r['mfu_bf16_peak'] * 100, '.1f')}% | {_fmt(ref)} | {_fmt(ratio, '.2f')} |")
    memory = {(r["batch"], r["dtype"]): r for r in (jx or {}).get("cases", [])
              if "error" not in r and r["kind"] == "train" and r["model"] == "ssd300_vgg16" and r.get("data") == "memory"
              and r.get("augment_on", "none") == "none"}
    fed = [r for r in (jx or {}).get("cases", []) if "error" not in r and r["kind"] == "train"
           and (r.get("data") != "memory" or r.get("augment_on") == "device") and (r["batch"], r["dtype"]) in memory]
    if fed:
        print()
        print("Against the same step on a batch in memory (same batch size and dtype):")
        print()
        print("| case | batch | img/s | step from memory img/s | ratio | ms added per step |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in fed:
            ref = memory[(r["batch"], r["dtype"])]
            what = ", ".join(x for x in (r.get("files") or "batch in memory", f"{r.get('workers')} workers" if r.get("workers") else None,
                                         f"augmentation on the {r.get('augment_on')}") if x)
            print(f"| {what} | {r['batch']} | {_fmt(r['imgs_per_s'])} | {_fmt(ref['imgs_per_s'])} | "
                  f"{_fmt(r['imgs_per_s'] / ref['imgs_per_s'], '.2f')} | {_fmt(r['step_ms'] - ref['step_ms'], '.2f')} |")
    if tv:
        print()
        print("| torchvision case | batch | dtype | img/s | step ms |")
        print("|---|---:|---|---:|---:|")
        for r in tv["cases"]:
            if "error" in r:
                print(f"| {r['kind']} | {r['batch']} | {r['dtype']} | error: {r['error'][:120]} | |")
            else:
                print(f"| {r['kind']} | {r['batch']} | {r['dtype']} | {_fmt(r['imgs_per_s'])} | {_fmt(r['step_ms'])} |")
    if data:
        i = data["info"]
        print()
        print(f"Input pipeline (built-in dataset, {i['images']} images, 300px, batch 32, full SSD augmentation; "
              f"{i['cpus']} CPUs):")
        print()
        print("| workers | img/s | start-up s |")
        print("|---:|---:|---:|")
        for r in data["cases"]:
            print(f"| {r['workers']} | {_fmt(r['imgs_per_s'])} | {_fmt(r['startup_s'])} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("jax", "torch", "data"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True)
        p.add_argument("--tiny", action="store_true")
        p.add_argument("--steps", type=int, default=10, help="steps per timed chunk")
        p.add_argument("--seconds", type=float, default=3.0, help="time at least this long per case")
        p.add_argument("--workers", type=int, default=16)
        p.add_argument("--batches", type=int, default=60)
        p.add_argument("--cache-dir", default=None)
        p.add_argument("--parts", default="train,infer,f32,files,augcost,ssdlite,wgrad")
        p.add_argument("--batch-sizes", default="32,64", help="jax: the train rows' batch sizes")
        p.add_argument("--files", default="builtin,voc", help="jax: the 'files' rows' data (built-in, VOC-size JPEGs)")
        p.add_argument("--canvas", type=int, default=0,
                       help="canvas side of the device-augmentation rows (0: the dataset's, as data.canvas_size=0)")
    p = sub.add_parser("hloflops")
    p.add_argument("--into", required=True)
    p = sub.add_parser("table")
    p.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    if args.cmd in ("jax", "torch", "data"):
        args.parts = set(args.parts.split(","))
    {"jax": cmd_jax, "torch": cmd_torch, "data": cmd_data, "table": cmd_table, "hloflops": cmd_hloflops}[args.cmd](args)


if __name__ == "__main__":
    main()
