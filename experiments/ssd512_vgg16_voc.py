"""SSD512 (VGG16) on PASCAL VOC 2007+2012 trainval, tested on VOC2007 test.

The SSD300 VOC recipe (``ssd300_vgg16_voc.py``: 120k iterations at batch 32, SGD momentum
0.9, lr 1e-3 divided by 10 at 80k and 100k, weight decay 5e-4) on the 512x512 network
with its extra conv12_2 map and 24564 priors (lufficc/SSD
``configs/vgg_ssd512_voc0712.yaml``: same schedule; the SSD authors' ``ssd_pascal_512.py``).

Accuracy reached (VOC2007 test mAP): 79.8 (paper), 80.7 (lufficc/SSD).

Set ``--config.data.voc_root=/path/to/VOCdevkit``; ``get_config("runlocal")`` is the
smoke-test switch of the SSD300 experiment.
"""

from experiments.ssd300_vgg16_voc import get_config as ssd300_config


def get_config(arg: str | None = None):
    c = ssd300_config(arg)
    c.name = "ssd512_vgg16_voc"
    c.model.name = "ssd512_vgg16"
    c.model.image_size = 512
    return c
