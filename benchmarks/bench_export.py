"""Exported detectors against the JAX inference path, on this machine's CPU.

    python benchmarks/bench_export.py [--repeats 5] [--models ssd300_vgg16,ssdlite_mobilenetv3]

For each model (synthetic weights, 20 classes, the eval defaults: score 0.01, NMS IoU
0.45, 400 candidates per class, K = 200): the time to export it as ONNX (jax2onnx +
``onnx.checker``) and as StableHLO (``jax.export`` + serialise), then latency at batch 1
and throughput at batch 8 of

* ``jax``: the jitted detector (normalisation + network + ``detect``) in this process;
* ``onnxruntime``: the ONNX file on onnxruntime's CPU provider;
* ``stablehlo``: the StableHLO file deserialised and called.

All three run the same program on uint8 images; ratios are against ``jax`` measured in
the same command. Needs the export extra: ``pip install -e '.[export]'``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time

from ssd_jax import run_info, runtime

SETTINGS = dict(score_threshold=0.01, nms_iou=0.45, candidates_per_class=400, max_detections=200,
                variances=(0.1, 0.2))


def _timed(call, repeats: int) -> float:
    """Median seconds of ``call()`` after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name: str, repeats: int, tmp: str) -> list[dict]:
    import jax
    import numpy as np
    from flax import nnx

    from ssd_jax import export, models
    from ssd_jax.models import factory, ssd

    model = models.build_model(name, 20, rngs=nnx.Rngs(0))
    graphdef, params, state = ssd.split(model)
    size = model.spec.image_size
    norm = factory.default_normalization(name)
    # As launch.py export: StableHLO keeps the network's graph, ONNX takes its ONNX form
    # (grouped depthwise convolutions); the same parameters.
    detector = export.make_detector(graphdef, params, state, model.spec, norm, **SETTINGS)
    onnx_detector = export.make_detector(
        export.onnx_graphdef(lambda conv: models.build_model(name, 20, rngs=nnx.Rngs(0), conv=conv)),
        params, state, model.spec, norm, **SETTINGS)
    rng = np.random.default_rng(0)
    images = {n: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) for n in (1, 8)}

    runners, export_s, sizes = {}, {}, {}
    jitted = jax.jit(detector)
    runners["jax"] = lambda x: jax.block_until_ready(jitted(x))
    for fmt in ("onnx", "stablehlo"):
        meta = export.ExportMeta(format=fmt, model=name, image_size=size, normalization=norm,
                                 class_names=tuple(f"class_{i}" for i in range(1, 21)), category_ids=None, **SETTINGS)
        path = os.path.join(tmp, f"{name}.{fmt}")
        start = time.perf_counter()
        export.write(path, fmt, onnx_detector if fmt == "onnx" else detector, meta)
        export_s[fmt] = time.perf_counter() - start
        sizes[fmt] = os.path.getsize(path) / 2**20
        runners["onnxruntime" if fmt == "onnx" else fmt] = export.ExportedDetector(path)

    rows = []
    for path_name, run in runners.items():
        start = time.perf_counter()
        run(images[1])  # first call: compilation (jax, stablehlo) or session warm-up
        first_s = time.perf_counter() - start
        latency = _timed(lambda: run(images[1]), repeats)
        batch8 = _timed(lambda: run(images[8]), max(2, repeats // 2))
        fmt = {"onnxruntime": "onnx"}.get(path_name, path_name)
        rows.append({"model": name, "size": size, "path": path_name, "export_s": export_s.get(fmt),
                     "file_mib": sizes.get(fmt), "first_call_s": first_s, "latency_ms": 1e3 * latency,
                     "imgs_per_s": 8 / batch8})
        print(f"{name} {path_name}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="ssd300_vgg16,ssdlite_mobilenetv3")
    args = ap.parse_args(argv)
    runtime.setup_process("eval")

    import jax
    import onnxruntime

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += bench_model(name, args.repeats, tmp)

    from importlib.metadata import version

    print(f"# bench_export {datetime.date.today()} | jax {jax.__version__} | jax2onnx "
          f"{version('jax2onnx')} | onnxruntime {onnxruntime.__version__} (CPU provider) | "
          f"{run_info.cpu_model()}, {os.cpu_count()} CPUs")
    print("| model | path | export s | file MiB | first call s | batch 1 latency ms | batch 8 img/s | "
          "latency vs jax | img/s vs jax |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    base = {r["model"]: r for r in rows if r["path"] == "jax"}
    for r in rows:
        ref = base[r["model"]]
        export_s = "" if r["export_s"] is None else f"{r['export_s']:.1f}"
        mib = "" if r["file_mib"] is None else f"{r['file_mib']:.1f}"
        print(f"| {r['model']} ({r['size']} px) | {r['path']} | {export_s} | {mib} | {r['first_call_s']:.2f} | "
              f"{r['latency_ms']:.1f} | {r['imgs_per_s']:.2f} | {r['latency_ms'] / ref['latency_ms']:.2f}x | "
              f"{r['imgs_per_s'] / ref['imgs_per_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
