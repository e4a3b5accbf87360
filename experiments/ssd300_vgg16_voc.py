"""SSD300 (VGG16) on PASCAL VOC 2007+2012 trainval, tested on VOC2007 test: the paper's recipe.

Schedule (SSD paper, Liu et al. 2016, sec. 3 / the authors' Caffe ``ssd_pascal.py``; also
ssd.pytorch ``data/config.py`` ``voc`` and lufficc/SSD ``configs/vgg_ssd300_voc0712.yaml``):
120k iterations at batch 32, SGD momentum 0.9, lr 1e-3 divided by 10 at 80k and 100k,
weight decay 5e-4. The backbone starts from ImageNet VGG16 (``launch.py convert`` the
torchvision ``vgg16`` features, then ``--config.init_from=<converted dir>``).

Accuracy reached by that recipe (VOC2007 test mAP, 11-point metric):
77.2 (paper, with the "expansion" augmentation), 77.43 (ssd.pytorch), 77.7 (lufficc/SSD).

Set ``--config.data.voc_root=/path/to/VOCdevkit``. ``get_config("runlocal")`` is a smoke
test: same network, a few steps, tiny batch (still needs ``voc_root``).
"""

from experiments.base import base_config, runlocal


def get_config(arg: str | None = None):
    c = base_config()
    c.name = "ssd300_vgg16_voc"
    c.num_steps = 120_000
    c.log_every = 100
    c.checkpoint_every = 5000
    c.keep_checkpoints = 3
    c.eval_every = 10_000
    c.model.name = "ssd300_vgg16"
    c.model.image_size = 300
    c.data.dataset = "voc"
    c.data.batch_size = 32
    c.data.max_boxes = 64
    c.data.num_workers = 4
    c.data.voc_train = ("2007/trainval", "2012/trainval")
    c.data.voc_test = "2007/test"
    c.optim.optimizer = "sgd"
    c.optim.lr = 1e-3
    c.optim.lr_batch_size = 32
    c.optim.schedule = "step"
    c.optim.decay_steps = (80_000, 100_000)
    c.optim.decay_factor = 0.1
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.eval.metric = "voc"
    c.eval.use_07_metric = True
    if arg == "runlocal":
        runlocal(c)
    elif arg:
        raise ValueError(f"ssd300_vgg16_voc: unknown config argument {arg!r} (known: 'runlocal')")
    return c
