"""Shared pieces of the training tests: a tiny config and a fixed tiny batch."""

import numpy as np

from experiments.demo import get_config


def tiny_config(cache_dir, **changes):
    """The demo's runlocal config on the 3-conv ``tiny_cnn`` network at 32 px (compiles in
    seconds), no augmentation randomness beyond the pipeline's seeded one, no progress bar."""
    c = get_config("runlocal")
    c.model.name = "tiny_cnn"
    c.model.image_size = 32
    c.data.cache_dir = str(cache_dir)
    c.data.builtin_num_train = 16
    c.data.builtin_num_val = 4
    c.data.builtin_min_side = 48
    c.data.builtin_max_side = 64
    c.eval_at_end = False
    c.log_every = 1
    for key, value in changes.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def fixed_batch(batch_size=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    boxes = np.zeros((batch_size, 3, 4), np.float32)
    labels = np.zeros((batch_size, 3), np.int32)
    for i in range(batch_size):
        n = 1 + i % 3
        for j in range(n):
            xy = rng.uniform(0.0, 0.5, 2)
            wh = rng.uniform(0.2, 0.5, 2)
            boxes[i, j] = [xy[0], xy[1], xy[0] + wh[0], xy[1] + wh[1]]
            labels[i, j] = 1 + (i + j) % 3
    return {"image": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32), "boxes": boxes, "labels": labels}
