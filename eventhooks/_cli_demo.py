"""``eventhooks demo``: the reference trainer on a synthetic dataset, every writer attached.

Needs numpy and tqdm (``eventhooks[cli]``) and, for the PNG, matplotlib (``[plot]``); no
deep-learning framework. Takes a few seconds on one core.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._cli_commands import eventhooks_command
from ._cli_replay import replay_command
from .bus import EventBus
from .callbacks import CSVLogger, EarlyStopping, EventLog, History, ModelCheckpoint, ProgressBar
from .plot import MissingExtraError


def dataset(seed: int, n: int = 1200, dim: int = 8, classes: int = 3) -> tuple[Any, ...]:
    """Overlapping Gaussian blobs: learnable, but validation loss flattens, so training stops
    early. Returns ``x_train, y_train, x_val, y_val``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.2, size=(classes, dim))
    y = rng.integers(0, classes, size=n)
    x = centers[y] + rng.normal(0.0, 1.0, size=(n, dim))
    cut = n * 3 // 4
    return x[:cut], y[:cut], x[cut:], y[cut:]


def run_dir(out: str | None) -> Path:
    """``out``, or a new ``runs/<timestamp>`` (suffixed if two demos start in one second)."""
    if out is not None:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    path.mkdir(parents=True)
    return path


@dataclass
class DemoResult:
    """What the demo made, for the command's report and for tests."""

    folder: Path
    history: History
    early: EarlyStopping
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_demo(
    out: str | None = None,
    *,
    epochs: int = 40,
    seed: int = 0,
    patience: int = 3,
    plot: bool = True,
    progress: ProgressBar | None = None,
) -> DemoResult:
    """Train, log and plot one run into a run folder."""
    try:
        # Here, not at the top: importing eventhooks must not import numpy.
        from .adapters.numpy import NumpyTrainer
    except ImportError as exc:
        raise MissingExtraError(
            f"the demo needs numpy: pip install 'eventhooks[demo]' ({exc})"
        ) from None

    folder = run_dir(out)
    files = {
        "csv": folder / "history.csv",
        "events": folder / "events.jsonl",
        "checkpoint": folder / "best.npz",
    }
    bus = EventBus()
    history = History()
    early = EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    event_log = EventLog(files["events"])
    for subscriber in (
        progress if progress is not None else ProgressBar(),
        history,
        early,
        CSVLogger(files["csv"]),
        ModelCheckpoint(files["checkpoint"], monitor="val_loss", save_best_only=True),
        event_log,
    ):
        bus.attach(subscriber)
    x, y, xv, yv = dataset(seed)
    trainer = NumpyTrainer(bus=bus, hidden=(64,), seed=seed, lr=0.003)
    try:
        trainer.fit(x, y, epochs=epochs, batch_size=32, validation_data=(xv, yv))
    finally:
        event_log.close()
    result = DemoResult(folder, history, early, files)
    if plot:
        png = folder / "curves.png"
        try:
            # What `eventhooks plot events.jsonl -o curves.png` draws, from the same log.
            replay_command(str(files["events"]), plot=png, summary=False)
            files["plot"] = png
        except MissingExtraError as exc:
            result.notes.append(f"plot skipped: {exc}")
    return result


def report(result: DemoResult) -> str:
    """The lines ``eventhooks demo`` prints; epochs numbered from 0, as in the payloads, the
    CSV and the plot."""
    h, early = result.history, result.early
    last = {k: v[-1] for k, v in h.history.items()}
    metrics = "  ".join(f"{k}={v:.4f}" for k, v in sorted(last.items()))
    span = f"epochs 0-{h.epoch[-1]}" if len(h.epoch) > 1 else "epoch 0"
    lines = [
        f"trained {len(h.epoch)} epochs ({span}, numbered from 0 as in the CSV and the plot): "
        f"{metrics}"
    ]
    if early.stopped_epoch is not None:
        lines.append(
            f"early stopping after epoch {early.stopped_epoch}: {early.monitor} did not "
            f"improve for {early.patience} epochs; weights restored from epoch "
            f"{early.best_epoch} ({early.monitor}={early.best:.4f})"
        )
    labels = {"csv": "CSV log", "events": "event log", "checkpoint": "best model",
              "plot": "training curves"}  # fmt: skip
    lines.append(f"run folder: {result.folder}")
    for key, path in result.files.items():
        if path.exists():
            lines.append(f"  {labels[key]:<16} {path}")
    lines.extend(result.notes)
    command = eventhooks_command()
    log = shlex.quote(str(result.files["events"]))
    replayed = shlex.quote(str(result.folder / "replayed.csv"))
    lines.append(f"replay it:  {command} replay {log} --csv {replayed}")
    lines.append(f"plot it:    {command} plot {log} --monitor val_accuracy")
    return "\n".join(lines)
