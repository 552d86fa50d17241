"""Training curves as a PNG: a grid of panels, at most three columns, one panel per metric.

A metric's training and validation twins share a panel (``loss``/``val_loss``,
``train/box_loss``/``val/box_loss``, ``train_acc``/``val_acc``); the learning rates of all
parameter groups share one (``lr/pg0``, ``lr/pg1``, ``lr``, ``learning_rate``, ``lr-Adam``...).
The best epoch of the monitored metric (``val_loss`` if the run has it, else ``loss``) is
marked. Epochs are drawn as the payloads number them, from 0.

matplotlib is an optional extra (``pip install 'eventhooks[plot]'``), imported only here and
only when plotting; its object API is used (no pyplot), so no global backend is touched.
:func:`figure` builds the figure, :func:`layout` describes one (panels, lines, labels, the
best-epoch mark) and :func:`plot_series` writes the PNG.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import EventhooksError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class MissingExtraError(EventhooksError, ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


#: The title of the panel that holds every learning rate.
LR_PANEL = "learning rate"
#: Panels per row, at most.
MAX_COLUMNS = 3

_VAL_PREFIXES = ("val_", "val/", "validation_", "validation/")
_TRAIN_PREFIXES = ("train_", "train/", "training_", "training/")
#: A learning rate's name: ``lr`` or ``learning_rate``, then optionally ``_<digits>`` (an
#: optimizer's index: Lightning's ``lr_0``) or ``-<name>`` (LearningRateMonitor's ``lr-Adam``),
#: then optionally ``/<anything>`` (a parameter group: ``lr/pg1``, ``lr-Adam/pg1``).
_LR_NAME = re.compile(r"(lr|learning_rate)(?:_[0-9]+|-[^/-]+)?(?:/.*)?", re.DOTALL)
_DPI = 100
_MARKERS = ("o", "s", "^", "D", "v", "P")
_PANEL_INCHES = (4.6, 3.3)  # one panel's width and height


def learning_rate_name(key: str) -> str | None:
    """The name a learning rate is logged under, whatever the framework calls it; None when
    ``key`` is not a learning rate. The one rule the trackers and :func:`is_learning_rate` use.

    Learning rates are ``lr`` and ``learning_rate``, followed by nothing, by ``_<digits>``
    (Lightning's ``lr_0``) or by ``-<name>`` (Lightning's LearningRateMonitor: ``lr-Adam``),
    then optionally by ``/...`` (parameter groups: ``lr/pg1``, ``lr-Adam/pg1``; not the
    monitor's ``lr-SGD-momentum`` or ``lr-SGD-weight_decay``). Their name is
    Keras': ``learning_rate`` followed by the same rest (``lr/pg1`` -> ``learning_rate/pg1``,
    ``lr_0`` -> ``learning_rate_0``, ``lr-Adam`` -> ``learning_rate-Adam``). Anything else is
    not a rate: ``lr_decay`` (Adagrad's), ``lrx``, ``slr``, ``LR`` (case counts here).
    """
    match = _LR_NAME.fullmatch(key)
    if match is None:
        return None
    return "learning_rate" + key[len(match.group(1)) :]


def is_learning_rate(key: str) -> bool:
    """Whether ``key`` is a learning rate in a plot: one of its ``/``-separated parts, in
    lower case, is one by :func:`learning_rate_name`: ``lr``, ``learning_rate``, ``lr/pg0``
    (Ultralytics' parameter groups), ``lr_0``, ``lr-Adam`` and ``lr-Adam/pg1`` (Lightning's
    LearningRateMonitor), ``train/lr``, ``LR``; not ``lr_decay``."""
    return any(learning_rate_name(part) is not None for part in key.lower().split("/"))


def panel_of(key: str) -> str:
    """The panel a metric key is drawn in: its name without training or validation prefixes
    (``val_loss`` and ``loss`` -> ``loss``; ``train/box_loss`` and ``val/box_loss`` ->
    ``box_loss``), or :data:`LR_PANEL` for a learning rate. A key and its twin always share
    a panel: ``panel_of("val_" + k) == panel_of(k)``, and so for ``val/``/``train/``."""
    base = key
    stripped = True
    while stripped:
        stripped = False
        for prefix in (*_VAL_PREFIXES, *_TRAIN_PREFIXES):
            if base.startswith(prefix) and len(base) > len(prefix):
                base, stripped = base[len(prefix) :], True
                break
    if is_learning_rate(key) or is_learning_rate(base):
        return LR_PANEL
    return base


def panels(keys: Sequence[str]) -> dict[str, list[str]]:
    """Group metric keys by panel: ``{"loss": ["loss", "val_loss"], ...}``, in first-seen order
    of panels and of keys within a panel; every key lands in exactly one panel."""
    grouped: dict[str, list[str]] = {}
    for key in keys:
        members = grouped.setdefault(panel_of(key), [])
        if key not in members:
            members.append(key)
    return grouped


def grid(count: int) -> tuple[int, int]:
    """``(rows, columns)`` for ``count`` panels: at most :data:`MAX_COLUMNS` columns."""
    if count < 1:
        raise ValueError("nothing to plot: no metrics")
    columns = min(MAX_COLUMNS, count)
    return math.ceil(count / columns), columns


def default_monitor(keys: Sequence[str]) -> str | None:
    """The metric whose best epoch is marked by default: ``val_loss``, else ``loss``, else none."""
    for key in ("val_loss", "loss"):
        if key in keys:
            return key
    return None


def best_point(
    points: Sequence[tuple[int, float]], mode: Literal["min", "max"]
) -> tuple[int, float] | None:
    """The (epoch, value) of the best finite value, the first one on a tie; ``None`` if none."""
    best: tuple[int, float] | None = None
    for epoch, value in points:
        if not math.isfinite(value):
            continue
        if best is None or (value < best[1] if mode == "min" else value > best[1]):
            best = (epoch, value)
    return best


def run_title(log: str | os.PathLike[str], started: float | None) -> str:
    """A run's title from its log: ``"<folder>/<file>, <local date and time>"``.

    The folder is there because a run folder (``runs/20261202-0703/events.jsonl``) names the
    run better than its file does; the date is the log's first record's ``time``.
    """
    path = Path(log).absolute()
    name = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    if started is None:
        return name
    return f"{name}, {datetime.fromtimestamp(started).astimezone():%Y-%m-%d %H:%M %Z}"


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


@dataclass(frozen=True)
class Panel:
    """One drawn panel, read back from the figure by :func:`layout`."""

    title: str
    xlabel: str
    ylabel: str
    row: int
    column: int
    #: metric key -> its (epoch, value) points as drawn (NaN where a value is not finite)
    lines: dict[str, list[tuple[float, float]]]
    #: the monitored metric's best (epoch, value), when this panel holds it
    best: tuple[float, float] | None = None
    #: the label of the best-epoch marker, as the legend shows it
    best_label: str | None = None
    #: epochs at which a vertical best-epoch line is drawn
    best_lines: list[float] = field(default_factory=list)
    #: the legend's entries, in order
    legend: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """What a figure shows: its size in pixels at the PNG's resolution, title, grid, panels."""

    width: int
    height: int
    title: str
    rows: int
    columns: int
    panels: list[Panel]


def figure(
    series: Mapping[str, Series],
    *,
    title: str | None = None,
    monitor: str | None = None,
    mode: str = "auto",
    mark_best: bool = True,
) -> Figure:
    """The matplotlib figure of per-metric (epoch, value) curves (see the module's docstring).

    ``monitor`` names the metric whose best epoch is marked (default: :func:`default_monitor`;
    ``mark_best=False`` marks none); ``mode`` (``"auto"``, ``"min"``, ``"max"``) says which
    way it improves, ``"auto"`` deciding from its name as ``EarlyStopping`` does. A monitor
    that is not among the metrics, or whose direction the name does not tell, is a
    ``ValueError``.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise MissingExtraError(
            "plotting needs matplotlib: pip install 'eventhooks[plot]'"
        ) from None
    from .callbacks._monitor import direction

    if not series:
        raise ValueError("nothing to plot: the run has no epoch logs")
    keys = list(series)
    best: tuple[int, float] | None = None
    if mark_best:
        if monitor is None:
            monitor = default_monitor(keys)
        elif monitor not in series:
            raise ValueError(
                f"cannot mark the best epoch of {monitor!r}: the run's metrics are "
                f"{', '.join(keys)}"
            )
        if monitor is not None:
            try:
                way = direction(monitor, mode, "plot")
            except ValueError:
                if mode != "auto":
                    raise
                raise ValueError(
                    f"cannot tell whether {monitor!r} is better lower or higher: pass "
                    "mode='min' or mode='max' (--mode on the command line)"
                ) from None
            best = best_point(series[monitor], way)
    groups = panels(keys)
    rows, columns = grid(len(groups))
    width, height = _PANEL_INCHES
    fig = Figure(
        figsize=(width * columns, height * rows + (0.4 if title else 0.0)),
        layout="constrained", dpi=_DPI,
    )  # fmt: skip
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False)
    for index, (name, members) in enumerate(groups.items()):
        ax = axes[index // columns][index % columns]
        for order, key in enumerate(members):
            points = series[key]
            # Lines that coincide (three LR groups on one schedule) stay visible: each later
            # line has a smaller marker of another shape, drawn over the earlier ones.
            ax.plot(
                [epoch for epoch, _ in points],
                [v if math.isfinite(v) else math.nan for _, v in points],
                marker=_MARKERS[order % len(_MARKERS)],
                markersize=max(2.5, 3.0 + 2.0 * (len(members) - 1 - order)),
                label=key, gid=f"metric:{key}",
                linestyle="--" if key.startswith(_VAL_PREFIXES) else "-",
            )  # fmt: skip
        if best is not None:
            ax.axvline(best[0], color="0.5", linewidth=0.8, linestyle=":", gid="best-epoch")
            if monitor in members:
                ax.plot(
                    [best[0]], [best[1]], marker="*", markersize=13, linestyle="none",
                    color="crimson", gid="best", zorder=5,
                    label=f"best: epoch {best[0]} ({monitor}={best[1]:.4g})",
                )  # fmt: skip
        # Names are text, never TeX: matplotlib would parse "$...$" (and fail on "$\frac$").
        ax.set_title(name, parse_math=False)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name, parse_math=False)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        # Explicit labels: matplotlib leaves out of a legend any label that starts with "_".
        handles = [line for line in ax.get_lines() if line.get_gid() != "best-epoch"]
        legend = ax.legend(handles, [str(h.get_label()) for h in handles], fontsize="small")
        for text in legend.get_texts():
            text.set_parse_math(False)
    for index in range(len(groups), rows * columns):
        axes[index // columns][index % columns].remove()  # the last row's empty cells
    if title:
        fig.suptitle(title, parse_math=False)
    return fig


def layout(fig: Figure) -> Layout:
    """Describe a figure made by :func:`figure`: what a reader of the PNG would see."""
    found: list[Panel] = []
    rows = columns = 0
    for ax in fig.get_axes():
        spec = ax.get_subplotspec()
        if spec is None:
            continue
        rows, columns = spec.get_gridspec().get_geometry()
        lines: dict[str, list[tuple[float, float]]] = {}
        best: tuple[float, float] | None = None
        best_label: str | None = None
        best_lines: list[float] = []
        for line in ax.get_lines():
            gid = line.get_gid() or ""
            xs: Any = line.get_xdata()
            ys: Any = line.get_ydata()
            if gid.startswith("metric:"):
                lines[gid.removeprefix("metric:")] = [
                    (float(x), float(y)) for x, y in zip(xs, ys, strict=True)
                ]
            elif gid == "best":
                best, best_label = (float(xs[0]), float(ys[0])), str(line.get_label())
            elif gid == "best-epoch":
                best_lines.append(float(xs[0]))
        legend = ax.get_legend()
        entries = [text.get_text() for text in legend.get_texts()] if legend else []
        found.append(Panel(
            ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), spec.rowspan.start,
            spec.colspan.start, lines, best, best_label, best_lines, entries,
        ))  # fmt: skip
    width, height = fig.get_size_inches() * _DPI
    return Layout(round(width), round(height), fig.get_suptitle(), rows, columns, found)


def plot_series(
    series: Mapping[str, Series],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    monitor: str | None = None,
    mode: str = "auto",
    mark_best: bool = True,
) -> Path:
    """Draw per-metric (epoch, value) curves to the PNG at ``path`` (see :func:`figure`)."""
    fig = figure(series, title=title, monitor=monitor, mode=mode, mark_best=mark_best)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=_DPI)
    return out


def plot_history(
    history: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    *,
    epochs: Sequence[int] | None = None,
    title: str | None = None,
    monitor: str | None = None,
    mode: str = "auto",
) -> Path:
    """Draw ``history`` (a ``History.history``-shaped dict, every key on every epoch) at
    ``epochs`` (default ``0, 1, ...``: the payloads' numbering)."""
    xs = list(epochs) if epochs is not None else None
    series = {
        key: [(xs[i] if xs is not None else i, float(v)) for i, v in enumerate(values)]
        for key, values in history.items()
    }
    return plot_series(series, path, title=title, monitor=monitor, mode=mode)
