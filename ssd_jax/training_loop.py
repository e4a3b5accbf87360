"""The training loop: steps, logs, periodic evaluations, checkpoints, guards.

:func:`train_and_evaluate(config, workdir)` runs an experiment (an ``ml_collections``
config; its schema is :func:`ssd_jax.config.default_config`), with the model, data,
optimiser and evaluator made by :mod:`ssd_jax.builders`. A workdir that already holds a
checkpoint is resumed from the latest one: the train state and the data iterator's
position are restored, so the run continues exactly as if it had not stopped.

Stops: at ``config.num_steps`` (checkpoint written); on SIGTERM (checkpoint written after
the current step, then return); on a non-finite loss or gradient norm
(:class:`NonFiniteLossError` naming the step; nothing is saved after the last finite step,
so the latest checkpoint is good; the loss is fetched to the host every step for this
check). Parameters and batch statistics are also checked for inf/NaN before every save.

Logging: the step metrics are accumulated on the device in a ``clu.metrics`` collection
(:class:`ssd_jax.train_step.TrainMetrics`) and written every ``log_every`` steps, with clu's
``ReportProgress`` figures (steps/s, images/s, ETA), through ``clu.metric_writers``
writers (:mod:`ssd_jax.metric_writers`: ``metrics.jsonl``, TensorBoard event files in
``<workdir>/tensorboard``, the console). Each evaluation also writes its metrics, and a
picture of the predictions on the first validation images to
``<workdir>/predictions/step_<N>.png`` and to TensorBoard.
"""

from __future__ import annotations

import json
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

from ssd_jax import anchors, builders, checkpointing, metric_writers, parallel, restore, run_info
from ssd_jax import config as config_lib
from ssd_jax import train_step as train_lib
from ssd_jax.config import Settings
from ssd_jax.data import pipeline, transforms
from ssd_jax.evaluation import loop as eval_loop
from ssd_jax.metric_writers import format_scalars

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


class _Position:
    """A data iterator's position taken earlier, saved as grain saves the iterator's own
    (grain's checkpoint handler writes ``get_state()`` of an object that is not a
    ``DatasetIterator`` as the bytes it returns; the restore reads it back as JSON)."""

    def __init__(self, state: dict):
        self._state = json.dumps(state).encode()

    def get_state(self) -> bytes:
        return self._state


@jax.jit
def _all_finite(tree) -> jax.Array:
    """``[]`` bool: every element of every leaf is finite.

    One reduction over the leaves laid end to end: a reduction per leaf (hundreds in an
    SSDLite) took XLA:CPU 5.6 s to compile, stalling the first checkpoint of a run; this
    form compiles in 0.5 s."""
    leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.isfinite(jnp.concatenate(leaves))) if leaves else jnp.bool_(True)


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


