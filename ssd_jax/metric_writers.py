"""Where training metrics go: the console (through a callback) and ``metrics.jsonl``.

One JSON object per line, ``{"step": int, "time": unix seconds, <name>: float, ...}``, so a
run's history is readable with nothing but the standard library (``pandas.read_json(...,
lines=True)`` works too). TensorBoard is written too when ``tensorboardX`` is importable
(it is not a dependency); nothing here needs TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Mapping


def format_scalars(scalars: Mapping[str, float]) -> str:
    """``{"loss": 1.23456}`` -> ``"loss=1.235"`` (compact, stable order)."""
    parts = []
    for k in sorted(scalars):
        v = float(scalars[k])
        parts.append(f"{k}={v:.4g}" if math.isfinite(v) else f"{k}={v}")
    return " ".join(parts)


class MetricWriter:
    """Append scalars to ``<workdir>/metrics.jsonl`` and echo them with ``echo``.

    Args:
      workdir: run folder (the file is appended to across restarts).
      echo: called with one formatted line per write (e.g. ``print`` or ``tqdm.write``);
        None: silent.
      enabled: False on non-primary processes (writes nothing).
    """

    def __init__(self, workdir: str, echo: Callable[[str], None] | None = print, enabled: bool = True):
        self.enabled = enabled
        self.echo = echo
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            try:
                from tensorboardX import SummaryWriter  # optional

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:
                self._tb = None

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        values = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), "time": time.time(), **values}, allow_nan=True) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self.echo is not None:
            self.echo(f"step {step}: {format_scalars(values)}")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """All lines of ``<workdir>/metrics.jsonl`` (empty if none)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
