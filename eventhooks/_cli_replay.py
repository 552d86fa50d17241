"""``eventhooks replay`` and ``eventhooks plot``: a recorded run through subscribers."""

from __future__ import annotations

import os
import shlex
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from . import eventlog, events
from .bus import EventBus
from .callbacks import CSVLogger, History
from .eventlog import Incomplete
from .payloads import EpochPayload, RunPayload
from .plot import epoch_series, plot_series, run_title
from .replay import emit_records

#: MLflowLogger's warning for a name MLflow refuses (the report lists them instead).
_RENAMED = r"MLflowLogger: \w+ name .* is logged as "


@dataclass(frozen=True)
class Replayed:
    """What a replay prints, and how the log ends early (``None``: it is complete)."""

    text: str
    incomplete: Incomplete | None


def default_plot_path(log: str | os.PathLike[str]) -> Path:
    """Where ``eventhooks plot LOG`` writes without ``-o``: ``<log's stem>.png`` beside it
    (``<log's name>.png`` if the log's own name ends in ``.png``: never the log itself)."""
    path = Path(log)
    png = path.with_suffix(".png")
    return png if png.name != path.name else path.with_name(path.name + ".png")


def replay_command(
    log: str,
    *,
    csv: str | None = None,
    plot: str | os.PathLike[str] | None = None,
    title: str | None = None,
    monitor: str | None = None,
    mode: str = "auto",
    summary: bool = True,
    tensorboard: str | None = None,
    mlflow: str | None = None,
    mlflow_experiment: str | None = None,
) -> str:
    """Replay ``log`` into a History (and a CSVLogger, a plot); returns what to print.

    The log is validated whole before anything is written. A log that ends early is
    replayed up to where it ends, and the text's last line says so (see :func:`replay_log`).
    """
    return replay_log(
        log, csv=csv, plot=plot, title=title, monitor=monitor, mode=mode, summary=summary,
        tensorboard=tensorboard, mlflow=mlflow, mlflow_experiment=mlflow_experiment,
    ).text  # fmt: skip


def replay_log(
    log: str,
    *,
    csv: str | None = None,
    plot: str | os.PathLike[str] | None = None,
    title: str | None = None,
    monitor: str | None = None,
    mode: str = "auto",
    summary: bool = True,
    tensorboard: str | None = None,
    mlflow: str | None = None,
    mlflow_experiment: str | None = None,
) -> Replayed:
    """:func:`replay_command` that also tells whether the log ends early.

    A log cut off mid-line or whose last run has no ``teardown`` (a killed run; also one in
    which a run started inside it ended: that ``teardown`` is the inner run's) has its
    complete events replayed; its text ends with one line such as ``log ends early: line 17
    is cut off; the run that starts at line 1 has no teardown (a killed run?)``.

    The plot draws the log's last training run that has epochs (History and the CSV keep
    the last run too), titled ``title`` or the log's folder, name and first record's date
    (:func:`~.plot.run_title`), with the best epoch of ``monitor`` marked (default
    ``val_loss``, else ``loss``; ``mode`` as ``EarlyStopping``'s).

    ``tensorboard`` (a folder) and ``mlflow`` (a tracking URI, runs in ``mlflow_experiment``)
    attach the :class:`~eventhooks.callbacks.tensorboard.TensorBoard` and
    :class:`~eventhooks.callbacks.mlflow_logger.MLflowLogger` subscribers, so the recorded
    run lands in the tracker. A killed run's log has no ``teardown`` for its last run (nor
    for the runs it was started in): with a tracker attached, one is emitted for each after
    the log's last event, innermost first, carrying an error that
    says the log ends early (and the last epoch and logs), so that the tracker ends that run
    as it ends a crashed one (MLflow: ``FAILED``). The count of replayed events leaves it
    out. A log of several training runs puts each in its own TensorBoard folder,
    ``<tensorboard>/run-1``, ``run-2``... (and one MLflow run each), so that their curves do
    not share one chart. A replay that fails midway (a tracker's failure, Ctrl-C) first ends
    the runs it had opened with a ``teardown`` carrying that error (MLflow: ``FAILED``, or
    ``KILLED``), so that none is left ``RUNNING``.
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
    trackers = _Trackers(bus, log, tensorboard, mlflow, mlflow_experiment, contents.records)
    with warnings.catch_warnings():
        # Said once, in the report's MLflow line, instead of a warning per name.
        warnings.filterwarnings("ignore", _RENAMED, UserWarning)
        try:
            count = emit_records(contents.records, bus)
        except BaseException as error:
            trackers.end_open_runs(error)
            raise
        if trackers.attached:
            _end_cut_run(bus, contents)
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
        started = _drawn_run_start(contents.records)
        out = plot_series(
            epoch_series(drawn[-1]), plot, title=title or run_title(log, started),
            monitor=monitor, mode=mode,
        )  # fmt: skip
        which = f" (the last of {len(drawn)} runs)" if len(drawn) > 1 else ""
        lines.append(f"training curves: {out}{which}")
    lines.extend(trackers.report())
    if contents.incomplete is not None:
        lines.append(contents.incomplete.reason)
    return Replayed("\n".join(lines), contents.incomplete)


def _end_cut_run(bus: EventBus, contents: eventlog.LogContents) -> None:
    """Emit the ``teardown`` each run a killed process left open never wrote, innermost
    first: an error saying the log ends early, and the run's last epoch and logs (as a
    trainer's teardown carries them)."""
    incomplete = contents.incomplete
    if incomplete is None:
        return
    for start in reversed(_OpenRuns.scan(contents.records).lines):
        last = next(
            (r for r in reversed(contents.records)
             if r.line >= start and r.event is events.on_fit_epoch_end),
            None,
        )  # fmt: skip
        bus.emit(
            events.teardown,
            error=f"RunCutOff: {incomplete}",
            epoch=last.fields.get("epoch") if last is not None else None,
            logs=dict(last.fields.get("logs", {})) if last is not None else {},
        )


