"""``eventhooks replay`` and ``eventhooks plot``: a recorded run through subscribers."""

from __future__ import annotations

from pathlib import Path

from .bus import EventBus
from .callbacks import CSVLogger, History
from .plot import plot_history
from .replay import load


def replay_command(
    log: str,
    *,
    csv: str | None = None,
    plot: str | None = None,
    title: str | None = None,
    summary: bool = True,
) -> str:
    """Replay ``log`` into a History (and a CSVLogger, a plot); returns what to print.

    The log is validated whole before anything is written.
    """
    bus = EventBus()
    records = load(log, bus)
    history = History()
    bus.attach(history)
    if csv is not None:
        bus.attach(CSVLogger(csv))
    for record in records:
        bus.emit(record.event, **record.fields)
    lines: list[str] = []
    if summary:
        lines.append(f"replayed {len(records)} events, {len(history.epoch)} epochs from {log}")
        lines.extend(_epoch_table(history))
    if csv is not None:
        written = Path(csv).exists() and history.epoch
        lines.append(f"CSV log: {csv}" if written else "no training run in the log: no CSV")
    if plot is not None:
        out = plot_history(
            history.history, plot, epochs=history.epoch, title=title or Path(log).name
        )
        lines.append(f"training curves: {out}")
    return "\n".join(lines)


def _epoch_table(history: History) -> list[str]:
    keys = sorted(history.history)
    if not keys:
        return []
    width = max(10, *(len(k) for k in keys))
    rows = ["epoch  " + "  ".join(k.rjust(width) for k in keys)]
    for i, epoch in enumerate(history.epoch):
        cells = []
        for k in keys:
            values = history.history[k]
            cells.append((f"{values[i]:.4f}" if i < len(values) else "-").rjust(width))
        rows.append(f"{epoch:>5}  " + "  ".join(cells))
    return rows
