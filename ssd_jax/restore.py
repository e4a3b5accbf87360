"""Restore a training run for inference: its config, model, parameters and eval data.

Used by ``launch.py eval`` and ``launch.py predict``. The run's ``config.json`` (written by
training) rebuilds the model and the data sources; the checkpoint is restored into a
train state laid out for *this* process's devices (replicated over the current mesh), so
a run trained on one device evaluates on eight and the other way round.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections
from flax import nnx

from ssd_jax import builders, checkpointing, parallel
from ssd_jax import train_step as train_lib
from ssd_jax.config import Settings
from ssd_jax.metric_writers import read_metrics


@dataclasses.dataclass
class RestoredRun:
    config: ml_collections.ConfigDict
    settings: Settings
    model: nnx.Module  # the freshly built module (structure and prior spec)
    graphdef: Any
    params: Any
    model_state: Any
    step: int
    eval_source: Any  # None when restored without it (restore_run(..., with_eval_source=False))
    mesh: Any
    class_names: tuple[str, ...] = ()
    category_ids: tuple[int, ...] | None = None  # a COCO dataset's ids of classes 1..C


#: The run's classes, written at the start of training: what ``predict`` needs without the data.
CLASSES_FILE = "classes.json"


def write_run_classes(workdir: str, class_names, category_ids) -> None:
    """Record the class names (labels 1..C) and, for COCO data, their category ids."""
    with open(os.path.join(workdir, CLASSES_FILE), "w") as f:
        json.dump({"class_names": list(class_names),
                   "category_ids": None if category_ids is None else [int(c) for c in category_ids]}, f, indent=1)


def load_run_classes(workdir: str) -> tuple[tuple[str, ...], tuple[int, ...] | None] | None:
    """``(class_names, category_ids)`` recorded by :func:`write_run_classes`, or None for a
    run that predates the record."""
    path = os.path.join(workdir, CLASSES_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    ids = data.get("category_ids")
    return tuple(data["class_names"]), None if ids is None else tuple(int(c) for c in ids)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a training run wrote into ``workdir/config.json``."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of a training run?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_run_settings(workdir: str) -> Settings:
    """The validated settings of the run in ``workdir`` (from its ``config.json``)."""
    return Settings.from_config(load_run_config(workdir))


def checkpoint_steps(workdir: str) -> list[int]:
    """Steps of the checkpoints kept in ``workdir/checkpoints``."""
    ckpt = checkpointing.Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"), save_every=1, keep=None)
    try:
        return sorted(ckpt.all_steps())
    finally:
        ckpt.close()


def best_step(workdir: str, key: str = "mAP", metric: str | None = None) -> tuple[int, float]:
    """The kept checkpoint with the highest evaluation ``key``, from the training log
    (``metrics.jsonl``, ``eval/<key>`` entries) and earlier ``launch.py eval`` results
    (``eval/step_<N>.json``); ties go to the later step. Only complete evaluations count
    (not those of ``eval_max_images`` / ``--max-images``, recorded as ``complete`` 0 /
    false; records without the flag count as complete), and with ``metric`` (``voc`` or
    ``coco``) only ``launch.py eval`` results of that metric. Raises if no kept checkpoint
    has such an evaluation."""
    workdir = os.path.abspath(workdir)
    scores: dict[int, float] = {}
    for entry in read_metrics(workdir):
        if f"eval/{key}" in entry and entry.get("eval/complete", 1.0) != 0.0:
            scores[int(entry["step"])] = float(entry[f"eval/{key}"])
    eval_dir = os.path.join(workdir, "eval")
    if os.path.isdir(eval_dir):
        for name in os.listdir(eval_dir):
            if name.startswith("step_") and name.endswith(".json"):
                with open(os.path.join(eval_dir, name)) as f:
                    result = json.load(f)
                if result.get("complete") is False or (metric and result.get("metric", metric) != metric):
                    continue
                if key in result.get("metrics", {}):
                    scores[int(result["step"])] = float(result["metrics"][key])
    kept = set(checkpoint_steps(workdir))
    candidates = {s: v for s, v in scores.items() if s in kept and v == v}
    if not candidates:
        raise ValueError(f"no kept checkpoint of {workdir} has an evaluation with {key!r} "
                         f"(evaluated steps: {sorted(scores)}, kept: {sorted(kept)}); "
                         f"run launch.py eval --step N first")
    step = max(candidates, key=lambda s: (candidates[s], s))
    return step, candidates[step]


def restore_run(workdir: str, step: int | None = None, *, with_eval_source: bool = True) -> RestoredRun:
    """Rebuild the model of the run in ``workdir`` and restore checkpoint ``step`` (latest
    by default) onto the devices of this process.

    ``with_eval_source=False`` (prediction on other images) reads the classes from the
    run's :data:`CLASSES_FILE` instead of the dataset, so the data need not be present; a
    run without that record reads its eval source as before.
    """
    workdir = os.path.abspath(workdir)
    config = load_run_config(workdir)
    settings = Settings.from_config(config)  # the same checks as when it trained
    classes = None if with_eval_source else load_run_classes(workdir)
    eval_source = None
    if classes is None:
        eval_source = builders.build_source(settings.data, "eval")
        classes = eval_source.class_names, eval_source.category_ids
    model = builders.build_model(settings.model, len(classes[0]), nnx.Rngs(settings.run.seed))
    tx, _ = train_lib.make_optimizer(settings.optim)
    graphdef, state = train_lib.create_train_state(model, tx, settings.run.seed)
    mesh = parallel.make_mesh()
    state = parallel.replicate(state, mesh)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=None)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
        if step is not None and step not in steps:
            raise ValueError(f"no checkpoint for step {step} in {workdir}; saved steps: {steps}")
        state = ckpt.restore(step, state, None)
    finally:
        ckpt.close()
    return RestoredRun(config, settings, model, graphdef, state.params, state.model_state, int(state.step),
                       eval_source, mesh, tuple(classes[0]), classes[1])
