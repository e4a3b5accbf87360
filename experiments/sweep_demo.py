"""A small sweep over the demo: 3 learning rates x 2 negative:positive ratios.

Each point is the demo (experiments/demo.py: ssd_compact, AdamW) shortened to 200 steps with
one evaluation (64 validation images) at the end; at ~5 steps/s each point takes about a
minute on a 2-core CPU:

    python launch.py sweep --config experiments/sweep_demo.py --workdir runs/sweep_demo
    python launch.py sweep --summarize runs/sweep_demo
"""

from experiments.demo import get_config as demo_config
from ssd_jax import sweep


def get_config(arg: str | None = None):
    c = demo_config(arg)
    c.name = "sweep_demo"
    if not c.runlocal:
        c.num_steps = 200
        c.checkpoint_every = 100
        c.eval_every = 0
        c.eval_at_end = True
        c.eval_max_images = 64
        c.progress_bar = False
    return c


def get_sweep():
    return sweep.product(**{"optim.lr": [0.004, 0.009, 0.016], "loss.neg_pos_ratio": [2.0, 3.0]})