class _OpenRuns:
    """The training runs open at each point of a replay, as the trackers count them: a run
    starts at ``on_pretrain_routine_start``, or at an ``on_train_start`` that no pretrain
    routine of its own came before; one started while another is open is nested in it; a
    ``teardown`` ends the innermost."""

    def __init__(self) -> None:
        self.started: list[bool] = []  # per open run, innermost last: on_train_start heard
        self.lines: list[int] = []  # per open run: the log line it starts at (if known)
        self.top_level = 0  # runs started while no other was open, so far

    @classmethod
    def scan(cls, records: list[eventlog.Record]) -> _OpenRuns:
        """The runs of a whole log: those left open, and how many were top-level."""
        runs = cls()
        for record in records:
            runs.step(record.event, record.line)
        return runs

    def step(self, event: events.Event[Any], line: int = 0) -> bool:
        """Follow one event (at ``line`` of the log); whether it starts a top-level run."""
        if event is events.on_pretrain_routine_start or (
            event is events.on_train_start and (not self.started or self.started[-1])
        ):
            self.started.append(event is events.on_train_start)
            self.lines.append(line)
            if len(self.started) == 1:
                self.top_level += 1
                return True
        elif event is events.on_train_start:
            self.started[-1] = True
        elif event is events.teardown and self.started:
            self.started.pop()
            self.lines.pop()
        return False


class _Trackers:
    """The experiment trackers a replay writes to (imported only when asked for)."""

    def __init__(
        self,
        bus: EventBus,
        log: str,
        tensorboard: str | None,
        mlflow: str | None,
        experiment: str | None,
        records: list[eventlog.Record],
    ) -> None:
        self.bus = bus
        self.tensorboard = tensorboard
        self.mlflow = mlflow
        self.mlflow_logger: Any = None
        self.tensorboard_logger: Any = None
        self.open = _OpenRuns()
        #: TensorBoard's run folders below ``tensorboard`` when the log has several runs
        self.tensorboard_runs: list[str] = []
        if not self.attached:
            return
        self._several = _OpenRuns.scan(records).top_level > 1
        # Before every tracker: which runs are open, and each top-level run's folder.
        for event in (events.on_pretrain_routine_start, events.on_train_start, events.teardown):
            bus.subscribe(event, partial(self._follow, event), priority=1_000_000)
        # On the replaying thread (background=False): there is no training loop to keep
        # fast, and a tracker's failure then stops the replay at the event that caused it.
        if tensorboard is not None:
            from .callbacks.tensorboard import TensorBoard

            self.tensorboard_logger = TensorBoard(tensorboard)
            bus.attach(self.tensorboard_logger, background=False)
        if mlflow is not None:
            from .callbacks.mlflow_logger import MLflowLogger

            # A checkpoint's file is read now, not when it was saved: each path once (its
            # state now), never once per recorded save of a file rewritten every epoch.
            self.mlflow_logger = MLflowLogger(
                mlflow, experiment_name=experiment, run_name=run_title(log, None),
                log_checkpoints="end",
            )  # fmt: skip
            bus.attach(self.mlflow_logger, background=False)

    @property
    def attached(self) -> bool:
        return self.tensorboard is not None or self.mlflow is not None

    def _follow(self, event: events.Event[Any], payload: Any) -> None:
        if not self.open.step(event) or not self._several or self.tensorboard is None:
            return
        folder = f"run-{self.open.top_level}"
        self.tensorboard_runs.append(folder)
        self.tensorboard_logger.log_dir = os.path.join(self.tensorboard, folder)

    def end_open_runs(self, error: BaseException) -> None:
        """End the runs a failed replay leaves open, innermost first, with ``error``."""
        for _ in range(len(self.open.started)):
            self.bus.emit_teardown(error)

    def report(self) -> list[str]:
        """One line per tracker: where the run went."""
        lines = []
        if self.tensorboard is not None:
            if Path(self.tensorboard).is_dir():
                from ._cli_commands import script_command

                tensorboard = script_command("tensorboard", "tensorboard.main")
                runs = self.tensorboard_runs
                within = f"{len(runs)} runs: {', '.join(runs)}; " if runs else ""
                lines.append(
                    f"TensorBoard: {self.tensorboard} ({within}see it: {tensorboard} --logdir "
                    f"{shlex.quote(self.tensorboard)})"
                )
            else:
                lines.append("TensorBoard: no training run in the log: nothing written")
        logger = self.mlflow_logger
        if logger is not None:
            if not logger.run_ids:
                lines.append("MLflow: no training run in the log: nothing logged")
            for run_id in logger.run_ids:
                status = logger.client.get_run(run_id).info.status
                lines.append(
                    f"MLflow: run {run_id} ({status}) in experiment {logger.experiment_id} "
                    f"at {self.mlflow}"
                )
            if logger.renamed:
                names = ", ".join(f"{a!r} -> {b!r}" for a, b in logger.renamed.items())
                lines.append(f"MLflow: names it refuses were renamed: {names}")
        return lines


def _drawn_run_start(records: list[eventlog.Record]) -> float | None:
    """When the drawn run (the last with epochs) started: its ``on_train_start`` record's time,
    else the log's first record's."""
    started = records[0].time if records else None
    start_of_run = started
    for record in records:
        if record.event is events.on_train_start:
            start_of_run = record.time if record.time is not None else started
        elif record.event is events.on_fit_epoch_end:
            started = start_of_run
    return started


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
