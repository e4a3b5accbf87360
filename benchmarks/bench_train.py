"""Speed of the full train step on this machine: data excluded and included.

    python benchmarks/bench_train.py [--steps 20] [--torch /path/to/torch-venv/bin/python]
        [--cases demo,ssd300] [--json OUT.json]

Cases (the project's own train step: network + ``match_batch`` + ``multibox_loss`` + the
config's optimiser, jitted with the state donated, as ``launch.py train`` runs it):

* ``demo``: ``experiments/demo.py`` as the main job trains it (built-in dataset, its model,
  input size, batch and augmentation).
* ``ssd300``: SSD300-VGG16 at batch 4 on the built-in dataset (300 px, SSD augmentation,
  paper optimiser), the size of the recorded torchvision reference (0.94 img/s at batch 4).

"data excluded" repeats the step on one batch already on the device; "data included" pulls
every batch from the grain pipeline (decode + augmentation in this process, or the config's
workers) and moves it to the device, as the training loop does. With ``--torch`` (a python
with torch + torchvision; default ``$SSD_JAX_TORCH_PYTHON``), torchvision's ``ssd300_vgg16``
train step (``model(images, targets)``: its transform, matching and loss, SGD; 2 threads)
is measured in the same run at the same batch, on random 300x300 images.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

from ssd_jax import host_malloc, run_info, runtime  # noqa: E402 (before JAX starts)

if __name__ == "__main__":  # as launch.py train (ssd_jax/runtime.py)
    runtime.setup_process("train")

#: torchvision 0.29, CPU, 2 threads, on this kind of 2-core machine (the recorded reference).
RECORDED_TORCH_SSD300_B4 = 0.94

TORCH_SCRIPT = r"""
import json, sys, time, torch, torchvision
torch.set_num_threads(2)
batch, steps = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
m = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21)
m.train()
opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
g = torch.Generator().manual_seed(0)
images = [torch.rand(3, 300, 300, generator=g) for _ in range(batch)]
targets = []
for _ in range(batch):
    xy = torch.rand(4, 2, generator=g) * 200
    wh = 20 + torch.rand(4, 2, generator=g) * 80
    targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 21, (4,), generator=g)})
def step():
    opt.zero_grad(set_to_none=True)
    losses = m(images, targets)
    (losses["bbox_regression"] + losses["classification"]).backward()
    opt.step()
step()
start = time.perf_counter()
for _ in range(steps):
    step()
dt = (time.perf_counter() - start) / steps
print(json.dumps({"imgs_per_s": batch / dt, "step_s": dt}))
"""


def case_config(name: str):
    from ssd_jax import config as config_lib

    if name == "demo":
        return config_lib.load_config("experiments.demo")
    if name == "ssd300":
        c = config_lib.load_config("experiments.ssd300_vgg16_voc")
        c.data.dataset = "builtin"
        c.data.batch_size = 4
        c.data.max_boxes = 8
        c.data.num_workers = 0
        return c
    raise ValueError(f"unknown case {name!r}")


def measure(config, steps: int) -> dict:
    import jax
    from flax import nnx

    from ssd_jax import anchors, builders, parallel
    from ssd_jax import train_step as train_lib
    from ssd_jax.config import Settings
    from ssd_jax.data import pipeline

    settings = Settings.from_config(config)
    mesh = parallel.make_mesh()
    bs = settings.data.batch_size
    train_src, _ = builders.build_sources(settings.data)
    model = builders.build_model(settings.model, train_src.num_classes, nnx.Rngs(0))
    tx, schedule = train_lib.make_optimizer(settings.optim)
    graphdef, state = train_lib.create_train_state(model, tx)
    state = parallel.replicate(state, mesh)
    step_fn = parallel.jit_train_step(
        train_lib.make_train_step(graphdef, tx, schedule, anchors.generate(model.spec), settings.loss), mesh, state)
    pcfg = builders.train_pipeline_config(settings, model.spec.image_size, bs)
    it = iter(pipeline.train_dataset(train_src, pcfg))
    try:
        fixed = parallel.global_batch(next(it), mesh, bs)
        t0 = time.perf_counter()
        state, m = step_fn(state, fixed)
        jax.block_until_ready(m["loss"])
        first = time.perf_counter() - t0
        state, m = step_fn(state, fixed)  # one more warm step
        jax.block_until_ready(m["loss"])
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = step_fn(state, fixed)
        jax.block_until_ready(m["loss"])
        excluded = (time.perf_counter() - t0) / steps
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = step_fn(state, parallel.global_batch(next(it), mesh, bs))
            float(m["loss"])  # the loop fetches the loss every step (NaN guard)
        included = (time.perf_counter() - t0) / steps
    finally:
        if hasattr(it, "close"):
            it.close()
    return {"model": config.model.name, "image_size": model.spec.image_size, "batch": bs,
            "workers": config.data.num_workers, "step_s_excluded": excluded, "imgs_per_s_excluded": bs / excluded,
            "steps_per_s_excluded": 1 / excluded, "step_s_included": included, "imgs_per_s_included": bs / included,
            "steps_per_s_included": 1 / included, "compile_s": max(first - excluded, 0.0)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cases", default="demo,ssd300")
    ap.add_argument("--torch", default=os.environ.get("SSD_JAX_TORCH_PYTHON", ""))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import jax

    results = {}
    for name in args.cases.split(","):
        config = case_config(name)
        results[name] = measure(config, args.steps)
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    ref, source = RECORDED_TORCH_SSD300_B4, "recorded"
    if args.torch and os.path.exists(args.torch) and "ssd300" in results:
        r = subprocess.run([args.torch, "-c", TORCH_SCRIPT, str(results["ssd300"]["batch"]), str(min(args.steps, 5))],
                           capture_output=True, text=True, timeout=1800,
                           env=host_malloc.without_added())  # torch as its users run it (glibc defaults)
        if r.returncode == 0:
            ref, source = json.loads(r.stdout.strip().splitlines()[-1])["imgs_per_s"], "measured, same run"
        else:
            print(f"torch reference failed: {r.stderr[-1500:]}", file=sys.stderr)
    print(f"# bench_train {datetime.date.today()} | jax {jax.__version__} | {run_info.cpu_model()}, "
          f"{len(os.sched_getaffinity(0))} CPUs")
    print("| case | model | px | batch | steps/s (data excl.) | img/s (excl.) | steps/s (data incl.) | img/s (incl.) "
          "| compile s | torchvision SSD300 img/s | ratio (excl.) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        t = f"{ref:.2f} ({source})" if name == "ssd300" else "-"
        ratio = f"{r['imgs_per_s_excluded'] / ref:.2f}" if name == "ssd300" else "-"
        print(f"| {name} | {r['model']} | {r['image_size']} | {r['batch']} | {r['steps_per_s_excluded']:.2f} | "
              f"{r['imgs_per_s_excluded']:.2f} | {r['steps_per_s_included']:.2f} | {r['imgs_per_s_included']:.2f} | "
              f"{r['compile_s']:.1f} | {t} | {ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "torch_ssd300": {"imgs_per_s": ref, "source": source}}, f, indent=1)


if __name__ == "__main__":
    main()