def _resumed_settings(workdir: str) -> Settings | None:
    """The settings of the run in ``workdir`` when it holds checkpoints to resume (None
    for a new run)."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not (os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
            and os.path.isfile(os.path.join(workdir, "config.json"))):
        return None
    return restore.load_run_settings(workdir)


def _check_resume(workdir: str, previous: Settings, settings: Settings, allow: bool) -> dict[str, Any]:
    """The config changes of a resume, ``{key: [old, new]}``; raises ConfigChangeError for
    refused ones unless ``allow``."""
    refused, allowed = config_lib.resume_changes(previous, settings)
    if refused and not allow:
        lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise config_lib.ConfigChangeError(
            f"{workdir} holds checkpoints of another config; these settings differ from its config.json:\n{lines}\n"
            "Resume with the run's own settings, start a new workdir, or pass --allow-config-change "
            "(launch.py train) / allow_config_change=True to resume anyway.")
    changes = {**refused, **allowed}
    for key, (a, b) in changes.items():
        logger.warning("resuming %s with %s changed: %r -> %r", workdir, key, a, b)
    return changes


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> dict[str, Any]:
    """Run (or resume) the experiment ``config`` in ``workdir``.

    A workdir that holds checkpoints is resumed. Its ``config.json`` is compared with
    ``config`` first: a change of the model, the data or the loss (or the seed) raises
    :class:`~ssd_jax.config.ConfigChangeError` listing the keys, unless
    ``allow_config_change``; the other changes (more steps, another learning rate ...) are
    logged and recorded in ``run_info.json`` (``config_changes``), and the learning-rate
    schedule is rebuilt from the new settings (its value at the resumed step is logged).

    Returns ``{"step": last step, "metrics": last logged train metrics, "eval": last
    evaluation or {}, "preempted": bool, "state": the final TrainState}``.
    """
    settings = Settings.from_config(config)
    settings.check_paths()
    workdir = os.path.abspath(workdir)
    previous = _resumed_settings(workdir)
    # The input convention the weights expect, recorded in config.json for eval and predict:
    # a resumed run's own, else the one a pretrained checkpoint records (a contradiction
    # with the config is an error there).
    normalization = settings.model.normalization
    if previous is not None:
        if normalization == "auto":
            normalization = previous.model.normalization
    elif settings.run.init_from:
        normalization = builders.init_from_normalization(settings.model, settings.run.init_from)
    if normalization != settings.model.normalization:
        config = config.copy_and_resolve_references()
        config.model.normalization = normalization
        settings = Settings.from_config(config)
    changes = {} if previous is None else _check_resume(workdir, previous, settings, allow_config_change)
    run = settings.run
    os.makedirs(workdir, exist_ok=True)
    primary = jax.process_index() == 0
    if primary:
        run_info.write_run_info(workdir, config.to_json_best_effort(indent=1, sort_keys=True),
                                {"config_changes": changes} if changes else None)

    mesh = parallel.make_mesh()
    global_bs = settings.data.batch_size
    local_bs = parallel.per_process_batch_size(global_bs, mesh)
    train_src, eval_src = builders.build_sources(settings.data)
    if primary:  # what predict needs without the data
        restore.write_run_classes(workdir, train_src.class_names, train_src.category_ids)

    model = builders.build_model(settings.model, train_src.num_classes, nnx.Rngs(run.seed))
    if run.init_from:
        builders.apply_init_from(model, run.init_from)
    tx, schedule = train_lib.make_optimizer(settings.optim)
    graphdef, state = train_lib.create_train_state(model, tx, run.seed)
    priors = anchors.generate(model.spec)
    state = parallel.replicate(state, mesh)
    step_fn = train_lib.make_train_step(graphdef, tx, schedule, priors, settings.loss)
    augment_on = builders.augment_on(settings.data)
    if augment_on == "device":
        step_fn = builders.device_augmented_step(step_fn, settings, model.spec.image_size)
    step_fn = parallel.jit_train_step(step_fn, mesh, state)

    data_iter = iter(pipeline.train_dataset(train_src, builders.train_pipeline_config(settings, model.spec.image_size, local_bs)))

    evaluates = bool(run.eval_every or run.eval_at_end)
    # Only evaluations of the whole eval split rank checkpoints (as launch.py eval --best).
    complete_evals = eval_loop.covers_split(len(eval_src), run.eval_max_images)
    if run.keep_best and evaluates and not complete_evals:
        logger.warning("keep_best is off: evaluations cover %d of the %d eval images (eval_max_images), "
                       "too few to rank checkpoints; the latest %d are kept", run.eval_max_images,
                       len(eval_src), run.keep_checkpoints)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), run.checkpoint_every,
                                      run.keep_checkpoints, keep_best=run.keep_best and evaluates and complete_evals,
                                      best_metric=settings.eval.best_key)
    if ckpt.latest_step() is not None:
        state = ckpt.restore(None, state, data_iter)
        logger.info("resumed from step %d", int(state.step))
        if any(k.startswith("optim.") or k == "num_steps" for k in changes):
            resumed = int(jax.device_get(state.step))
            old_lr = float(train_lib.make_schedule(previous.optim)(resumed))
            logger.warning("optimiser settings changed on resume: the learning-rate schedule is rebuilt; "
                           "at step %d it gives %.6g (the previous schedule gave %.6g)", resumed,
                           float(schedule(resumed)), old_lr)
    step = int(jax.device_get(state.step))
    num_steps = run.num_steps
    if primary:  # entries past the restored step are replayed, so logged once, by the replay
        dropped = metric_writers.truncate_metrics(workdir, step)
        if dropped:
            logger.info("metrics.jsonl: %d entries after step %d dropped (the run replays them)", dropped, step)

    evaluator = eval_step = eval_pcfg = None
    if evaluates:
        evaluator = builders.build_evaluator(eval_src, settings.eval)
        eval_step = builders.build_predict_fn(graphdef, model.spec, settings)
        eval_pcfg = builders.eval_pipeline_config(settings, model.spec.image_size, local_bs)

    progress = None
    echo = print
    if run.progress_bar and primary:
        from tqdm import tqdm

        progress = tqdm(total=num_steps, initial=step, desc=run.name, unit="step", dynamic_ncols=True)
        echo = progress.write
    writer = metric_writers.create_writer(workdir, echo=echo, enabled=primary)
    if primary and step == 0:
        writer.write_hparams(_flat_config(config))
    report = metric_writers.ProgressReport(num_train_steps=num_steps, every_steps=run.log_every,
                                           images_per_step=global_bs)
    preempt = checkpointing.PreemptionFlag()
    if threading.current_thread() is threading.main_thread():
        preempt.install()

    echo(f"{run.name}: {model.name} {model.spec.image_size}px, {model.spec.num_priors} priors, "
         f"{len(train_src)} training images (augmented on the {augment_on}), global batch {global_bs} over "
         f"{mesh.devices.size} device(s), "
         f"steps {step} -> {num_steps}, workdir {workdir}")
    acc = None  # the log interval's clu metrics, on the device
    last_logged: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    preempted = False
    last_eval_step = None
    t_start, start_step = time.perf_counter(), step

    def run_eval(step: int) -> dict[str, float]:
        with report.timed("eval", wait_jax_async_dispatch=False):
            result, _ = eval_loop.evaluate(eval_step, state.params, state.model_state, eval_src, eval_pcfg, mesh,
                                           evaluator, max_images=run.eval_max_images)
            writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items() if not k.startswith("AP/")})
            if primary and run.eval_draw_images and jax.process_count() == 1:  # one host: see draw_predictions
                path = draw_predictions(eval_step, state, eval_src, eval_pcfg, os.path.join(workdir, "predictions"),
                                        step, run.eval_draw_images, writer)
                echo(f"step {step}: predictions on {run.eval_draw_images} val images -> {path}")
        return result

    def fetch():
        """The next batch, placed on the devices, and the data position before it."""
        position = _Position(data_iter.get_state())
        return position, parallel.global_batch(next(data_iter), mesh, global_bs)

    # One batch ahead: the next batch is read and copied to the devices while the step runs.
    # Checkpoints record the position before that batch, so a resumed run reads it again.
    pending = fetch() if step < num_steps else None
    try:
        while step < num_steps:
            _, batch = pending
            state, metrics = step_fn(state, batch)  # dispatched; runs while the next batch is fetched
            step += 1
            pending = fetch() if step < num_steps else None
            position = pending[0] if pending is not None else data_iter
            acc = train_lib.merge_train_metrics(acc, metrics)
            guard = {k: float(v) for k, v in jax.device_get({"loss": metrics["loss"], "grad_norm": metrics["grad_norm"]}).items()}
            if not (math.isfinite(guard["loss"]) and math.isfinite(guard["grad_norm"])):
                raise NonFiniteLossError(step, {k: float(v) for k, v in jax.device_get(metrics).items()},
                                         ckpt.latest_step())
            report(step)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{guard['loss']:.3f}", refresh=False)
            if step % run.log_every == 0 or step == num_steps:
                last_logged = {k: float(v) for k, v in jax.device_get(acc.compute()).items()}
                writer.write_scalars(step, {**last_logged, **report.last})  # rates: {} if clu's clock just started
                report.last, acc = {}, None
            evaluated = None
            if evaluator is not None and ((run.eval_every and step % run.eval_every == 0)
                                          or (run.eval_at_end and step == num_steps)):
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
                    ckpt.save(step, state, position, force=evaluated is not None or final, metrics=evaluated)
            if stop:
                who = f"signal {preempt.signum}" if preempt.requested else "a signal to another host"
                echo(f"stopped by {who} at step {step}; checkpoint saved, rerun on {workdir} to resume")
                preempted = True
                break
        if not preempted:
            ckpt.save(step, state, pending[0] if pending is not None else data_iter, force=True)  # no-op if saved
            if evaluator is not None and run.eval_at_end and step >= num_steps and last_eval_step != step:
                last_eval = run_eval(step)
        elapsed = time.perf_counter() - t_start
        if step > start_step:
            echo(f"done: steps {start_step} -> {step} in {elapsed:.1f} s ({(step - start_step) / elapsed:.2f} steps/s incl. compile)")
        if primary:
            echo(f"workdir {workdir}: checkpoints/ (orbax), tensorboard/ (tensorboard --logdir {workdir}/tensorboard), "
                 f"metrics.jsonl" + (", predictions/ (PNGs of val predictions)" if evaluator is not None and run.eval_draw_images else ""))
    finally:
        preempt.uninstall()
        if progress is not None:
            progress.close()
        writer.close()
        ckpt.close()
        if hasattr(data_iter, "close"):
            data_iter.close()
    return {"step": step, "metrics": last_logged, "eval": last_eval, "preempted": preempted, "state": state}
