"""The training loop: config -> model, data, optimiser, mesh -> steps, logs, evaluations, checkpoints.

:func:`train_and_evaluate(config, workdir)` runs an experiment (an ``ml_collections``
config, see ``experiments/base.py`` for the fields). A workdir that already holds a
checkpoint is resumed from the latest one: the train state and the data iterator's
position are restored, so the run continues exactly as if it had not stopped.

Stops: at ``config.num_steps`` (checkpoint written); on SIGTERM (checkpoint written after
the current step, then return); on a non-finite loss or gradient norm
(:class:`NonFiniteLossError` naming the step; nothing is saved after the last finite step,
so the latest checkpoint is good; the loss is fetched to the host every step for this
check). Parameters and batch statistics are also checked for inf/NaN before every save.

Logging: the step metrics are accumulated on the device in a ``clu.metrics`` collection
(:class:`ssd_jax.train.TrainMetrics`) and written every ``log_every`` steps, with clu's
``ReportProgress`` figures (steps/s, images/s, ETA), through ``clu.metric_writers``
writers (:mod:`ssd_jax.metric_writers`: ``metrics.jsonl``, TensorBoard event files in
``<workdir>/tensorboard``, the console). Each evaluation also writes its metrics, and a
picture of the predictions on the first validation images to
``<workdir>/predictions/step_<N>.png`` and to TensorBoard.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from ssd_jax import anchors, checkpointing, metric_writers, parallel, run_info, tiny_model
from ssd_jax import train_step as train_lib
from ssd_jax.data import pipeline, transforms
from ssd_jax.metric_writers import format_scalars
from ssd_jax.models import factory, params_io, preprocessing

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm (or, before a save, a parameter) became NaN/inf; ``step``
    is the step that produced it."""

    def __init__(self, step: int, metrics: dict[str, float], last_checkpoint: int | None):
        self.step = step
        self.metrics = metrics
        self.last_checkpoint = last_checkpoint
        super().__init__(
            f"non-finite loss at step {step} ({format_scalars(metrics)}); training stopped. "
            f"The latest checkpoint (step {last_checkpoint}) was written before this and is intact; "
            f"lower optim.lr or set optim.grad_clip, then rerun on the same workdir to resume from it."
        )


