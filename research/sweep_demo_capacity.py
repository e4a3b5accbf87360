"""What limits the demo: capacity, input resolution, or the crop augmentation? Four
variants of ``experiments/demo.py`` at its 3,600 steps (not at equal CPU time), run on a
lent GPU with ``SWEEP=research/sweep_demo_capacity.py bash research/gpu_demo_sweep.sh``;
results in benchmarks/RESULTS.md."""

from research.sweep_demo_recipe import _point, get_config  # noqa: F401 (get_config is the sweep's base)


def get_sweep():
    no_crop = {"data.crop": False}
    return [
        _point(3600, **no_crop, **{"model.width": 2.0, "model.depth": 2}),   # ~4x the CPU cost per step
        _point(3600, **no_crop, **{"model.image_size": 256}),                # 2.5x
        _point(2900, **no_crop, **{"model.depth": 2}),                       # equal CPU time
        _point(3600, **no_crop),                                             # the demo without crops
    ]
