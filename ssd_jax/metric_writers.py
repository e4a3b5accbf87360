"""Where training metrics go, as ``clu.metric_writers`` writers.

:func:`create_writer` returns a ``clu.metric_writers.MultiWriter`` of

* :class:`JsonlWriter`: ``<workdir>/metrics.jsonl``, one JSON object per line,
  ``{"step": int, "time": unix seconds, <name>: float, ...}``, readable with nothing but the
  standard library (``pandas.read_json(..., lines=True)`` works too);
* :class:`TensorBoardWriter`: TensorBoard event files in ``<workdir>/tensorboard`` (scalars,
  images, texts, histograms, hparams), written with ``tensorboardX`` so no TensorFlow is
  needed (clu's own ``SummaryWriter`` imports TensorFlow);
* :class:`ConsoleWriter`: one line per write through a callback (``print``, ``tqdm.write``).

Every writer is synchronous and flushes after each write: what was logged before a crash
is on disk. :class:`ProgressReport` is clu's ``periodic_actions.ReportProgress`` (steps/s,
ETA) feeding the same log lines.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
import time
import types
from typing import Any, Callable, Mapping

import numpy as np

logger = logging.getLogger(__name__)


def _stub_clu_tf_summary_writer() -> None:
    """Let ``clu.metric_writers`` import without TensorFlow.

    clu 0.0.12's package ``__init__`` imports its TF ``SummaryWriter`` eagerly, so the whole
    package (and ``clu.periodic_actions``) fails to import without TensorFlow, which this
    project does not install (a 270 MB wheel, for one writer we replace with tensorboardX).
    Where TensorFlow is missing, that one module is registered as a placeholder whose
    ``SummaryWriter`` raises when used; everything else in clu is the real thing.
    """
    name = "clu.metric_writers.summary_writer"
    if name in sys.modules or importlib.util.find_spec("tensorflow") is not None:
        return
    stub = types.ModuleType(name)

    class SummaryWriter:  # noqa: D401 - placeholder
        def __init__(self, *args, **kwargs):
            raise ImportError("clu's SummaryWriter needs tensorflow; ssd_jax writes TensorBoard files with "
                              "ssd_jax.metric_writers.TensorBoardWriter (tensorboardX) instead")

    stub.SummaryWriter = SummaryWriter
    sys.modules[name] = stub


_stub_clu_tf_summary_writer()

from clu import metric_writers, periodic_actions  # noqa: E402


def format_scalars(scalars: Mapping[str, float]) -> str:
    """``{"loss": 1.23456}`` -> ``"loss=1.235"`` (compact, stable order)."""
    parts = []
    for k in sorted(scalars):
        v = float(scalars[k])
        parts.append(f"{k}={v:.4g}" if math.isfinite(v) else f"{k}={v}")
    return " ".join(parts)


def _floats(scalars: Mapping[str, Any]) -> dict[str, float]:
    """``{name: float}`` of scalars given as Python numbers, numpy or jax 0-d arrays."""
    return {k: float(np.asarray(v)) for k, v in scalars.items()}


class _ScalarsOnly(metric_writers.MetricWriter):
    """Base of writers that keep scalars only (other kinds are accepted and dropped)."""

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        pass

    def close(self):
        pass


class JsonlWriter(_ScalarsOnly):
    """Append scalars to ``<workdir>/metrics.jsonl`` (the file grows across restarts)."""

    def __init__(self, workdir: str):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        values = _floats(scalars)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), "time": time.time(), **values}, allow_nan=True) + "\n")


class ConsoleWriter(_ScalarsOnly):
    """``step N: a=1 b=2`` through ``echo`` (e.g. ``tqdm.write`` beside a progress bar)."""

    def __init__(self, echo: Callable[[str], None] = print):
        self.echo = echo

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self.echo(f"step {int(step)}: {format_scalars(_floats(scalars))}")

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for k, v in texts.items():
            self.echo(f"step {int(step)}: {k}: {v}")


class TensorBoardWriter(metric_writers.MetricWriter):
    """TensorBoard event files in ``logdir`` through ``tensorboardX`` (no TensorFlow)."""

    def __init__(self, logdir: str):
        from tensorboardX import SummaryWriter

        self.logdir = logdir
        self._w = SummaryWriter(logdir)

    def write_summaries(self, step, values, metadata=None):
        self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for k, v in _floats(scalars).items():
            self._w.add_scalar(k, v, int(step))
        self._w.flush()

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """``images``: ``[H, W, C]`` or ``[N, H, W, C]`` uint8 or float in [0, 1] (clu's shapes)."""
        for k, v in images.items():
            v = np.asarray(v)
            if v.ndim == 3:
                v = v[None]
            self._w.add_images(k, v, int(step), dataformats="NHWC")
        self._w.flush()

    def write_videos(self, step, videos):
        # tensorboardX's add_video needs moviepy, which this project does not install.
        logger.warning("TensorBoardWriter: videos %s at step %d not written (no video support)", sorted(videos), step)

    def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int) -> None:
        """``audios``: ``[T]`` or ``[1, T]`` floats in [-1, 1] per key."""
        for k, v in audios.items():
            self._w.add_audio(k, np.asarray(v).reshape(-1), int(step), sample_rate=sample_rate)
        self._w.flush()

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for k, v in texts.items():
            self._w.add_text(k, v, int(step))
        self._w.flush()

    def write_histograms(self, step, arrays, num_buckets=None):
        for k, v in arrays.items():
            self._w.add_histogram(k, np.asarray(v), int(step), bins=num_buckets or "tensorflow")
        self._w.flush()

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        # Hyperparameters as one text entry (TensorBoard's hparams plugin wants a metric
        # dict fixed up front, which a resumable run does not have).
        lines = [f"{k} = {v!r}" for k, v in sorted(hparams.items())]
        self._w.add_text("hparams", "    " + "\n    ".join(lines), 0)
        self._w.flush()

    def flush(self):
        self._w.flush()

    def close(self):
        self._w.close()


