"""SSDLite320 on MobileNetV2 (width 1.0) on COCO train2017, evaluated on val2017.

Recipe: torchvision ``references/detection`` for ``ssdlite320_mobilenet_v3_large`` (the
closest public PyTorch recipe): 8 GPUs x batch 24 = 192, SGD momentum 0.9, lr 0.15 with
cosine annealing, weight decay 4e-5, 600 epochs, SSDLite augmentation. At 192 images per
step an epoch of train2017 is ~610 steps: 600 epochs ~ 366k steps.
Accuracy reached: 21.3 box AP for torchvision's MobileNetV3-Large SSDLite320; the
MobileNetV2 paper (Sandler et al. 2018, table 6) reports 22.1 mAP for SSDLite-MobileNetV2
on COCO test-dev at 320x320.

Set the four ``data.coco_*`` paths. ``get_config("runlocal")``: a few steps at batch 2.
"""

from experiments.base import base_config, runlocal


def get_config(arg: str | None = None):
    c = base_config()
    c.name = "ssdlite_mobilenetv2_coco"
    c.num_steps = 366_000
    c.log_every = 100
    c.checkpoint_every = 5000
    c.eval_every = 20_000
    c.model.name = "ssdlite_mobilenetv2"
    c.model.image_size = 320
    c.model.width = 1.0
    c.data.dataset = "coco"
    c.data.batch_size = 192
    c.data.max_boxes = 100
    c.data.num_workers = 8
    c.optim.optimizer = "sgd"
    c.optim.lr = 0.15
    c.optim.lr_batch_size = 192
    c.optim.schedule = "cosine"
    c.optim.momentum = 0.9
    c.optim.weight_decay = 4e-5
    c.eval.metric = "coco"
    if arg == "runlocal":
        runlocal(c)
    elif arg:
        raise ValueError(f"ssdlite_mobilenetv2_coco: unknown config argument {arg!r} (known: 'runlocal')")
    return c
