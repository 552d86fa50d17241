"""``eventhooks replay`` and ``eventhooks plot``: a recorded run through subscribers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import eventlog, events
from .bus import EventBus
from .callbacks import CSVLogger, History
from .eventlog import Incomplete
from .plot import epoch_series, plot_series
from .replay import emit_records


@dataclass(frozen=True)
class Replayed:
    """What a replay prints, and how the log ends early (``None``: it is complete)."""

    text: str
    incomplete: Incomplete | None


def replay_command(
    log: str,
    *,
    csv: str | None = None,
    plot: str | None = None,
    title: str | None = None,
    summary: bool = True,
) -> str:
    """Replay ``log`` into a History (and a CSVLogger, a plot); returns what to print.

    The log is validated whole before anything is written. A log that ends early is
    replayed up to where it ends, and the text's last line says so (see :func:`replay_log`).
    """
    return replay_log(log, csv=csv, plot=plot, title=title, summary=summary).text


def replay_log(
    log: str,
    *,
    csv: str | None = None,
    plot: str | None = None,
    title: str | None = None,
    summary: bool = True,
) -> Replayed:
    """:func:`replay_command` that also tells whether the log ends early.

    A log cut off mid-line or whose last run has no ``teardown`` (a killed run) has its
    complete events replayed; its text ends with one line such as ``log ends early: line 17
    is cut off; the run that starts at line 1 has no teardown (a killed run?)``.
    """
    bus = EventBus()
    history = History()
    bus.attach(history)
    rows: list[tuple[int, dict[str, float]]] = []  # (epoch, logs): keys may differ by epoch
    bus.on(events.on_fit_epoch_end)(lambda p: rows.append((p.epoch, dict(p.logs))))
    runs: list[object] = []  # a log may hold several runs; History and the CSV keep the last
    bus.on(events.on_train_start)(runs.append)
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
        if not rows:
            raise ValueError("nothing to plot: the run has no epoch logs")
        out = plot_series(epoch_series(rows), plot, title=title or Path(log).name)
        lines.append(f"training curves: {out}")
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
