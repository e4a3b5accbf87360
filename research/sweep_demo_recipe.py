"""The main job's recipe search: variants of the demo at equal *CPU* time, run on a GPU.

Each point is ``experiments/demo.py`` changed in one or two ways, with its step count set
so that it would take about as long as the demo's 3,600 steps on the 2-core CPU (the
factor is the point's step time over the demo's, measured on that CPU: top-down fusion
1.0, depth 2 1.24, width 1.5 1.67, batch 8 0.5), plus two points with 2x and 4x the
demo's compute that show how far more steps would go. Too slow to search on the CPU
(~13 minutes a point), so ``research/gpu_demo_sweep.sh`` runs the points in parallel on
a lent GPU; the winner is then checked on the CPU with the real command (benchmarks/RESULTS.md).

    python launch.py sweep --config research/sweep_demo_recipe.py --workdir runs/recipe --list
"""

from experiments.demo import get_config as demo_config


def get_config(arg: str | None = None):
    c = demo_config(arg)
    c.name = "sweep_demo_recipe"
    # The demo as it was when this search ran, which its points change: the
    # search's result (depth 2, no crops) is what experiments/demo.py now trains.
    c.model.depth = 1
    c.data.crop = True
    c.eval_draw_images = 0
    c.progress_bar = False
    return c


def _point(steps: int, **changes):
    """``steps`` optimiser steps, 4 evaluations, one checkpoint at the end."""
    return {"num_steps": steps, "eval_every": steps // 4, "checkpoint_every": steps, **changes}


def get_sweep():
    td = {"model.top_down": True}
    return [
        _point(14400, **td),                                   # 4x the demo's compute
        _point(7200, **td),                                    # 2x
        _point(3600),                                          # the demo itself (calibration)
        _point(3600, **td),                                    # + top-down fusion (free on the CPU)
        _point(7200, **td, **{"data.batch_size": 8}),          # same images, twice the updates
        _point(2900, **td, **{"model.depth": 2}),
        _point(2150, **td, **{"model.width": 1.5}),
        _point(3600, **td, **{"data.crop": False}),
        _point(3600, **td, **{"optim.lr": 0.015}),
        _point(3600, **td, **{"loss.iou_threshold": 0.45}),
        _point(3600, **td, **{"loss.iou_threshold": 0.3}),
        _point(5800, **td, **{"model.depth": 2}),              # 2x, deeper
    ]
