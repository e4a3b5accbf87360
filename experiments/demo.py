"""The built-in dataset demo: SSDLite-MobileNetV2 (width 0.5, 160x160) on "shapes on photos".

Sized for a 2-core CPU: a few hundred steps run in minutes and the loss visibly falls.
Run: ``python launch.py train`` (this is the default config) or
``python launch.py train --config=experiments/demo.py --workdir=runs/demo``.
"""

from experiments.base import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.name = "demo"
    c.num_steps = 300
    c.log_every = 25
    c.checkpoint_every = 100
    c.eval_every = 150
    c.eval_max_images = 64
    c.model.name = "ssdlite_mobilenetv2"
    c.model.image_size = 160
    c.model.width = 0.5
    c.data.dataset = "builtin"
    c.data.batch_size = 16
    c.data.max_boxes = 8
    c.data.builtin_num_train = 1000
    c.data.builtin_num_val = 100
    c.data.builtin_min_side = 128
    c.data.builtin_max_side = 192
    c.optim.optimizer = "sgd"
    c.optim.lr = 0.1            # at batch 32 (0.05 at 16): a from-scratch BN network takes a large rate
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 30
    c.optim.weight_decay = 4e-5
    c.optim.grad_clip = 10.0
    if arg == "runlocal":
        c.runlocal = True
        c.num_steps = 4
        c.log_every = 2
        c.checkpoint_every = 2
        c.eval_every = 0
        c.eval_max_images = 4
        c.progress_bar = False
        c.model.image_size = 96
        c.model.width = 0.25
        c.data.batch_size = 4
        c.data.builtin_num_train = 16
        c.data.builtin_num_val = 4
        c.data.builtin_min_side = 48
        c.data.builtin_max_side = 64
        c.optim.warmup_steps = 1
    elif arg:
        raise ValueError(f"demo: unknown config argument {arg!r} (known: 'runlocal')")
    return c
