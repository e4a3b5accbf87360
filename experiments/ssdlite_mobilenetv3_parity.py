"""SSDLite320-MobileNetV3-Large set up as torchvision trains ``ssdlite320_mobilenet_v3_large``
from scratch, for side-by-side runs against torchvision on the built-in dataset.

Where each setting comes from (torchvision 0.29, ``models/detection/ssdlite.py`` and
``references/detection``: ``train.py --model ssdlite320_mobilenet_v3_large --epochs 600
--lr-scheduler cosineannealinglr --lr 0.15 --batch-size 24 --weight-decay 0.00004
--data-augmentation ssdlite`` on 8 GPUs):

* network: ``ssdlite_mobilenetv3`` at 320 px, width 1 = ``ssdlite320_mobilenet_v3_large``
  without a pretrained backbone (reduced tail, the same 2,469,860 parameters at 21 classes);
* ``model.init = "normal"``, std 0.03: ``_normal_init`` of every convolution (backbone,
  extras, heads) when no pretrained backbone is given; batch norm eps 1e-3, momentum 0.03
  (ours 0.97 = 1 - 0.03) as torchvision's ``norm_layer``;
* ``model.normalization = "symmetric"``: ``image_mean = image_std = [0.5, 0.5, 0.5]``;
* loss: ``SSDMatcher(0.5)``, ``neg_to_pos_ratio=3``, box-coder weights (10, 10, 5, 5) =
  variances (0.1, 0.2), loss = regression + classification (alpha 1), both / N;
* optimiser: SGD, momentum 0.9, lr 0.15 at batch 192 (scaled linearly to the batch used
  here), cosine to 0, no warmup; weight decay 4e-5 on every parameter (``optim.decay =
  "all"``: the reference passes all parameters when ``--norm-weight-decay`` is not given);
* augmentation (``--data-augmentation ssdlite``): ``RandomIoUCrop`` (minimum IoU 0, 0.1,
  0.3, 0.5, 0.7, 0.9 or no crop, 40 trials, scale 0.3-1, aspect 0.5-2) and
  ``RandomHorizontalFlip``; no photometric distortion, no zoom-out.

Deliberate differences that stay: the built-in dataset instead of COCO, batch 16 on a CPU,
and a schedule of ``num_steps`` instead of 600 epochs. ``get_config("runlocal")``: a few
steps at batch 2.
"""

from experiments.base import base_config, runlocal


def get_config(arg: str | None = None):
    c = base_config()
    c.name = "ssdlite_mobilenetv3_parity"
    c.num_steps = 3000
    c.log_every = 50
    c.checkpoint_every = 1000
    c.eval_every = 1000
    c.model.name = "ssdlite_mobilenetv3"
    c.model.image_size = 320
    c.model.width = 1.0
    c.model.init = "normal"
    c.model.init_std = 0.03
    c.model.normalization = "symmetric"
    c.data.dataset = "builtin"
    c.data.batch_size = 16
    c.data.photometric = False
    c.data.expand_p = 0.0
    c.data.crop = True
    c.data.crop_min_ious = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
    c.data.max_trials = 40
    c.data.flip_p = 0.5
    c.loss.iou_threshold = 0.5
    c.loss.neg_pos_ratio = 3.0
    c.loss.alpha = 1.0
    c.loss.variances = (0.1, 0.2)
    c.optim.optimizer = "sgd"
    c.optim.lr = 0.15
    c.optim.lr_batch_size = 192
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 0
    c.optim.momentum = 0.9
    c.optim.weight_decay = 4e-5
    c.optim.decay = "all"
    c.eval.metric = "voc"
    if arg == "runlocal":
        runlocal(c)
    elif arg:
        raise ValueError(f"ssdlite_mobilenetv3_parity: unknown config argument {arg!r} (known: 'runlocal')")
    return c
