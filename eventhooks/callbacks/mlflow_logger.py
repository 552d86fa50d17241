"""MLflowLogger: one MLflow run per training run, under any adapter.

mlflow is an optional extra (``pip install 'eventhooks[mlflow]'``), imported when a logger is
created, never by the core. The logger talks to MLflow through :class:`mlflow.MlflowClient`
with explicit run ids, never through the fluent ``mlflow.start_run`` API: it may run on the
bus's background worker, and it leaves alone any run the user has open.
"""

from __future__ import annotations

import os
import posixpath
import re
import time
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..callback import Callback
from ..payloads import (
    BatchPayload,
    CheckpointPayload,
    EpochPayload,
    ExportPayload,
    ParamsUpdatePayload,
    RunPayload,
    TeardownPayload,
)
from ..plot import MissingExtraError, learning_rate_name
from ._monitor import trainer_name

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

__all__ = ["MLflowLogger", "flatten_params", "mlflow_name"]

#: MLflow's limits (``mlflow.utils.validation``, 3.17): key length, param and tag values, and
#: how many params and metrics one ``log_batch`` may carry.
MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

#: What MLflow accepts in a metric, param or tag name: letters, digits, ``_ - . / space``,
#: and ``:`` except on Windows.
_REFUSED = re.compile(r"[^/\w.\- ]" if os.name == "nt" else r"[^/\w.\- :]")

#: Where artifacts go in the run.
CHECKPOINTS = "checkpoints"
EXPORTS = "exports"
ERROR_FILE = "error.txt"
#: The tags a run gets besides the user's.
TRAINER_TAG = "eventhooks.trainer"
ERROR_TAG = "eventhooks.error"


def mlflow_name(name: str) -> str:
    """``name`` made acceptable to MLflow as a metric, param or tag name; a valid one is
    returned unchanged.

    A character MLflow refuses becomes ``_``; empty path segments go (``a//b``, ``/a``,
    ``a/``), a ``.`` or ``..`` segment becomes ``_``/``__`` and a leading ``..`` gets a ``_``
    before it (MLflow refuses names that would resolve to another path); an empty name is
    ``_``; a name longer than 250 characters is cut.
    """

    def fix(text: str) -> str:
        text = _REFUSED.sub("_", text)
        parts = [p if p not in (".", "..") else "_" * len(p) for p in text.split("/") if p]
        text = "/".join(parts) or "_"
        return "_" + text if text.startswith("..") else text

    fixed = fix(name)
    while len(fixed) > MAX_KEY_LENGTH:
        fixed = fix(fixed[:MAX_KEY_LENGTH])
    return fixed