@jax.jit
def _all_finite(tree) -> jax.Array:
    """``[]`` bool: every element of every leaf is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# ---------------------------------------------------------------------------- builders


def check_config(config: ml_collections.ConfigDict) -> None:
    """Cheap checks of a resolved config, before anything heavy runs (ValueError on a problem)."""
    if config.num_steps < 1 or config.data.batch_size < 1:
        raise ValueError(f"num_steps ({config.num_steps}) and data.batch_size ({config.data.batch_size}) must be positive")
    if config.log_every < 1 or config.checkpoint_every < 1 or config.eval_every < 0:
        raise ValueError("log_every and checkpoint_every must be >= 1 and eval_every >= 0")
    if config.model.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"model.compute_dtype must be 'float32' or 'bfloat16', got {config.model.compute_dtype!r}")
    if config.data.dataset not in ("builtin", "voc", "coco"):
        raise ValueError(f"data.dataset must be 'builtin', 'voc' or 'coco', got {config.data.dataset!r}")
    if config.data.dataset == "coco":
        for key in ("coco_train_json", "coco_train_images", "coco_val_json", "coco_val_images"):
            path = config.data[key]
            if not path or not os.path.exists(path):
                raise ValueError(f"data.dataset='coco' needs data.{key} (an existing path), got {path!r}")
    if config.eval.metric not in ("voc", "coco"):
        raise ValueError(f"eval.metric must be 'voc' or 'coco', got {config.eval.metric!r}")
    if config.data.dataset == "voc":
        if not config.data.voc_root:
            raise ValueError("data.dataset='voc' needs data.voc_root: --config.data.voc_root=/path/to/VOCdevkit")
        if not os.path.isdir(config.data.voc_root):
            raise ValueError(f"data.voc_root {config.data.voc_root!r} is not a folder")
    if config.init_from and not os.path.exists(config.init_from):
        raise ValueError(f"init_from {config.init_from!r} does not exist")


def build_model(config: ml_collections.ConfigDict, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
    m = config.model
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(m.compute_dtype)
    if dtype is None:
        raise ValueError(f"model.compute_dtype must be 'float32' or 'bfloat16', got {m.compute_dtype!r}")
    if m.name == tiny_model.NAME:
        return tiny_model.build_tiny(num_classes, m.image_size, compute_dtype=dtype, rngs=rngs)
    # Options of one family are ignored for the others (a config made for the demo can switch
    # model.name alone).
    width = m.width if m.name in factory.WIDTH_MODELS else 1.0
    compact = m.name == "ssd_compact"
    return factory.build_model(m.name, num_classes, image_size=m.image_size, compute_dtype=dtype, width=width,
                               layout=m.layout, depth=m.get("depth", 1) if compact else 1,
                               top_down=m.get("top_down", False) if compact else False, rngs=rngs)


def input_normalization(model_name: str) -> transforms.Normalization:
    """The pipeline normalisation matching the model's convention (RGB, see
    :mod:`ssd_jax.models.preprocessing`)."""
    name = "torchvision" if model_name == tiny_model.NAME else factory.default_normalization(model_name)
    conv = preprocessing.get_normalization(name)
    return transforms.Normalization(mean=tuple(255.0 * v for v in conv.mean), std=tuple(255.0 * v for v in conv.std), bgr=False)


def augment_config(data: ml_collections.ConfigDict) -> transforms.AugmentConfig | None:
    """The training augmentation of ``config.data`` (``None``: resize + normalise only)."""
    if not data.augment:
        return None
    if not 0.0 <= data.expand_p <= 1.0 or data.max_expand < 1.0:
        raise ValueError(f"data.expand_p must be in [0, 1] and data.max_expand >= 1, got {data.expand_p}, {data.max_expand}")
    return transforms.AugmentConfig(photometric=bool(data.photometric), expand_p=float(data.expand_p),
                                    max_expand=float(data.max_expand),
                                    min_ious=transforms.SSD_MIN_IOUS if data.crop else (None,))


def build_sources(config: ml_collections.ConfigDict):
    """``(train_source, eval_source)`` of ``config.data``."""
    d = config.data
    if d.dataset == "builtin":
        from ssd_jax.data import builtin

        spec = builtin.BuiltinSpec(seed=0, num_train=d.builtin_num_train, num_val=d.builtin_num_val,
                                   min_side=d.builtin_min_side, max_side=d.builtin_max_side)
        cache = d.cache_dir or None
        return (builtin.builtin_source("train", spec, cache, progress=False),
                builtin.builtin_source("val", spec, cache, progress=False))
    if d.dataset == "voc":
        from ssd_jax.data import voc

        if not d.voc_root:
            raise ValueError("data.dataset='voc' needs data.voc_root: --config.data.voc_root=/path/to/VOCdevkit")
        pairs = lambda splits: [tuple(s.split("/")) for s in splits]  # noqa: E731
        test = (d.voc_test,) if isinstance(d.voc_test, str) else tuple(d.voc_test)
        return voc.voc_source(d.voc_root, pairs(d.voc_train)), voc.voc_source(d.voc_root, pairs(test))
    if d.dataset == "coco":
        from ssd_jax.data import coco

        # Crowd regions are kept as "difficult": training leaves them out (unless
        # data.use_difficult), the COCO evaluator ignores detections on them.
        # Real COCO has a few degenerate boxes: dropped (counted) rather than fatal.
        kw = dict(crowd="difficult", invalid_boxes="drop")
        return (coco.coco_source(d.coco_train_json, d.coco_train_images, **kw),
                coco.coco_source(d.coco_val_json, d.coco_val_images, **kw))
    raise ValueError(f"data.dataset must be 'builtin', 'voc' or 'coco', got {d.dataset!r}")


def optim_config(config: ml_collections.ConfigDict) -> train_lib.OptimConfig:
    o = config.optim
    return train_lib.OptimConfig(
        optimizer=o.optimizer, lr=o.lr, lr_batch_size=o.lr_batch_size, batch_size=config.data.batch_size,
        schedule=o.schedule, total_steps=config.num_steps, warmup_steps=o.warmup_steps,
        warmup_init_factor=o.warmup_init_factor, decay_steps=tuple(int(s) for s in o.decay_steps),
        decay_factor=o.decay_factor, cosine_final_factor=o.cosine_final_factor, momentum=o.momentum,
        weight_decay=o.weight_decay, grad_clip=o.grad_clip,
    )


def apply_init_from(model: nnx.Module, path: str) -> list[str]:
    """Load a converted checkpoint's parameters (and batch-norm state) into ``model``."""
    converted = params_io.load_converted(path)
    set_paths = params_io.assign(model, converted.params)
    if converted.model_state:
        set_paths += params_io.assign(model, converted.model_state, variables=nnx.BatchStat)
    logger.info("init_from %s: set %d variables (partial=%s)", path, len(set_paths), converted.meta.get("partial"))
    return set_paths


