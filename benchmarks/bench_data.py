"""Images per second of the training input pipeline, host augmentation against the device path.

Two kinds of files: the built-in dataset (128-320 px JPEGs, generated into the cache on
first use, not timed) and VOC-size JPEGs (500x375, written into a temporary folder from
the built-in images, not timed). Per file kind and worker count, two pipelines:

* ``host``: decode + the full SSD augmentation in NumPy/Pillow + resize to 300 + normalise
  (batches of float32 network inputs; ``data.augment_on='host'``);
* ``device``: decode into a uint8 canvas only (batches of canvases; ``augment_on='device'``),
  the augmentation left to ``ssd_jax.data.device_augment``.

Then the device augmentation itself: the jitted ``device_augment.augment`` of a batch of 32
canvases to 300x300 on this machine's default JAX device. Run from the repository root:
``python benchmarks/bench_data.py [--batches N] [--workers 0 2] [--canvas 512]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from ssd_jax import run_info, runtime  # noqa: E402

if __name__ == "__main__":  # allocator, XLA flags, cache: as launch.py (ssd_jax/runtime.py)
    runtime.setup_process("train")

import numpy as np  # noqa: E402

from ssd_jax.data.builtin import BuiltinSpec, builtin_source  # noqa: E402
from ssd_jax.data.pipeline import PipelineConfig, train_dataset  # noqa: E402
from ssd_jax.data.records import Record, Source  # noqa: E402

BATCH, SIZE = 32, 300


def voc_size_source(source: Source, folder: str, count: int, size=(500, 375)) -> Source:
    """``count`` of ``source``'s images stretched to ``size`` (w, h), JPEG quality 90, boxes scaled."""
    from PIL import Image

    from ssd_jax.data.images import load_image

    records = []
    for i, r in enumerate(source.records[:count]):
        path = os.path.join(folder, f"{i:05d}.jpg")
        Image.fromarray(load_image(r)).resize(size, Image.BILINEAR).save(path, quality=90)
        scale = np.asarray([size[0] / r.width, size[1] / r.height] * 2, np.float32)
        records.append(Record(image_path=path, boxes=r.boxes * scale, labels=r.labels, difficult=r.difficult,
                              height=size[1], width=size[0], image_id=i))
    return Source(tuple(records), source.class_names, name=f"{source.name} at {size[0]}x{size[1]}")


def measure(source: Source, workers: int, batches: int, warmup: int, canvas: int) -> float:
    cfg = PipelineConfig(image_size=SIZE, batch_size=BATCH, num_workers=workers, seed=0, canvas=canvas)
    it = iter(train_dataset(source, cfg, process_index=0, process_count=1))
    try:
        for _ in range(warmup):  # worker start-up and first buffers are not timed
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * cfg.batch_size / (time.perf_counter() - start)
    finally:
        it.close()


def device_augment_ms(source: Source, canvas: int, repeats: int) -> float:
    """Milliseconds per batch of the compiled device augmentation (full SSD augmentation)."""
    import jax

    from ssd_jax import normalization
    from ssd_jax.data import device_augment, transforms

    cfg = PipelineConfig(image_size=SIZE, batch_size=BATCH, seed=0, canvas=canvas)
    batch = jax.device_put(next(iter(train_dataset(source, cfg, process_index=0, process_count=1))))
    fn = jax.jit(lambda keys, b: device_augment.augment(keys, b, transforms.AugmentConfig(), SIZE,
                                                        normalization.TORCHVISION))
    jax.block_until_ready(fn(device_augment.image_keys(0, 0, BATCH), batch))  # compile
    start = time.perf_counter()
    for step in range(repeats):
        out = fn(device_augment.image_keys(0, step + 1, BATCH), batch)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--canvas", type=int, default=512, help="the device path's canvas side")
    parser.add_argument("--voc-images", type=int, default=400, help="VOC-size files to write")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of the device augmentation")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    import jax

    builtin = builtin_source("train", BuiltinSpec(), args.cache_dir)
    print(f"machine: {run_info.cpu_model()}, {len(os.sched_getaffinity(0))} CPUs; python {platform.python_version()}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"input {SIZE}x{SIZE}, batch {BATCH}; host = decode + SSD augmentation + resize + normalise, "
          f"device = decode into a {args.canvas}x{args.canvas} uint8 canvas")
    with tempfile.TemporaryDirectory() as folder:
        voc = voc_size_source(builtin, folder, args.voc_images)
        print("| files | workers | host img/s | device-path img/s | device / host |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, source in (("built-in (128-320 px)", builtin), ("VOC-size 500x375", voc)):
            for workers in args.workers:
                host = measure(source, workers, args.batches, args.warmup, 0)
                device = measure(source, workers, args.batches, args.warmup, args.canvas)
                print(f"| {name} | {workers} | {host:.1f} | {device:.1f} | {device / host:.2f}x |", flush=True)
        ms = device_augment_ms(voc, args.canvas, args.repeats)
        print(f"device augmentation (jitted, {jax.devices()[0].platform}): {ms:.1f} ms per batch of {BATCH} "
              f"({BATCH / ms * 1e3:.0f} img/s)")


if __name__ == "__main__":
    main()