def create_writer(workdir: str, echo: Callable[[str], None] | None = print, enabled: bool = True,
                  tensorboard: bool = True) -> metric_writers.MultiWriter:
    """The run's writer: ``metrics.jsonl`` + TensorBoard (``<workdir>/tensorboard``) +
    console. ``enabled=False`` (non-primary processes) writes nothing."""
    writers: list[metric_writers.MetricWriter] = []
    if enabled:
        writers.append(JsonlWriter(workdir))
        if tensorboard:
            writers.append(TensorBoardWriter(os.path.join(workdir, "tensorboard")))
        if echo is not None:
            writers.append(ConsoleWriter(echo))
    return metric_writers.MultiWriter(writers)


def _read_lines(path: str) -> tuple[list[dict], bool]:
    """``(entries, clean)`` of the JSON-lines file ``path``; ``clean``: it is empty or ends
    with a newline. A last line that does not parse (the write of a killed process) is
    skipped with a warning; a bad line before it is an error naming the file and line."""
    if not os.path.exists(path):
        return [], True
    with open(path) as f:
        text = f.read()
    clean = not text or text.endswith("\n")
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):
                logger.warning("%s: line %d is cut short (%s); skipped", path, number, e.msg)
                break
            raise ValueError(f"{path}: line {number} is not JSON ({e.msg}): {line[:80]!r}") from None
    return entries, clean


def read_metrics(workdir: str) -> list[dict]:
    """All entries of ``<workdir>/metrics.jsonl`` (empty if none); a torn last line (a
    process killed while writing) is skipped."""
    return _read_lines(os.path.join(workdir, "metrics.jsonl"))[0]


def truncate_metrics(workdir: str, step: int) -> int:
    """Keep the entries of ``<workdir>/metrics.jsonl`` up to ``step`` (the step a run
    resumes from), so the steps it replays are logged once; a torn last line goes too.
    The file is replaced atomically. Returns the number of entries dropped."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    entries, clean = _read_lines(path)
    kept = [e for e in entries if int(e.get("step", 0)) <= step]
    if len(kept) == len(entries) and clean:
        return 0
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(e, allow_nan=True) + "\n" for e in kept)
    os.replace(tmp, path)
    return len(entries) - len(kept)


class ProgressReport(periodic_actions.ReportProgress):
    """clu's ``ReportProgress`` (steps/s, ETA, time per named part via ``timed(name)``) that
    keeps its figures for the loop's own log line instead of writing them separately.

    Call it after every step; on the steps it triggers (every ``every_steps`` and the last),
    :attr:`last` holds ``steps_per_sec``, ``images_per_sec`` and ``eta_sec`` over the
    interval (the first call only starts the clock, so compilation is not counted).
    """

    def __init__(self, *, num_train_steps: int, every_steps: int, images_per_step: int):
        super().__init__(num_train_steps=num_train_steps, writer=None, every_steps=every_steps, every_secs=None)
        self.images_per_step = images_per_step
        self.last: dict[str, float] = {}

    def _apply(self, step: int, t: float) -> None:
        super()._apply(step, t)  # clu's progress note (work unit / absl log)
        rate = (step - self._previous_step) / max(t - self._previous_time, 1e-9)
        self.last = {
            "steps_per_sec": rate,
            "images_per_sec": rate * self.images_per_step,
            "eta_sec": (self._num_train_steps - step) / rate if self._num_train_steps else float("nan"),
        }
