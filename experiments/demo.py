"""The built-in dataset demo (the main job): ``ssd_compact`` at 160x160 on "shapes on photos".

Sized for a 2-core CPU: 3,600 steps at batch 16 with ``launch.py``'s train flags, built-in
dataset generation and compilation included. Its current wall time and VOC mAP@0.5 on the
500 val images, per dev box: ``benchmarks/README.md``, "The main job". Run:
``python launch.py train`` (this is the default config) or
``python launch.py train --config=experiments/demo.py --workdir=runs/demo``.

Choices (measured on this dataset: benchmarks/RESULTS.md; the GPU recipe search, whose
sweeps live under ``research/``, compared variants at equal CPU time):

* ``ssd_compact`` (dense 3x3 convolutions, first source map at stride 4) instead of
  SSDLite-MobileNetV2: twice the steps per second on the CPU, and priors down to 6% of the
  image (the dataset's objects go down to 5% of the short side). ``depth=2`` (a second
  stride-1 conv in stages s4, s8, s16): 1.3x the step time, and at equal CPU time VOC mAP
  0.533 against 0.500 (GPU search).
* No random crops (flips only): 0.50 against 0.47 at 3,600 steps; the crops zoom in, while
  a quarter of the val objects are already below 10% of the image side.
* Matching IoU threshold 0.35 instead of the paper's 0.5: at 160 px the maps are coarse, so
  at 0.5 most objects match only their one forced prior and the priors next to them are
  mined as hard negatives; 0.35 gives ~4x the positives and 6x the mAP after 900 steps
  (0.3 and 0.45 were no better in the search).
* AdamW at 9e-3 for batch 32 (4.5e-3 at 16; 4e-3 and 6e-3 reached 0.42 and 0.46, 1.3e-2
  and 1.5e-2 no better), cosine decay, 100 warm-up steps.
* No zoom-out (the objects are already small) and no photometric distortion (the shapes'
  colours are random anyway).
"""

from experiments.base import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.name = "demo"
    c.num_steps = 3600
    c.log_every = 100
    c.checkpoint_every = 900
    c.eval_every = 900
    c.eval_max_images = 0        # all 500 val images (~3 s)
    c.model.name = "ssd_compact"
    c.model.image_size = 160
    c.model.width = 1.0
    c.model.depth = 2
    c.data.dataset = "builtin"
    c.data.batch_size = 16
    c.data.max_boxes = 8
    c.data.builtin_num_train = 5000
    c.data.builtin_num_val = 500
    c.data.builtin_min_side = 128
    c.data.builtin_max_side = 192
    c.data.photometric = False
    c.data.expand_p = 0.0
    c.data.crop = False
    c.loss.iou_threshold = 0.35
    c.optim.optimizer = "adamw"
    c.optim.lr = 9e-3            # at batch 32 (4.5e-3 at 16)
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 1e-4
    c.optim.grad_clip = 10.0
    if arg == "runlocal":
        c.runlocal = True
        c.num_steps = 4
        c.log_every = 2
        c.checkpoint_every = 2
        c.eval_every = 0
        c.eval_max_images = 4
        c.eval_draw_images = 4
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
