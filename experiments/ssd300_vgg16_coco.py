"""SSD300 (VGG16) on COCO train2017, evaluated on val2017: torchvision's reference recipe.

torchvision ``references/detection`` (README, ``ssd300_vgg16``): 8 GPUs x batch 4 = 32,
SGD momentum 0.9, lr 0.002, weight decay 5e-4, 120 epochs with lr / 10 at epochs 80 and
110, SSD augmentation. At 32 images per step one epoch of train2017 (~117k images with
objects) is ~3,660 steps: 120 epochs ~ 440k steps, drops at ~293k and ~403k.
Accuracy reached: box AP 25.1 on val2017 (torchvision's ``SSD300_VGG16_Weights.COCO_V1``);
the paper reports 25.1 (test-dev, trainval35k).

Set the four ``data.coco_*`` paths (instances JSON + image folder for train and val).
``get_config("runlocal")``: a few steps at batch 2 (still needs the paths).
"""

from experiments.base import base_config, runlocal


def get_config(arg: str | None = None):
    c = base_config()
    c.name = "ssd300_vgg16_coco"
    c.num_steps = 440_000
    c.log_every = 100
    c.checkpoint_every = 5000
    c.eval_every = 20_000
    c.model.name = "ssd300_vgg16"
    c.model.image_size = 300
    c.data.dataset = "coco"
    c.data.batch_size = 32
    c.data.max_boxes = 100
    c.data.num_workers = 4
    c.optim.optimizer = "sgd"
    c.optim.lr = 2e-3
    c.optim.lr_batch_size = 32
    c.optim.schedule = "step"
    c.optim.decay_steps = (293_000, 403_000)
    c.optim.decay_factor = 0.1
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.eval.metric = "coco"
    if arg == "runlocal":
        runlocal(c)
    elif arg:
        raise ValueError(f"ssd300_vgg16_coco: unknown config argument {arg!r} (known: 'runlocal')")
    return c
