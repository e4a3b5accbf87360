"""Hyperparameter sweeps: points defined as code, run one after another or one per job.

An experiment file that defines ``get_sweep()`` (beside ``get_config()``) is a sweep: it
returns a list of points, each a ``{config key: value}`` dict of overrides, usually built
with :func:`product` and :func:`zip_axes`. Each point runs as an ordinary training run in
``<sweep dir>/<point name>/`` (its resolved config, checkpoints and logs there), and a
``status.json`` records ``running`` / ``done`` / ``failed`` (with the error), so a rerun
skips finished points, resumes an interrupted one from its checkpoint, and one diverging
point does not stop the others. :func:`summarize` reads the point folders back into a
table (also CSV and a PNG of the target metric against each swept value).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from ssd_jax import config as config_lib

Point = dict  # {config key: value}


def product(**axes: Sequence[Any]) -> list[Point]:
    """Every combination of the axes' values: ``product(**{"optim.lr": [..], ...})``."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def zip_axes(**axes: Sequence[Any]) -> list[Point]:
    """The i-th values of every axis together (all axes the same length)."""
    lengths = {k: len(v) for k, v in axes.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zip_axes needs axes of one length, got {lengths}")
    keys = list(axes)
    return [dict(zip(keys, values)) for values in zip(*(axes[k] for k in keys))]


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(_short(v) for v in value)
    return str(value)


def point_name(point: Mapping[str, Any]) -> str:
    """A folder name from the point's values: ``lr=0.001_neg_pos_ratio=3``."""
    parts = [f"{key.split('.')[-1]}={_short(value)}" for key, value in point.items()]
    name = "_".join(parts) or "base"
    return "".join(c if c.isalnum() or c in "=._+-" else "-" for c in name)


def load_sweep(spec: str) -> tuple[ml_collections.ConfigDict, list[Point]]:
    """``experiments/<sweep>.py[:arg]`` -> (base config, points), with every point's keys
    checked against the config (a typo is an error before anything runs)."""
    module, arg = config_lib.load_module(spec)
    path = spec.partition(":")[0]
    base = config_lib.config_of(module, arg, path)
    if not hasattr(module, "get_sweep"):
        raise AttributeError(f"{path} has no get_sweep(): it is an experiment, not a sweep")
    points = list(module.get_sweep())
    if not points:
        raise ValueError(f"{path}: get_sweep() returned no points")
    names = [point_name(p) for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: two points share a name: {sorted(n for n in names if names.count(n) > 1)}")
    for p in points:
        apply_point(base, p)  # raises on an unknown key or a value of the wrong type
    return base, points


def apply_point(base: ml_collections.ConfigDict, point: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``base`` with the point's overrides (typed like ``--config.x=v``)."""
    config = ml_collections.ConfigDict(base.to_dict())
    overrides = [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in point.items()]
    config = config_lib.apply_overrides(config, overrides)
    config.name = f"{base.name}/{point_name(point)}"
    return config


def read_status(point_dir: str) -> dict:
    path = os.path.join(point_dir, "status.json")
    if not os.path.isfile(path):
        return {"status": "pending"}
    with open(path) as f:
        return json.load(f)


def _write_status(point_dir: str, **status) -> None:
    os.makedirs(point_dir, exist_ok=True)
    tmp = os.path.join(point_dir, "status.json.tmp")
    with open(tmp, "w") as f:
        json.dump({**status, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f, indent=1)
    os.replace(tmp, os.path.join(point_dir, "status.json"))


def run_point(base: ml_collections.ConfigDict, point: Point, sweep_dir: str,
              train: Callable[[ml_collections.ConfigDict, str], dict] | None = None,
              echo: Callable[[str], None] = print) -> dict:
    """Run one point unless it is done; returns its status. Failures are recorded, not raised."""
    point_dir = os.path.join(sweep_dir, point_name(point))
    status = read_status(point_dir)
    if status["status"] == "done":
        echo(f"{point_name(point)}: done already, skipped")
        return status
    if train is None:
        from ssd_jax.training_loop import train_and_evaluate as train
    config = apply_point(base, point)
    _write_status(point_dir, status="running", point=point)
    try:
        result = train(config, point_dir)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - a failing point must not stop the sweep
        status = dict(status="failed", point=point, error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc(limit=5))
        _write_status(point_dir, **status)
        echo(f"{point_name(point)}: FAILED ({status['error'].splitlines()[0]})")
        return status
    if result.get("preempted"):
        status = dict(status="interrupted", point=point, step=result.get("step"))
    else:
        status = dict(status="done", point=point, step=result.get("step"),
                      final={k: v for k, v in result.get("metrics", {}).items()},
                      eval={k: v for k, v in result.get("eval", {}).items() if not k.startswith("AP/")})
    _write_status(point_dir, **status)
    return status


def summarize(sweep_dir: str, target: str = "mAP") -> list[dict]:
    """One row per point folder: its swept values, status, steps, final loss, final and
    best ``eval/<target>``; sorted by the best target, highest first (NaN last)."""
    from ssd_jax import metric_writers

    rows = []
    for name in sorted(os.listdir(sweep_dir)):
        point_dir = os.path.join(sweep_dir, name)
        if not os.path.isfile(os.path.join(point_dir, "status.json")):
            continue
        status = read_status(point_dir)
        row = {"name": name, **{k: v for k, v in status.get("point", {}).items()},
               "status": status["status"], "steps": float("nan"), "final_loss": float("nan"),
               f"final_{target}": float("nan"), f"best_{target}": float("nan")}
        entries = metric_writers.read_metrics(point_dir)
        if entries:
            losses = [e for e in entries if "loss" in e]
            evals = [e for e in entries if f"eval/{target}" in e]
            if losses:
                row["steps"], row["final_loss"] = losses[-1]["step"], losses[-1]["loss"]
            if evals:
                row[f"final_{target}"] = evals[-1][f"eval/{target}"]
                row[f"best_{target}"] = max(e[f"eval/{target}"] for e in evals)
        if status["status"] == "failed":
            row["error"] = status.get("error", "").splitlines()[0][:120]
        rows.append(row)
    best = f"best_{target}"
    rows.sort(key=lambda r: (math.isnan(r[best]), -r[best] if not math.isnan(r[best]) else 0.0, r["name"]))
    return rows


def format_table(rows: Sequence[dict]) -> str:
    if not rows:
        return "(no points)"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path: str) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in r.items()})
    return path


def plot(rows: Sequence[dict], swept: Sequence[str], path: str, target: str = "mAP") -> str:
    """One panel per swept key: the best ``target`` of each finished point against its value."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(swept) or ["name"]
    fig = Figure(figsize=(4.5 * len(keys), 3.6))
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        done = [r for r in rows if not math.isnan(r[f"best_{target}"])]
        xs = [r.get(key) for r in done]
        numeric = all(isinstance(x, (int, float)) for x in xs)
        positions = xs if numeric else list(range(len(xs)))
        ax.scatter(positions, [r[f"best_{target}"] for r in done])
        for r in rows:
            if r["status"] == "failed" and numeric and isinstance(r.get(key), (int, float)):
                ax.axvline(r[key], color="red", alpha=0.3)
        if numeric and xs and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(positions, [str(x) for x in xs], rotation=45, fontsize=7)
        ax.set_xlabel(key)
        ax.set_ylabel(f"best eval {target}")
    fig.suptitle(f"sweep: best {target} per point (red lines: failed points)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
