"""A real-scale sweep: SSD300 on VOC07+12 (experiments/ssd300_vgg16_voc.py) over the
learning rate and the localisation weight, 3 x 2 = 6 runs of the paper's 120k-step schedule.

Meant for a cluster: one point per job, ``--index`` picks it (e.g. a Slurm array):

    python launch.py sweep --config experiments/sweep_ssd300_voc.py --workdir /runs/ssd300_sweep --list
    python launch.py sweep --config experiments/sweep_ssd300_voc.py --workdir /runs/ssd300_sweep \\
        --index $SLURM_ARRAY_TASK_ID --config.data.voc_root=/data/VOCdevkit
    python launch.py sweep --summarize /runs/ssd300_sweep
"""

from experiments.ssd300_vgg16_voc import get_config as voc_config
from ssd_jax import sweep


def get_config(arg: str | None = None):
    c = voc_config(arg)
    c.name = "sweep_ssd300_voc"
    return c


def get_sweep():
    return sweep.product(**{"optim.lr": [5e-4, 1e-3, 2e-3], "loss.alpha": [1.0, 2.0]})
