"""Defaults every experiment starts from (the full schema; experiments change fields).

Every field is typed by its default: ``--config.x.y=v`` overrides must parse as that type.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "experiment"
    c.runlocal = False          # shrink for a smoke test (see each experiment)
    c.seed = 0                  # parameter init, data order, augmentation
    c.num_steps = 1000          # optimiser steps in all
    c.log_every = 50            # metrics to console + metrics.jsonl
    c.checkpoint_every = 500
    c.keep_checkpoints = 3      # the latest ones ...
    c.keep_best = True          # ... and the one with the best evaluation (mAP, or AP for the COCO metric)
    c.eval_every = 0            # 0: no periodic evaluation (one at the end if eval_at_end)
    c.eval_at_end = True
    c.eval_max_images = 0       # 0: the whole evaluation split
    c.eval_draw_images = 8      # each evaluation draws its predictions on this many val images (0: none)
    c.init_from = ""            # converted checkpoint (launch.py convert); its params, no optimiser state
    c.progress_bar = True

    c.model = ml_collections.ConfigDict()
    c.model.name = "ssdlite_mobilenetv2"  # or ssdlite_mobilenetv3, ssd300_vgg16, ssd512_vgg16, ssd_compact, tiny_cnn (smoke tests)
    c.model.image_size = 320
    c.model.width = 1.0         # width multiplier (the SSDLite models, ssd_compact)
    c.model.compute_dtype = "float32"     # or "bfloat16" (params and loss stay float32)
    c.model.layout = "NHWC"
    c.model.depth = 1           # ssd_compact: stride-1 3x3 convolutions per stage (s4, s8, s16)
    c.model.top_down = False    # ssd_compact: FPN-style top-down fusion of the source maps

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "builtin"  # "builtin" | "voc" | "coco" (any COCO-format JSON)
    c.data.batch_size = 32      # global, over all devices and hosts
    c.data.max_boxes = 50
    c.data.num_workers = 0
    c.data.augment = True       # the SSD augmentation (photometric, zoom-out, min-IoU crop, flip); False: resize only
    c.data.photometric = True   # photometric distortion (brightness, contrast, saturation, hue)
    c.data.expand_p = 0.5       # zoom-out probability (paper 0.5) ...
    c.data.max_expand = 4.0     # ... up to this factor (paper 4)
    c.data.crop = True          # the min-IoU random crop (False: never crop)
    c.data.use_difficult = False
    c.data.cache_dir = ""       # builtin: default ~/.cache/ssd_jax or $SSD_JAX_CACHE
    c.data.builtin_num_train = 5000
    c.data.builtin_num_val = 500
    c.data.builtin_min_side = 160
    c.data.builtin_max_side = 320
    c.data.voc_root = ""        # folder holding VOCdevkit/VOC2007 and VOC2012 (or the VOC20xx folders)
    c.data.voc_train = ("2007/trainval", "2012/trainval")
    c.data.voc_test = "2007/test"
    c.data.coco_train_json = ""  # COCO-format datasets: instances JSON + image folder, per split
    c.data.coco_train_images = ""
    c.data.coco_val_json = ""
    c.data.coco_val_images = ""

    c.optim = ml_collections.ConfigDict()
    c.optim.optimizer = "sgd"   # "sgd" | "adamw"
    c.optim.lr = 1e-3           # at batch optim.lr_batch_size; scaled linearly to data.batch_size
    c.optim.lr_batch_size = 32
    c.optim.schedule = "step"   # "step" | "cosine"
    c.optim.warmup_steps = 0
    c.optim.warmup_init_factor = 0.0
    c.optim.decay_steps = ()
    c.optim.decay_factor = 0.1
    c.optim.cosine_final_factor = 0.0
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.optim.grad_clip = 0.0     # global norm; 0 = off

    c.loss = ml_collections.ConfigDict()
    c.loss.iou_threshold = 0.5
    c.loss.neg_pos_ratio = 3.0
    c.loss.alpha = 1.0

    c.eval = ml_collections.ConfigDict()
    c.eval.metric = "voc"       # "voc" (AP at IoU 0.5) or "coco" (AP over 0.5:0.95, pycocotools-identical)
    c.eval.use_07_metric = True
    c.eval.score_threshold = 0.01
    c.eval.nms_iou = 0.45
    c.eval.max_detections = 200
    return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The smoke-test shrink shared by the full-scale experiments: 2 steps at batch 2."""
    c.runlocal = True
    c.num_steps, c.log_every, c.checkpoint_every, c.eval_every = 2, 1, 2, 0
    c.eval_max_images = 4
    c.progress_bar = False
    c.data.batch_size, c.data.num_workers = 2, 0
    return c
