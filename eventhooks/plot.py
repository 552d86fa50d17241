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


#: One metric's curve: (0-based epoch, value) points.
Series = Sequence[tuple[int, float]]


def epoch_series(
    rows: Sequence[tuple[int, Mapping[str, float]]],
) -> dict[str, list[tuple[int, float]]]:
    """Per-metric curves from (epoch, logs) rows: a metric missing in an epoch has no point
    there (Keras-shaped ``History.history`` lists would shift it onto the wrong epoch)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for epoch, logs in rows:
        for key, value in logs.items():
            series.setdefault(key, []).append((epoch, float(value)))
    return series


def plot_history(
    history: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    *,
    epochs: Sequence[int] | None = None,
    title: str | None = None,
) -> Path:
    """Draw ``history`` (a ``History.history``-shaped dict, every key on every epoch)."""
    xs = list(epochs) if epochs is not None else None
    series = {
        key: [(xs[i] if xs is not None else i, float(v)) for i, v in enumerate(values)]
        for key, values in history.items()
    }
    return plot_series(series, path, title=title)


def plot_series(
    series: Mapping[str, Series], path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Draw per-metric (epoch, value) curves to the PNG at ``path``."""
    history = series
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
            points = history[key]
            ax.plot(
                [epoch + 1 for epoch, _ in points],
                [v if math.isfinite(v) else math.nan for _, v in points],
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
