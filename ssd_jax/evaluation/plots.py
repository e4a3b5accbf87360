"""Per-class precision/recall curves drawn to a PNG (matplotlib's Agg canvas, no pyplot)."""

from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np


def plot_precision_recall(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    ap: Mapping[str, float] | None = None,
    title: str | None = None,
    ncols: int = 5,
) -> str:
    """Draw one small precision/recall plot per class into a PNG file.

    Args:
      curves: ``{class name: (recall [n], precision [n])}`` as an evaluator's
        ``precision_recall()`` returns (NaN points are skipped).
      path: the PNG to write.
      ap: optional ``{class name: AP}`` shown in each panel's title.
      title: optional figure title.
      ncols: panels per row.

    Returns:
      ``path`` as a string.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("no curves to plot")
    names = list(curves)
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(2.6 * ncols, 2.4 * nrows + (0.4 if title else 0)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    for i, ax in enumerate(axes.ravel()):
        if i >= len(names):
            ax.set_axis_off()
            continue
        name = names[i]
        recall, precision = (np.asarray(a, np.float64) for a in curves[name])
        ok = ~(np.isnan(recall) | np.isnan(precision))
        if ok.any():
            ax.plot(recall[ok], precision[ok], lw=1.2)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        label = name if ap is None or name not in ap else f"{name}  AP {ap[name]:.3f}"
        ax.set_title(label, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if i % ncols == 0:
            ax.set_ylabel("precision", fontsize=8)
        if i // ncols == nrows - 1:
            ax.set_xlabel("recall", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
    return os.fspath(path)