# ---------------------------------------------------------------------------- evaluation


def evaluate(eval_step, state, source, pcfg: pipeline.PipelineConfig, mesh, evaluator, max_images: int = 0) -> dict[str, float]:
    """One evaluation round over ``source`` (its first ``max_images`` images if > 0),
    the batches split over the mesh's data axis.

    ``pcfg.batch_size`` is this process's share of the batch. With several processes
    (hosts), each reads and predicts its shard of the images, every batch's detections
    and record indices are gathered to all hosts (``process_allgather``), and every host
    feeds the whole split to its evaluator: the metrics are the same on all hosts.
    """
    from ssd_jax import inference

    if max_images:
        source = dataclasses.replace(source, records=tuple(source.records[:max_images]))
    count = jax.process_count()
    if count == 1:
        batches = pipeline.eval_dataset(source, pcfg, process_index=0, process_count=1)
        sharding = parallel.data_sharding(mesh)
        shard, gather = (lambda images: jax.device_put(images, sharding)), None
    else:
        from jax.experimental import multihost_utils

        batches = pipeline.eval_dataset(source, pcfg)  # this host's shard
        global_bs = pcfg.batch_size * count

        def shard(images):
            return parallel.global_batch({"image": images}, mesh, global_bs)["image"]

        def gather(detections, batch):  # one collective per batch
            return multihost_utils.process_allgather(
                (detections, np.asarray(batch["index"]), np.asarray(batch["valid"])), tiled=True)
    metrics, _ = inference.evaluate(eval_step, state.params, state.model_state, batches, evaluator, source,
                                    shard=shard, gather=gather)
    return metrics


def draw_predictions(predict, state, source, pcfg: pipeline.PipelineConfig, out_dir: str, step: int, count: int,
                     writer, score_threshold: float = 0.3) -> str:
    """Detections of ``predict`` on the first ``count`` images of ``source``, drawn (score >=
    ``score_threshold``) into one grid PNG ``out_dir/step_<step>.png``, also written to
    ``writer`` as the image ``predictions``. Returns the PNG's path. Single-process runs
    only (the loop skips it on several hosts: one host alone cannot run the jitted
    ``predict`` on parameters that span all hosts' devices)."""
    from ssd_jax import inference, visualize
    from ssd_jax.data.images import load_image

    images = [load_image(r) for r in source.records[:count]]
    x = np.stack([transforms.network_input(im, pcfg.image_size, pcfg.normalization) for im in images])
    det = jax.device_get(predict(state.params, state.model_state, x))
    tiles = []
    for i, im in enumerate(images):
        boxes, classes, scores = inference.image_detections(det, i, im.shape[1], im.shape[0])
        tiles.append(visualize.draw_detections(im, boxes, classes, scores, source.class_names, score_threshold))
    grid = visualize.image_grid(tiles)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"step_{step}.png")
    grid.save(path)
    writer.write_images(step, {"predictions": np.asarray(grid)[None]})
    return path