def _storable(text: str) -> str:
    """``text`` as UTF-8 can hold it (a lone surrogate becomes ``?``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _param_value(value: Any) -> str:
    try:
        text = _storable(str(value))
    except Exception:
        text = f"<unprintable {type(value).__name__}>"
    if len(text) > MAX_PARAM_LENGTH:
        text = text[: MAX_PARAM_LENGTH - 3] + "..."
    return text


def flatten_params(params: Mapping[Any, Any] | None, sep: str = "/") -> dict[str, str]:
    """The run's parameters as MLflow params: nested mappings flattened with ``sep``
    (``{"optim": {"lr": 0.1}}`` is ``optim/lr``), every value a string of at most 6,000
    characters (longer ones cut, ending in ``...``). An empty mapping is the value ``{}``.
    Where two paths flatten to the same name the first wins. Names are not sanitized here
    (:func:`mlflow_name` does that)."""
    flat: dict[str, str] = {}

    def walk(prefix: str | None, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, inner in value.items():
                walk(str(key) if prefix is None else f"{prefix}{sep}{key}", inner)
        elif prefix is not None:
            flat.setdefault(prefix, _param_value(value))

    walk(None, params or {})
    return flat


class _Names:
    """Original name -> the one MLflow gets: sanitized, kept unique, each rename warned once.

    ``origin`` tells apart names that are spelled alike but are not the same series (an
    epoch key ``batch/loss`` and the batches' ``loss``, logged as ``batch/loss``)."""

    def __init__(self, kind: str, renamed: dict[str, str]) -> None:
        self.kind = kind
        self.renamed = renamed
        self._map: dict[object, str] = {}
        self._taken: set[str] = set()

    def __call__(self, name: str, origin: object = None) -> str:
        ident = name if origin is None else origin
        known = self._map.get(ident)
        if known is not None:
            return known
        base = safe = mlflow_name(name)
        n = 0
        while safe in self._taken:
            n += 1
            suffix = f"_{n}"
            safe = mlflow_name(base[: MAX_KEY_LENGTH - len(suffix)] + suffix)
        self._map[ident] = safe
        self._taken.add(safe)
        if safe != name:
            self.renamed[name] = safe
            warnings.warn(
                f"MLflowLogger: {self.kind} name {name!r} is logged as {safe!r} "
                "(MLflow refuses the name as it is, or another name took it)",
                stacklevel=2,
            )
        return safe


@dataclass
class _OpenRun:
    """An MLflow run this logger opened for a training run, while it lasts."""

    run_id: str | None  # None: another rank's run, or one MLflow refused: nothing is logged
    metrics: _Names
    params: _Names
    logged: dict[str, str] = field(default_factory=dict)  # params as logged (MLflow names)
    started: bool = False  # on_train_start heard
    saved: dict[str, None] = field(default_factory=dict)  # log_checkpoints="end": paths seen
    batches: int = 0  # training batches heard (the global step of batch metrics)
    refused: bool = False  # MLflow failed to create it: on_train_start tries again
    hyper: dict[str, float] = field(default_factory=dict)  # latest announced (rates renamed)


class MLflowLogger(Callback):
    """Logs each training run to MLflow as one run, under any adapter (rank 0 only).

    * **Run**: opened at the training run's first event (``on_pretrain_routine_start``, or
      ``on_train_start`` for adapters that start there), in ``experiment_name`` (created if
      missing, with ``artifact_location``) or else in ``MLFLOW_EXPERIMENT_NAME`` /
      ``MLFLOW_EXPERIMENT_ID`` or MLflow's default experiment; named ``run_name`` (or by
      MLflow), tagged with ``tags``, ``eventhooks.trainer`` (the emitting trainer's class) and
      what ``mlflow.start_run`` would add (``mlflow.user``, ``mlflow.source.name``...).
      ``tracking_uri`` None is MLflow's own default (``MLFLOW_TRACKING_URI``...). A
      validation, prediction or export on its own opens no run. A training run started inside
      another (by a subscriber) is an MLflow child run (``mlflow.parentRunId``).
      ``run_id`` is the last run opened, ``run_ids`` all of them.
    * **Params**: ``payload.params``, flattened (``optim/lr``), as strings (cut at 6,000
      characters), at ``on_train_start`` when the trainer has checked them (or at
      ``teardown`` for a run that failed before), and any new keys later. MLflow params
      cannot change: a changed value is warned about and not logged.
    * **Metrics**: each ``on_fit_epoch_end``'s logs in one ``log_batch`` with
      ``step=epoch`` (0-based, as the payloads). With ``log_every_n_batches=N`` every N-th
      training batch's logs too, as ``batch/<name>`` with the global step (the run's training
      batches counted from 0; an epoch key spelled ``batch/<name>`` too is renamed, never
      mixed into that curve). A name MLflow refuses is renamed (:func:`mlflow_name`:
      ``val acc%`` is logged as ``val acc_``), with a warning once, and listed in
      ``renamed``: training is not stopped by a name.
    * **Learning rates**: the latest announced by ``on_params_update``, with each epoch's
      metrics (the rate in effect at the epoch's end, as Keras logs it) and with each logged
      batch's (``batch/learning_rate``), under the names TensorBoard gives them, whatever
      the trainer calls them (:func:`eventhooks.plot.learning_rate_name`): ``lr`` and
      ``learning_rate`` as ``learning_rate``, ``lr/pg1`` as ``learning_rate/pg1``,
      ``lr_0`` as ``learning_rate_0``, ``lr-Adam`` as ``learning_rate-Adam``; so runs of
      different trainers share one chart. A rate the epoch's (or batch's) logs have under
      any spelling of that name wins: the announced one is not logged for that step, and
      the logs' key keeps its own name (Ultralytics' ``lr/pg0``). ``lr_decay`` is not a
      rate. ``all_hyperparams=True`` logs every other announced hyper-parameter too, under
      its own name (``momentum``...), unless the logs have that key.
    * **Artifacts**: each ``on_model_save`` path (a file, or a folder) under
      ``checkpoints/``, each ``on_export_end`` path under ``exports/``
      (``log_checkpoints=False``, ``log_exports=False``: none). ``log_checkpoints="end"``
      logs each checkpoint path once, as it is at the run's ``teardown`` (Lightning's
      ``log_model=True``): a ``last.pt`` rewritten every epoch is uploaded once, and never
      while it is being rewritten, which in the background (the default) can happen with
      ``True``. A save or export outside a training run (``trainer.save()`` after ``fit``)
      goes to the last run, if any (``bus.flush()`` waits for it in the background). A path
      gone when the logger gets to it is warned about, not logged.
    * **End**: at ``teardown`` the run is ``FINISHED``; a failed one ``FAILED`` (``KILLED``
      for Ctrl-C, also when replayed from an event log) with the error as the
      ``eventhooks.error`` tag (cut at 8,000 characters) and, whole with its traceback, as
      the artifact ``error.txt``.

    MLflow's own failures (a server that does not answer) are the subscriber's failures and
    follow the bus's error policy (``bus.attach(logger, errors="warn")`` to train on
    regardless; a training run MLflow refused to create, at its pretrain routine and again at
    ``on_train_start``, is then not logged, and none of its events reach the run it was
    started in). Use one logger per bus.

    ``background = True``: it runs on the bus's background worker by default, off the
    training thread (where the bus supports it; it is correct on either thread).
    """

    #: Runs on the bus's background worker by default (``bus.attach`` honours it).
    background: ClassVar[bool] = True

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        *,
        log_every_n_batches: int | None = None,
        tags: Mapping[str, Any] | None = None,
        log_params: bool = True,
        log_checkpoints: bool | Literal["end"] = True,
        log_exports: bool = True,
        artifact_location: str | None = None,
        all_hyperparams: bool = False,
    ) -> None:
        if log_every_n_batches is not None and (
            isinstance(log_every_n_batches, bool)
            or not isinstance(log_every_n_batches, int)
            or log_every_n_batches < 1
        ):
            raise ValueError(
                f"MLflowLogger: log_every_n_batches must be a positive int or None, "
                f"got {log_every_n_batches!r}"
            )
        if log_checkpoints not in (True, False, "end"):
            raise ValueError(
                f"MLflowLogger: log_checkpoints must be True, False or 'end', "
                f"got {log_checkpoints!r}"
            )
        try:
            import mlflow  # noqa: F401  # fail here, not at the run's first event
        except ImportError as exc:
            raise MissingExtraError(
                f"MLflowLogger needs mlflow ({exc}): pip install 'eventhooks[mlflow]'"
            ) from exc
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.log_every_n_batches = log_every_n_batches
        self.tags = {str(k): _param_value(v) for k, v in (tags or {}).items()}
        self.log_params = log_params
        self.log_checkpoints = log_checkpoints
        self.log_exports = log_exports
        self.artifact_location = artifact_location
        self.all_hyperparams = all_hyperparams
        #: The MLflow run of the current (or last) training run; None before the first.
        self.run_id: str | None = None
        #: Every MLflow run this logger opened, in order.
        self.run_ids: list[str] = []
        #: The experiment the runs go to, known once the first run opens.
        self.experiment_id: str | None = None
        #: Names MLflow got instead of the original (metric, param or tag names).
        self.renamed: dict[str, str] = {}
        self._client: MlflowClient | None = None
        self._runs: list[_OpenRun] = []  # open training runs, innermost last
        if log_every_n_batches is not None:
            # Subscribed only when asked: otherwise the trainer builds no batch logs for it.
            self.on_train_batch_end = self._batch_end

    # -- MLflow ----------------------------------------------------------------------------

    @property
    def client(self) -> MlflowClient:
        """The :class:`mlflow.MlflowClient` the logger writes with (made at first use)."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _experiment(self) -> str:
        if self.experiment_id is not None:
            return self.experiment_id
        from mlflow.exceptions import MlflowException

        name = self.experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if not name:
            # as mlflow.start_run: MLFLOW_EXPERIMENT_ID, else MLflow's default experiment
            self.experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or "0"
            return self.experiment_id
        client = self.client
        found = client.get_experiment_by_name(name)
        if found is None:
            try:
                self.experiment_id = client.create_experiment(name, self.artifact_location)
                return self.experiment_id
            except MlflowException:  # created meanwhile by another process
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise ValueError(
                f"MLflowLogger: experiment {name!r} is deleted; restore it "
                f"(MlflowClient.restore_experiment({found.experiment_id!r})) or use another name"
            )
        self.experiment_id = str(found.experiment_id)
        return self.experiment_id

    def _open(self, payload: RunPayload) -> None:
        if payload.rank != 0:
            self._runs.append(_OpenRun(None, _Names("metric", {}), _Names("param", {})))
            return
        tags = {**_context_tags(), **self.tags, TRAINER_TAG: trainer_name(payload.source)}
        parent = next((r for r in reversed(self._runs) if r.run_id is not None), None)
        if parent is not None and parent.run_id is not None:
            tags["mlflow.parentRunId"] = parent.run_id
        names = _Names("tag", self.renamed)
        tags = {names(k): v[:MAX_TAG_LENGTH] for k, v in tags.items()}
        try:
            run = self.client.create_run(self._experiment(), tags=tags, run_name=self.run_name)
        except BaseException:
            # The training run is open all the same: its events must not reach the run it
            # was started in (nor its teardown end that one).
            self._runs.append(
                _OpenRun(None, _Names("metric", {}), _Names("param", {}), refused=True)
            )
            raise
        run_id = run.info.run_id
        self._runs.append(
            _OpenRun(run_id, _Names("metric", self.renamed), _Names("param", self.renamed))
        )
        self.run_id = run_id
        self.run_ids.append(run_id)

    def _current(self) -> _OpenRun | None:
        """The innermost open training run, if it is logged (rank 0)."""
        top = self._runs[-1] if self._runs else None
        return top if top is not None and top.run_id is not None else None

    def _params(self, run: _OpenRun, params: Any) -> None:
        """Log the params MLflow does not have yet (MLflow params cannot change)."""
        if not self.log_params or run.run_id is None:
            return
        from mlflow.entities import Param

        new: list[Param] = []
        for key, value in flatten_params(params).items():
            name = run.params(key)
            had = run.logged.get(name)
            if had is None:
                run.logged[name] = value
                new.append(Param(name, value))
            elif had != value:
                run.logged[name] = value  # warned once per change
                warnings.warn(
                    f"MLflowLogger: param {key!r} changed during the run ({had!r} -> "
                    f"{value!r}); MLflow keeps the first value",
                    stacklevel=2,
                )
        for i in range(0, len(new), _PARAMS_PER_BATCH):
            self.client.log_batch(run.run_id, params=new[i : i + _PARAMS_PER_BATCH],
                                  synchronous=True)  # fmt: skip

    def _metrics(self, run: _OpenRun, logs: Mapping[str, float], step: int, prefix: str) -> None:
        from mlflow.entities import Metric

        if run.run_id is None or not logs:
            return
        now = int(time.time() * 1000)
        metrics: list[Metric] = [
            Metric(run.metrics(prefix + key, (prefix, key)), float(value), now, step)
            for key, value in logs.items()
        ]
        for i in range(0, len(metrics), _METRICS_PER_BATCH):
            self.client.log_batch(run.run_id, metrics=metrics[i : i + _METRICS_PER_BATCH],
                                  synchronous=True)  # fmt: skip

    def _artifact(
        self, path: str | None, folder: str, what: str, run_id: str | None = None
    ) -> None:
        if run_id is None:
            run = self._current()
            # Outside a training run: the last run (a save or export after fit).
            run_id = run.run_id if run is not None else None if self._runs else self.run_id
        if run_id is None or path is None:
            return
        local = Path(path)
        if local.is_file():
            self.client.log_artifact(run_id, str(local), folder)
        elif local.is_dir():
            self.client.log_artifacts(run_id, str(local), posixpath.join(folder, local.name))
        else:
            warnings.warn(
                f"MLflowLogger: {what} {path!r} is gone, not logged (replaced or removed "
                "before the logger got to it)",
                stacklevel=2,
            )

    # -- the run's moments -----------------------------------------------------------------

    def on_pretrain_routine_start(self, payload: RunPayload) -> None:
        self._open(payload)

    def on_train_start(self, payload: RunPayload) -> None:
        try:
            if not self._runs or self._runs[-1].started:  # a run that starts here
                self._open(payload)
            elif self._runs[-1].refused:  # MLflow refused it at the pretrain routine
                self._runs.pop()
                self._open(payload)  # once more
        finally:
            if self._runs:
                self._runs[-1].started = True
        self._params(self._runs[-1], payload.params)

    def on_params_update(self, payload: ParamsUpdatePayload) -> None:
        run = self._current()
        if run is None or payload.rank != 0:
            return
        for key, value in payload.hyperparams.items():
            name = learning_rate_name(key)
            if name is not None:
                run.hyper[name] = value
            elif self.all_hyperparams:
                run.hyper[key] = value

    def on_fit_epoch_end(self, payload: EpochPayload) -> None:
        run = self._current()
        if run is None or payload.rank != 0:
            return
        self._params(run, payload.params)
        self._metrics(run, _with_hyper(run.hyper, payload.logs), payload.epoch, "")

    def _batch_end(self, payload: BatchPayload) -> None:
        """``on_train_batch_end``, subscribed only with ``log_every_n_batches``."""
        run = self._current()
        if run is None or payload.rank != 0:
            return
        step = run.batches
        run.batches += 1
        every = self.log_every_n_batches
        if every is not None and (step + 1) % every == 0:
            self._metrics(run, _with_hyper(run.hyper, payload.logs), step, "batch/")

    def on_model_save(self, payload: CheckpointPayload) -> None:
        if not self.log_checkpoints or payload.rank != 0:
            return
        run = self._current()
        if self.log_checkpoints == "end" and run is not None:
            run.saved[payload.path] = None
        else:
            self._artifact(payload.path, CHECKPOINTS, "checkpoint")

    def on_export_end(self, payload: ExportPayload) -> None:
        if self.log_exports and payload.rank == 0:
            self._artifact(payload.path, EXPORTS, "export")

    def teardown(self, payload: TeardownPayload) -> None:
        if not self._runs:
            return
        run = self._runs.pop()
        if run.run_id is None:
            return
        client = self.client
        status = "FINISHED"
        if payload.error is not None:
            status = "KILLED" if _interrupted(payload) else "FAILED"
        try:  # the status is set even when logging what is left fails
            self._params(run, payload.params)
            for path in run.saved:
                self._artifact(path, CHECKPOINTS, "checkpoint", run.run_id)
            if payload.error is not None:
                error = _storable(payload.error)[:MAX_TAG_LENGTH]
                client.set_tag(run.run_id, ERROR_TAG, error)
                client.log_text(run.run_id, _error_text(payload), ERROR_FILE)
        finally:
            client.set_terminated(run.run_id, status)


def _with_hyper(hyper: Mapping[str, float], logs: Mapping[str, float]) -> dict[str, float]:
    """``logs`` and the announced hyper-parameters they lack: a rate is lacking when no key
    of the logs is a rate of the same name (``learning_rate`` in the logs takes the place of
    an announced ``lr``: both are ``learning_rate``)."""
    if not hyper:
        return dict(logs)
    taken = set(logs)
    taken.update(name for key in logs if (name := learning_rate_name(key)) is not None)
    return {**{k: v for k, v in hyper.items() if k not in taken}, **logs}


def _interrupted(payload: TeardownPayload) -> bool:
    """Whether the run was stopped by Ctrl-C: the exception, or, when only its description
    came (a teardown read back from an event log: ``eventhooks replay``), its type's name."""
    if payload.exception is not None:
        return isinstance(payload.exception, KeyboardInterrupt)
    return (payload.error or "").partition(":")[0] == KeyboardInterrupt.__name__


def _context_tags() -> dict[str, str]:
    """The tags ``mlflow.start_run`` adds: user, source, git commit..., best effort."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return {str(k): _param_value(v) for k, v in resolve_tags().items()}
    except Exception:  # a context provider that fails costs its tags, not the run
        return {}


def _error_text(payload: TeardownPayload) -> str:
    """The error, with its traceback when the exception came along."""
    error = payload.exception
    if error is None:
        return _storable(f"{payload.error}\n")
    try:
        return _storable("".join(traceback.format_exception(error)))
    except Exception:
        return _storable(f"{payload.error}\n")
