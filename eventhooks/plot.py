"""Training curves as a PNG: one panel per metric, train and ``val_`` lines together.

matplotlib is an optional extra (``pip install 'eventhooks[plot]'``), imported only here and
only when plotting; its object API is used (no pyplot), so no global backend is touched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import EventhooksError


class MissingExtraError(EventhooksError, ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


def panels(keys: Sequence[str]) -> dict[str, list[str]]:
    """Group metric keys by panel: ``{"loss": ["loss", "val_loss"], ...}``, in first-seen order."""
    grouped: dict[str, list[str]] = {}
    for key in keys:
        grouped.setdefault(key.removeprefix("val_"), []).append(key)
    return grouped


def plot_history(
    history: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    *,
    epochs: Sequence[int] | None = None,
    title: str | None = None,
) -> Path:
    """Draw ``history`` (a ``History.history``-shaped dict) to the PNG at ``path``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise MissingExtraError(
            "plotting needs matplotlib: pip install 'eventhooks[plot]'"
        ) from None
    if not history:
        raise ValueError("nothing to plot: the run has no epoch logs")
    groups = panels(list(history))
    fig = Figure(figsize=(4.5 * len(groups), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (name, keys) in zip(axes, groups.items(), strict=True):
        for key in keys:
            values = [float(v) for v in history[key]]
            xs = list(epochs)[: len(values)] if epochs is not None else range(len(values))
            ax.plot(
                [x + 1 for x in xs], [v if math.isfinite(v) else math.nan for v in values],
                marker="o", markersize=3, label=key,
            )  # fmt: skip
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out