def _flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``{"optim.lr": 0.001, ...}``: the config as flat hyperparameters (tuples as text)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, (dict, ml_collections.ConfigDict)):
                walk(key + ".", v)
            else:
                out[key] = v if isinstance(v, (bool, int, float, str)) else str(v)

    walk("", config)
    return out


# ---------------------------------------------------------------------------- the loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) the experiment ``config`` in ``workdir``.

    Returns ``{"step": last step, "metrics": last logged train metrics, "eval": last
    evaluation or {}, "preempted": bool, "state": the final TrainState}``.
    """
    check_config(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    primary = jax.process_index() == 0
    if primary:
        run_info.write_run_info(workdir, config.to_json_best_effort(indent=1, sort_keys=True))

    mesh = parallel.make_mesh()
    global_bs = config.data.batch_size
    local_bs = parallel.per_process_batch_size(global_bs, mesh)
    train_src, eval_src = build_sources(config)

    model = build_model(config, train_src.num_classes, nnx.Rngs(config.seed))
    if config.init_from:
        apply_init_from(model, config.init_from)
    ocfg = optim_config(config)
    tx, schedule = train_lib.make_optimizer(ocfg)
    graphdef, state = train_lib.create_train_state(model, tx, config.seed)
    priors = anchors.generate(model.spec)
    loss_cfg = train_lib.LossConfig(config.loss.iou_threshold, config.loss.neg_pos_ratio, config.loss.alpha)
    state = parallel.replicate(state, mesh)
    step_fn = parallel.jit_train_step(train_lib.make_train_step(graphdef, tx, schedule, priors, loss_cfg), mesh, state)

    norm = input_normalization(config.model.name)
    pcfg = pipeline.PipelineConfig(
        image_size=model.spec.image_size, batch_size=local_bs, max_boxes=config.data.max_boxes, seed=config.seed,
        num_workers=config.data.num_workers, use_difficult=config.data.use_difficult, normalization=norm,
        augment=augment_config(config.data),
    )
    data_iter = iter(pipeline.train_dataset(train_src, pcfg))

    evaluates = bool(config.eval_every or config.eval_at_end)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoint_every,
                                      config.keep_checkpoints, keep_best=config.keep_best and evaluates,
                                      best_metric="AP" if config.eval.metric == "coco" else "mAP")
    if ckpt.latest_step() is not None:
        state = ckpt.restore(None, state, data_iter)
        logger.info("resumed from step %d", int(state.step))
    step = int(jax.device_get(state.step))
    num_steps = int(config.num_steps)

    evaluator = eval_step = eval_pcfg = None
    if evaluates:
        from ssd_jax.evaluation import from_source

        evaluator = from_source.make_evaluator(eval_src, config.eval.metric, use_07_metric=config.eval.use_07_metric)
        from ssd_jax import inference

        eval_step = inference.make_predict_fn(graphdef, model.spec, score_threshold=config.eval.score_threshold,
                                              nms_iou=config.eval.nms_iou, max_detections=config.eval.max_detections)
        eval_pcfg = pipeline.PipelineConfig(image_size=model.spec.image_size, batch_size=local_bs,
                                            max_boxes=config.data.max_boxes, normalization=norm, augment=None)

    progress = None
    echo = print
    if config.progress_bar and primary:
        from tqdm import tqdm

        progress = tqdm(total=num_steps, initial=step, desc=config.name, unit="step", dynamic_ncols=True)
        echo = progress.write
    writer = metric_writers.create_writer(workdir, echo=echo, enabled=primary)
    if primary and step == 0:
        writer.write_hparams(_flat_config(config))
    report = metric_writers.ProgressReport(num_train_steps=num_steps, every_steps=config.log_every,
                                           images_per_step=global_bs)
    preempt = checkpointing.PreemptionFlag()
    if threading.current_thread() is threading.main_thread():
        preempt.install()

    echo(f"{config.name}: {model.name} {model.spec.image_size}px, {model.spec.num_priors} priors, "
         f"{len(train_src)} training images, global batch {global_bs} over {mesh.devices.size} device(s), "
         f"steps {step} -> {num_steps}, workdir {workdir}")
    acc = None  # the log interval's clu metrics, on the device
    last_logged: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    preempted = False
    last_eval_step = None
    t_start, start_step = time.perf_counter(), step

    def run_eval(step: int) -> dict[str, float]:
        with report.timed("eval", wait_jax_async_dispatch=False):
            result = evaluate(eval_step, state, eval_src, eval_pcfg, mesh, evaluator, config.eval_max_images)
            writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items() if not k.startswith("AP/")})
            if primary and config.eval_draw_images and jax.process_count() == 1:  # one host: see draw_predictions
                path = draw_predictions(eval_step, state, eval_src, eval_pcfg, os.path.join(workdir, "predictions"),
                                        step, config.eval_draw_images, writer)
                echo(f"step {step}: predictions on {config.eval_draw_images} val images -> {path}")
        return result

    try:
        while step < num_steps:
            host_batch = next(data_iter)
            batch = parallel.global_batch(host_batch, mesh, global_bs)
            state, metrics = step_fn(state, batch)
            step += 1
            acc = train_lib.merge_train_metrics(acc, metrics)
            guard = {k: float(v) for k, v in jax.device_get({"loss": metrics["loss"], "grad_norm": metrics["grad_norm"]}).items()}
            if not (math.isfinite(guard["loss"]) and math.isfinite(guard["grad_norm"])):
                raise NonFiniteLossError(step, {k: float(v) for k, v in jax.device_get(metrics).items()},
                                         ckpt.latest_step())
            report(step)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{guard['loss']:.3f}", refresh=False)
            if step % config.log_every == 0 or step == num_steps:
                last_logged = {k: float(v) for k, v in jax.device_get(acc.compute()).items()}
                writer.write_scalars(step, {**last_logged, **report.last})  # rates: {} if clu's clock just started
                report.last, acc = {}, None
            evaluated = None
            if evaluator is not None and ((config.eval_every and step % config.eval_every == 0)
                                          or (config.eval_at_end and step == num_steps)):
                last_eval = evaluated = run_eval(step)
                last_eval_step = step
            stop = preempt.agreed()  # every host stops at the same step
            final = stop or step == num_steps
            if ckpt.should_save(step) or evaluated is not None or final:
                # The loss was finite, but a huge update can still leave inf/NaN weights:
                # never write those into a checkpoint.
                if not bool(_all_finite((state.params, state.model_state))):
                    raise NonFiniteLossError(step, {**guard, "params_finite": 0.0}, ckpt.latest_step())
                # Evaluated states are always saved, with their metrics, so the best can be kept.
                with report.timed("checkpoint", wait_jax_async_dispatch=False):
                    ckpt.save(step, state, data_iter, force=evaluated is not None or final, metrics=evaluated)
            if stop:
                who = f"signal {preempt.signum}" if preempt.requested else "a signal to another host"
                echo(f"stopped by {who} at step {step}; checkpoint saved, rerun on {workdir} to resume")
                preempted = True
                break
        if not preempted:
            ckpt.save(step, state, data_iter, force=True)  # a no-op when the loop saved this step
            if evaluator is not None and config.eval_at_end and step >= num_steps and last_eval_step != step:
                last_eval = run_eval(step)
        elapsed = time.perf_counter() - t_start
        if step > start_step:
            echo(f"done: steps {start_step} -> {step} in {elapsed:.1f} s ({(step - start_step) / elapsed:.2f} steps/s incl. compile)")
        if primary:
            echo(f"workdir {workdir}: checkpoints/ (orbax), tensorboard/ (tensorboard --logdir {workdir}/tensorboard), "
                 f"metrics.jsonl" + (", predictions/ (PNGs of val predictions)" if evaluator is not None and config.eval_draw_images else ""))
    finally:
        preempt.uninstall()
        if progress is not None:
            progress.close()
        writer.close()
        ckpt.close()
        if hasattr(data_iter, "close"):
            data_iter.close()
    return {"step": step, "metrics": last_logged, "eval": last_eval, "preempted": preempted, "state": state}
