"""From validated settings (:class:`ssd_jax.config.Settings`) to the objects a run uses.

One place for every "config -> object" step, shared by training (:mod:`ssd_jax.training_loop`),
``launch.py eval`` / ``predict`` (:mod:`ssd_jax.restore`), ``inspect`` and the benchmarks:
the model, the input normalisation, the data sources, the input pipelines, the optimiser,
the evaluator and the jitted predict function.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax import normalization
from ssd_jax.data import pipeline
from ssd_jax.data.config import DataConfig
from ssd_jax.data.records import Source
from ssd_jax.evaluation.loop import EvalConfig
from ssd_jax.models.config import TINY_NAME, ModelConfig

logger = logging.getLogger(__name__)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(model: ModelConfig, num_classes: int, rngs: nnx.Rngs, *, conv=None) -> nnx.Module:
    """The network of ``model`` with ``num_classes`` object classes (plus background).

    Options of one family are ignored for the others (a config made for the demo can switch
    ``model.name`` alone): ``width`` reaches the SSDLite models and ``ssd_compact`` only,
    ``depth`` and ``top_down`` only ``ssd_compact``. ``conv``: a
    :class:`~ssd_jax.models.layers.ConvChoices` instead of the one ``model`` resolves to
    (the same parameters, another program: e.g. an exported one).
    """
    from ssd_jax.models import factory, layers, tiny

    dtype = _DTYPES[model.compute_dtype]
    if conv is None:
        conv = layers.resolve_conv_choices(model.conv_wgrad, model.cpu_kernels)
    if model.name == TINY_NAME:
        net = tiny.build_tiny(num_classes, model.image_size, compute_dtype=dtype, conv=conv, rngs=rngs)
    else:
        width = model.width if model.name in factory.WIDTH_MODELS else 1.0
        compact = model.name == "ssd_compact"
        net = factory.build_model(model.name, num_classes, image_size=model.image_size, compute_dtype=dtype,
                                  width=width, layout=model.layout, depth=model.depth if compact else 1,
                                  top_down=model.top_down if compact else False, conv=conv, rngs=rngs)
    if model.init == "normal":
        normal_init(net, model.init_std, rngs)
    return net


def normal_init(net: nnx.Module, std: float, rngs: nnx.Rngs) -> None:
    """Every convolution kernel of ``net`` drawn anew from N(0, ``std``), every
    convolution bias set to 0; batch-norm scales and offsets are left as they are
    (torchvision's ``_normal_init`` of SSDLite trained from scratch)."""
    import jax

    from ssd_jax.models import params_io

    flat = params_io.flatten(nnx.to_pure_dict(nnx.state(net, nnx.Param)))
    kernels = sorted(p for p in flat if p.endswith("/kernel"))
    shapes = [flat[p].shape for p in kernels]

    @jax.jit  # one compilation for all the draws
    def draw(key):
        return [std * jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
                for i, shape in enumerate(shapes)]

    new = dict(zip(kernels, draw(rngs.params())))
    new.update({p: jnp.zeros(v.shape, jnp.float32) for p, v in flat.items()
                if p.endswith("/bias") and not p.endswith("/bn/bias")})
    params_io.assign(net, new)


def normalization_name(model: ModelConfig) -> str:
    """The input convention (:mod:`ssd_jax.normalization`) that ``model`` trains and
    predicts with: ``model.normalization``, or for ``auto`` the network's own
    (``torchvision`` for the test network)."""
    from ssd_jax.models import factory

    if model.normalization != "auto":
        return model.normalization
    return "torchvision" if model.name == TINY_NAME else factory.default_normalization(model.name)


def init_from_normalization(model: ModelConfig, init_from: str) -> str:
    """The input convention of a run that starts from the converted checkpoint ``init_from``.

    Pretrained weights only work on inputs normalised as they were trained (``launch.py
    convert --from torchvision-vgg16`` records ``torchvision``, 0-1 pixels, while
    ``ssd300_vgg16`` alone means Caffe's 0-255 pixels minus the mean). With
    ``model.normalization='auto'`` the checkpoint's recorded convention is used; a
    convention set in the config that contradicts it is an error. A checkpoint that
    records none leaves the config's choice.
    """
    from ssd_jax.models import params_io

    recorded = params_io.load_converted_meta(init_from).get("normalization")
    if recorded is None:
        return normalization_name(model)
    if recorded not in normalization.CONVENTIONS:
        raise ValueError(f"init_from {init_from}: meta.json records normalization {recorded!r}, "
                         f"not one of {sorted(normalization.CONVENTIONS)}")
    if model.normalization == "auto":
        own = normalization_name(model)
        if own != recorded:
            logger.warning("init_from %s records %r inputs: training %s with them (its default is %r)",
                           init_from, recorded, model.name, own)
        return recorded
    if model.normalization != recorded:
        raise ValueError(f"model.normalization={model.normalization!r} contradicts init_from {init_from}, whose "
                         f"weights expect {recorded!r} inputs: set --config.model.normalization={recorded} "
                         f"(or auto)")
    return recorded


def input_normalization(model: ModelConfig) -> normalization.Normalization:
    """The input convention of :func:`normalization_name`."""
    return normalization.get(normalization_name(model))


def build_source(data: DataConfig, split: str, *, errors: list[str] | None = None,
                 check_images: bool = True) -> Source:
    """The ``train`` or ``eval`` source of the ``data`` settings.

    ``errors``: a list to collect the problems of single records and annotations into
    (each naming its file), skipping those records, instead of raising at the first one
    (``launch.py validate``). ``check_images=False`` leaves missing image files to be found
    when they load.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    train = split == "train"
    if data.dataset == "builtin":
        from ssd_jax.data import builtin

        spec = builtin.BuiltinSpec(seed=0, num_train=data.builtin_num_train, num_val=data.builtin_num_val,
                                   min_side=data.builtin_min_side, max_side=data.builtin_max_side)
        return builtin.builtin_source("train" if train else "val", spec, data.cache_dir or None, progress=False)
    if data.dataset == "voc":
        from ssd_jax.data import voc

        pairs = [tuple(s.split("/")) for s in (data.voc_train if train else data.voc_test_splits)]
        return voc.voc_source(data.voc_root, pairs, errors=errors, check_images=check_images)
    from ssd_jax.data import coco

    # Crowd regions are kept as "difficult": training leaves them out (unless
    # data.use_difficult), the COCO evaluator ignores detections on them.
    # Real COCO has a few degenerate boxes: dropped (counted) rather than fatal.
    json_file, images = ((data.coco_train_json, data.coco_train_images) if train
                         else (data.coco_val_json, data.coco_val_images))
    return coco.coco_source(json_file, images, crowd="difficult", invalid_boxes="drop", errors=errors,
                            check_images=check_images)


def build_sources(data: DataConfig) -> tuple[Source, Source]:
    """``(train_source, eval_source)`` of the ``data`` settings (see :func:`build_source`)."""
    return build_source(data, "train"), build_source(data, "eval")


def augment_on(data: DataConfig, backend: str | None = None) -> str:
    """Where the training augmentation runs, ``"host"`` or ``"device"``: ``data.augment_on``,
    or for ``"auto"`` the default of ``backend`` (``jax.default_backend()`` when None).

    On a GPU or TPU the device: on one H200 with 16 workers, the SSD300 bf16 step from
    VOC-size JPEGs ran at 0.95x its speed from memory with the augmentation in the step and
    at 0.20x with it on the host (``benchmarks/README.md``, GPU figures). On the CPU the
    host: the step and the augmentation share the same cores there, and the main job took
    1.43x the time with the augmentation in the step (the host pipeline prepares the next
    batch while the step runs).
    """
    if data.augment_on != "auto":
        return data.augment_on
    return "host" if (backend or jax.default_backend()) == "cpu" else "device"


def train_pipeline_config(settings, image_size: int, batch_size: int) -> pipeline.PipelineConfig:
    """The training input pipeline of ``settings`` (a :class:`ssd_jax.config.Settings`) for a
    network of input side ``image_size``; ``batch_size`` is this process's share."""
    d = settings.data
    return pipeline.PipelineConfig(
        image_size=image_size, batch_size=batch_size, max_boxes=d.max_boxes, seed=settings.run.seed,
        num_workers=d.num_workers, use_difficult=d.use_difficult,
        normalization=input_normalization(settings.model), augment=settings.augment,
        canvas=d.canvas_side if augment_on(d) == "device" else 0,
    )


def eval_pipeline_config(settings, image_size: int, batch_size: int) -> pipeline.PipelineConfig:
    """The evaluation pipeline (resize + normalise, no augmentation); ``batch_size`` is this
    process's share."""
    return pipeline.PipelineConfig(image_size=image_size, batch_size=batch_size, max_boxes=settings.data.max_boxes,
                                   normalization=input_normalization(settings.model), augment=None)


def build_evaluator(source: Source, eval_cfg: EvalConfig, metric: str | None = None):
    """The evaluator of ``eval_cfg.metric`` (or ``metric``) over ``source``'s records."""
    from ssd_jax.evaluation import from_source

    return from_source.make_evaluator(source, metric or eval_cfg.metric, use_07_metric=eval_cfg.use_07_metric)


def build_predict_fn(graphdef, spec, settings):
    """Jitted ``predict(params, model_state, images) -> Detections`` with the run's eval
    settings and box-coder variances."""
    from ssd_jax import inference

    e = settings.eval
    return inference.make_predict_fn(graphdef, spec, score_threshold=e.score_threshold, nms_iou=e.nms_iou,
                                     candidates_per_class=e.candidates_per_class,
                                     max_detections=e.max_detections, variances=settings.loss.variances)


def apply_init_from(model: nnx.Module, path: str) -> list[str]:
    """Load a converted checkpoint's parameters (and batch-norm state) into ``model``."""
    from ssd_jax.models import params_io

    converted = params_io.load_converted(path)
    set_paths = params_io.assign(model, converted.params)
    if converted.model_state:
        set_paths += params_io.assign(model, converted.model_state, variables=nnx.BatchStat)
    logger.info("init_from %s: set %d variables (partial=%s)", path, len(set_paths), converted.meta.get("partial"))
    return set_paths


def device_augmented_step(train_step, settings, image_size: int):
    """``train_step(state, batch)`` fed by canvases (``data.augment_on='device'``): the
    batch is augmented, resized and normalised on the device first, with keys from (seed,
    step, image index), so a resumed run draws the same augmentation."""
    from ssd_jax.data import device_augment, transforms

    config = settings.augment or transforms.AugmentConfig(photometric=False, expand_p=0.0, crop=False, flip_p=0.0)
    norm = input_normalization(settings.model)
    seed = settings.run.seed

    def step(state, batch):
        keys = device_augment.image_keys(seed, state.step, batch["image"].shape[0])
        return train_step(state, device_augment.augment(keys, batch, config, image_size, norm))

    return step
