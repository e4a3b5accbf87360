"""Images per second of the training input pipeline.

Built-in dataset (generated into the cache on first use, not timed), 300x300 inputs,
batch 32, full SSD augmentation, at 0 and 2 worker processes. Run from the repository
root: ``python benchmarks/bench_data.py [--batches N] [--cache-dir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from ssd_jax import run_info, runtime  # noqa: E402

if __name__ == "__main__":  # allocator, XLA flags, cache: as launch.py (ssd_jax/runtime.py)
    runtime.setup_process("train")

from ssd_jax.data.builtin import BuiltinSpec, builtin_source  # noqa: E402
from ssd_jax.data.pipeline import PipelineConfig, train_dataset  # noqa: E402


def measure(source, workers: int, batches: int, warmup: int) -> float:
    cfg = PipelineConfig(image_size=300, batch_size=32, num_workers=workers, seed=0)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    source = builtin_source("train", BuiltinSpec(), args.cache_dir)
    print(f"machine: {run_info.cpu_model()}, {len(os.sched_getaffinity(0))} CPUs; "
          f"python {platform.python_version()}")
    print(f"dataset: built-in train, {len(source)} images; input 300x300, batch 32, SSD augmentation")
    for workers in args.workers:
        rate = measure(source, workers, args.batches, args.warmup)
        print(f"workers={workers}: {rate:7.1f} images/s  ({args.batches} batches after {args.warmup} warm-up)")


if __name__ == "__main__":
    main()
