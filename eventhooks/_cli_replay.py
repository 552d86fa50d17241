"""``eventhooks replay`` and ``eventhooks plot``: a recorded run through subscribers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import eventlog, events
from .bus import EventBus
from .callbacks import CSVLogger, History
from .eventlog import Incomplete
from .payloads import EpochPayload, RunPayload
from .plot import epoch_series, plot_series, run_title
from .replay import emit_records


@dataclass(frozen=True)
class Replayed:
    """What a replay prints, and how the log ends early (``None``: it is complete)."""

    text: str
    incomplete: Incomplete | None


def default_plot_path(log: str | os.PathLike[str]) -> Path:
    """Where ``eventhooks plot LOG`` writes without ``-o``: ``<log's stem>.png`` beside it."""
    return Path(log).with_suffix(".png")


def replay_command(
    log: str,
    *,
    csv: str | None = None,
    plot: str | os.PathLike[str] | None = None,
    title: str | None = None,
    monitor: str | None = None,
    mode: str = "auto",
    summary: bool = True,
) -> str:
    """Replay ``log`` into a History (and a CSVLogger, a plot); returns what to print.

    The log is validated whole before anything is written. A log that ends early is
    replayed up to where it ends, and the text's last line says so (see :func:`replay_log`).
    """
    return replay_log(
        log, csv=csv, plot=plot, title=title, monitor=monitor, mode=mode, summary=summary
    ).text


def replay_log(
    log: str,
    *,
    csv: str | None = None,
    plot: str | os.PathLike[str] | None = None,
    title: str | None = None,
    monitor: str | None = None,
    mode: str = "auto",
    summary: bool = True,
) -> Replayed:
    """:func:`replay_command` that also tells whether the log ends early.

    A log cut off mid-line or whose last run has no ``teardown`` (a killed run) has its
    complete events replayed; its text ends with one line such as ``log ends early: line 17
    is cut off; the run that starts at line 1 has no teardown (a killed run?)``.

    The plot draws the log's last training run that has epochs (History and the CSV keep
    the last run too), titled ``title`` or the log's folder, name and first record's date
    (:func:`~.plot.run_title`), with the best epoch of ``monitor`` marked (default
    ``val_loss``, else ``loss``; ``mode`` as ``EarlyStopping``'s).
    """
    bus = EventBus()
    history = History()
    bus.attach(history)
    rows: list[tuple[int, dict[str, float]]] = []  # (epoch, logs): keys may differ by epoch
    per_run: list[list[tuple[int, dict[str, float]]]] = [[]]  # the plot draws the last run
    runs: list[object] = []  # a log may hold several runs; History and the CSV keep the last

    def epoch_end(payload: EpochPayload) -> None:
        rows.append((payload.epoch, dict(payload.logs)))
        per_run[-1].append(rows[-1])

    def train_start(payload: RunPayload) -> None:
        runs.append(payload)
        if per_run[-1]:
            per_run.append([])

    bus.on(events.on_fit_epoch_end)(epoch_end)
    bus.on(events.on_train_start)(train_start)
    if csv is not None:
        bus.attach(CSVLogger(csv))
    contents = eventlog.read_log(log, bus.registry)
    count = emit_records(contents.records, bus)
    lines: list[str] = []
    if summary:
        within = f" in {len(runs)} runs" if len(runs) > 1 else ""
        lines.append(f"replayed {count} events, {len(rows)} epochs{within} from {log}")
        lines.extend(_epoch_table(rows))
    if csv is not None:
        written = Path(csv).exists() and history.epoch
        lines.append(f"CSV log: {csv}" if written else "no training run in the log: no CSV")
    if plot is not None:
        drawn = [run for run in per_run if run]
        if not drawn:
            raise ValueError("nothing to plot: the run has no epoch logs")
        started = contents.records[0].time if contents.records else None
        out = plot_series(
            epoch_series(drawn[-1]), plot, title=title or run_title(log, started),
            monitor=monitor, mode=mode,
        )  # fmt: skip
        which = f" (the last of {len(drawn)} runs)" if len(drawn) > 1 else ""
        lines.append(f"training curves: {out}{which}")
    if contents.incomplete is not None:
        lines.append(contents.incomplete.reason)
    return Replayed("\n".join(lines), contents.incomplete)


def _epoch_table(rows: list[tuple[int, dict[str, float]]]) -> list[str]:
    keys = sorted({key for _, logs in rows for key in logs})
    if not keys:
        return []
    width = max(10, *(len(k) for k in keys))
    table = ["epoch  " + "  ".join(k.rjust(width) for k in keys)]
    for epoch, logs in rows:
        cells = [(f"{logs[k]:.4f}" if k in logs else "-").rjust(width) for k in keys]
        table.append(f"{epoch:>5}  " + "  ".join(cells))
    return table
