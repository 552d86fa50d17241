"""TensorBoard: the scalars Keras' ``TensorBoard`` callback writes, from any trainer.

tensorboard is an optional extra (``pip install 'eventhooks[tensorboard]'``), imported only
when a :class:`TensorBoard` is created. No TensorFlow: events are written with tensorboard's
own ``EventFileWriter`` and summary protos.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from ..callback import Callback
from ..payloads import BatchPayload, EpochPayload, ParamsUpdatePayload, RunPayload, TeardownPayload
from ..plot import MissingExtraError, learning_rate_name
from ._monitor import rank_path, writes_here

TRAIN = "train"
VALIDATION = "validation"

#: Prefixes of a metric's validation twin and of its training twin, stripped once.
_VAL_PREFIXES = ("val_", "val/")
_TRAIN_PREFIXES = ("train_", "train/")


def _strip(key: str, prefixes: tuple[str, ...]) -> str | None:
    for prefix in prefixes:
        if key.startswith(prefix) and len(key) > len(prefix):
            return key[len(prefix) :]
    return None


def preferred(key: str) -> tuple[str, str]:
    """Where a log key goes when nothing else claims its tag: ``(run folder, name)``.

    ``val_x`` and ``val/x`` go to the validation run as ``x``; ``train_x`` and ``train/x`` to
    the train run as ``x``; every other key to the train run as itself; a learning rate in the
    train run is named ``learning_rate...`` (``lr/pg0`` -> ``learning_rate/pg0``).
    """
    name = _strip(key, _VAL_PREFIXES)
    if name is not None:
        return VALIDATION, name
    name = _strip(key, _TRAIN_PREFIXES) or key
    return TRAIN, learning_rate_name(name) or name


def _secondary(key: str) -> bool:
    """A twin named by a prefix other than Keras' ``val_``: it yields a contested tag."""
    return _strip(key, ("val/", *_TRAIN_PREFIXES)) is not None


def _clean(tag: str) -> str:
    """A tag that protobuf can store (UTF-8): lone surrogates become ``\\udcxx`` text."""
    return tag.encode("utf-8", "backslashreplace").decode("utf-8")


class _Layout:
    """Log key -> (run folder, tag) for one run, fixed when the key is first seen.

    Keras' keys (``x``, ``val_x``) are placed first, so ``loss`` keeps ``epoch_loss`` when an
    epoch also has ``train/loss`` or ``train_loss`` (which then keep their full names,
    ``epoch_train/loss``), and ``val_loss`` keeps it over ``val/loss``. Two keys never share
    a tag: a later claimant falls back to its full key, then to ``<full key> (2)``, ``(3)``...
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.where: dict[str, tuple[str, str]] = {}
        self._used: set[tuple[str, str]] = set()

    def place(self, logs: Mapping[str, float]) -> dict[str, dict[str, float]]:
        """The logs as ``{run: {tag: value}}``."""
        new = [key for key in logs if key not in self.where]
        new.sort(key=_secondary)  # stable: Keras' keys first
        for key in new:
            self.where[key] = self._assign(key)
        runs: dict[str, dict[str, float]] = {}
        for key, value in logs.items():
            run, tag = self.where[key]
            runs.setdefault(run, {})[tag] = value
        return runs

    def _assign(self, key: str) -> tuple[str, str]:
        run, name = preferred(key)
        for candidate in (name, key):
            tag = _clean(self.prefix + candidate)
            if (run, tag) not in self._used:
                break
        else:
            n = 2
            while (run, tag := _clean(f"{self.prefix}{key} ({n})")) in self._used:
                n += 1
        self._used.add((run, tag))
        return run, tag


def _markdown(params: Mapping[Any, Any]) -> str:
    """The run's parameters as a two-column markdown table."""

    def cell(value: Any) -> str:
        text = str(value).replace("\\", "\\\\").replace("|", "\\|")
        return " ".join(text.splitlines()) or " "

    rows = [f"| {cell(key)} | {cell(value)} |" for key, value in params.items()]
    return "\n".join(["| parameter | value |", "|---|---|", *rows])


def _load_tensorboard() -> dict[str, Any]:
    """tensorboard's writer and protos (no TensorFlow), or :class:`MissingExtraError`."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2
        from tensorboard.compat.proto import types_pb2 as types
        from tensorboard.plugins.text import metadata as text_metadata
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise MissingExtraError(
            "the TensorBoard callback needs tensorboard: pip install 'eventhooks[tensorboard]'"
        ) from None
    return {
        "EventFileWriter": EventFileWriter, "Event": event_pb2.Event,
        "Summary": summary_pb2.Summary, "TensorProto": tensor_pb2.TensorProto,
        "DT_STRING": types.DT_STRING, "text_metadata": text_metadata.create_summary_metadata,
    }  # fmt: skip


class TensorBoard(Callback):
    """Writes TensorBoard event files laid out as Keras' ``TensorBoard`` callback writes them.

    It runs on the bus's background worker by default (``background = True``: ``bus.attach``
    honours it; ``bus.attach(tb, background=False)`` keeps it on the training thread).

    Args:
        log_dir: the folder of the run folders (``{rank}`` in it becomes the process rank).
        update_freq: ``"epoch"`` (epoch scalars only), or ``N``/``"batch"`` (N = 1): also
            every N-th training batch's logs, as Keras' ``update_freq``.
        all_ranks: write on every rank, not only rank 0 (put ``{rank}`` in ``log_dir``).
        all_hyperparams: write every hyper-parameter ``on_params_update`` announces
            (``momentum`` -> ``epoch_momentum``), not only learning rates.
        flush_secs: how often the writer's thread flushes on its own (TensorBoard's default
            120 s); files are also flushed at every epoch's end.

    **Layout.** Two run folders, ``<log_dir>/train`` and ``<log_dir>/validation``, so a
    metric's training and validation twins are one chart in TensorBoard:

    * each epoch's logs (``on_fit_epoch_end``), ``step`` = the epoch (0-based, as payloads),
      as ``epoch_<name>``: ``val_x`` and ``val/x`` -> validation ``epoch_x``; ``train_x`` and
      ``train/x`` -> train ``epoch_x``; any other key -> train ``epoch_<key>``. So ``loss``
      and ``val_loss`` are train and validation ``epoch_loss``, Ultralytics' ``train/box_loss``
      and ``val/box_loss`` train and validation ``epoch_box_loss``, its ``metrics/mAP50(B)``
      train ``epoch_metrics/mAP50(B)``. A learning rate is named as Keras names it:
      ``epoch_learning_rate`` (``lr``, ``learning_rate``), ``epoch_learning_rate/pg1``
      (``lr/pg1``), ``epoch_learning_rate_0`` (Lightning's ``lr_0``), ``epoch_learning_rate-Adam``
      (``lr-Adam``): :func:`eventhooks.plot.learning_rate_name`, the rule MLflowLogger and the
      plots use too (``lr_decay`` is not a rate: ``epoch_lr_decay``). When two keys would
      share a tag (Ultralytics' ``loss`` and ``train/loss``, ``val_loss`` and ``val/loss``),
      Keras' key (``loss``, ``val_loss``) keeps it and the other keeps its full key (train
      ``epoch_train/loss``, validation ``epoch_val/loss``); a key keeps its tag for the whole
      run, and :attr:`tags` says where each key went.
    * with ``update_freq``: the batch logs (``on_train_batch_end``) under the same mapping as
      ``batch_<name>``, ``step`` = the number of training batches of the run ended so far (1
      for the first: Keras' train step counter). Payloads carry no run-wide batch count
      (``batch`` restarts each epoch; ``step`` counts optimizer steps, fewer under gradient
      accumulation), so it is counted here. With ``update_freq="epoch"`` the callback does not
      subscribe to batches at all, so trainers build no batch logs for it.
    * learning rates from ``on_params_update`` (``lr``, ``lr/pg1``, ``learning_rate``...): the
      latest value announced before an epoch's end is that epoch's train
      ``epoch_learning_rate...`` (what Keras writes: the optimizer's rate at the epoch's end),
      unless the epoch's logs have that tag already (their value is History's). The PyTorch,
      Lightning, NumPy and HF adapters announce the run's first rates right after
      ``on_train_start``, so the curve starts at epoch 0; Keras' adapter announces the
      optimizer's ``learning_rate`` then and when it changes (checked at each epoch's start,
      after its last step and at its end). Other hyper-parameters only with
      ``all_hyperparams=True``, under their names.
      With ``update_freq`` each written batch step also gets ``batch_learning_rate...``.
    * the run's ``params`` at ``on_train_start``, as a markdown table in the text plugin: tag
      ``params`` of the train run, step 0 (nothing when the trainer gives no params).

    A training run started inside another (by a subscriber) writes under
    ``<log_dir>/nested-1/`` (``nested-2``... for the next), its own ``train`` and
    ``validation`` runs, as MLflow makes it a child run: the outer run's curves stay its own.
    Use one writer per bus: two buses training at once through one writer mix their runs.

    Scalars are ``simple_value`` summaries, so ``EventAccumulator.Tags()["scalars"]`` lists
    them; like every TensorBoard scalar they are float32.

    **Files.** A folder's event file is created when its first value comes; every open file
    is flushed at each ``on_fit_epoch_end`` and closed at ``on_train_end`` or ``teardown`` (a
    failed run's values written so far stay readable). Another run on the same callback writes
    new event files into the same folders, as Keras does, with steps from 0 again: give each
    run its own ``log_dir`` to compare runs side by side. Only rank 0 writes unless
    ``all_ranks=True``.

    Not written (Keras' other options): histograms, images, graphs, embeddings, profiles,
    ``evaluation_<metric>_vs_iterations`` of standalone validations, and TensorBoard's
    hparams plugin.
    """

    #: Runs on the bus's background worker unless attached with ``background=False``.
    background: ClassVar[bool] = True

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        *,
        update_freq: Literal["epoch", "batch"] | int = "epoch",
        all_ranks: bool = False,
        all_hyperparams: bool = False,
        flush_secs: float = 120.0,
    ) -> None:
        if update_freq == "batch":
            update_freq = 1
        if update_freq != "epoch" and (
            isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1
        ):
            raise ValueError(
                f"TensorBoard: update_freq must be 'epoch', 'batch' or a positive int, "
                f"got {update_freq!r}"
            )
        self._tb = _load_tensorboard()
        self.log_dir = os.fspath(log_dir)
        self.update_freq: Literal["epoch"] | int = update_freq
        self.all_ranks = all_ranks
        self.all_hyperparams = all_hyperparams
        self.flush_secs = flush_secs
        if update_freq != "epoch":
            # Subscribed only when batches are written: with update_freq="epoch" the trainer
            # builds no batch logs for this callback (bus.attach subscribes what it finds).
            vars(self)["on_train_batch_end"] = self._batch_end
        self._writers: dict[str, Any] = {}
        self._folder = ""  # below log_dir: "" for a run, "nested-1"... for one started in it
        self._nested = 0  # runs started inside the current one so far
        self._running = False  # a run began and its teardown has not come
        self._outer: list[dict[str, Any]] = []  # the runs a running one was started in
        self._reset()

    def _reset(self) -> None:
        """Forget the last run: its layout, batch count and learning rates."""
        self._epoch_layout = _Layout("epoch_")
        self._batch_layout = _Layout("batch_")
        self._batches = 0
        self._hyper: dict[str, float] = {}
        self._params: dict[str, Any] | None = None
        self._ended = False

    @property
    def tags(self) -> dict[str, tuple[str, str]]:
        """Where each epoch log key of the current (or last) run went: ``(run folder, tag)``."""
        return dict(self._epoch_layout.where)

    # -- the run ---------------------------------------------------------------------------

    def on_pretrain_routine_start(self, payload: RunPayload) -> None:
        if self._running and not self._ended:  # a run started inside this one (a subscriber's)
            self._nested += 1
            self._outer.append(dict(vars(self)))  # its writers stay open, its layout kept
            self._folder = os.path.join(self._folder, f"nested-{self._nested}")
            self._writers, self._nested = {}, 0
        else:
            self._close()
        self._reset()
        self._running = True
        self._params = payload.params

    def on_train_start(self, payload: RunPayload) -> None:
        if self._ended:  # a run without a pretrain routine (events emitted by hand)
            self._close()
            self._reset()
        self._running = True
        params = payload.params if payload.params is not None else self._params
        if not params or not writes_here(payload.rank, self.all_ranks):
            return
        summary = self._text("params", _markdown(params))
        self._writer(TRAIN, payload.rank).add_event(self._tb["Event"](
            wall_time=time.time(), step=0, summary=summary))  # fmt: skip

    def on_params_update(self, payload: ParamsUpdatePayload) -> None:
        for key, value in payload.hyperparams.items():
            if self.all_hyperparams or learning_rate_name(key) is not None:
                self._hyper[key] = value

    def on_fit_epoch_end(self, payload: EpochPayload) -> None:
        if not writes_here(payload.rank, self.all_ranks):
            return
        runs = self._epoch_layout.place(payload.logs)
        self._add_hyperparams(runs, "epoch_")
        self._write(runs, payload.epoch, payload.rank)
        for writer in self._writers.values():
            writer.flush()

    def _batch_end(self, payload: BatchPayload) -> None:
        """``on_train_batch_end``, subscribed when ``update_freq`` is a number of batches."""
        self._batches += 1
        freq = self.update_freq
        if freq == "epoch" or self._batches % freq or not writes_here(payload.rank, self.all_ranks):
            return
        runs = self._batch_layout.place(payload.logs)
        self._add_hyperparams(runs, "batch_")
        self._write(runs, self._batches, payload.rank)

    def on_train_end(self, payload: RunPayload) -> None:
        self._ended = True
        self._close()

    def teardown(self, payload: TeardownPayload) -> None:
        self._ended = True
        try:
            self._close()
        finally:
            self._running = False
            if self._outer:  # a nested run ended: back to the run it was started in
                vars(self).update(self._outer.pop())

    # -- writing ---------------------------------------------------------------------------

    def _add_hyperparams(self, runs: dict[str, dict[str, float]], prefix: str) -> None:
        """The latest announced hyper-parameters, into the train run, unless logged there."""
        train = runs.setdefault(TRAIN, {}) if self._hyper else runs.get(TRAIN, {})
        for key, value in self._hyper.items():
            train.setdefault(_clean(prefix + (learning_rate_name(key) or key)), value)

    def _write(self, runs: Mapping[str, Mapping[str, float]], step: int, rank: int) -> None:
        summary_cls, event_cls = self._tb["Summary"], self._tb["Event"]
        for run, scalars in runs.items():
            if not scalars:
                continue
            summary = summary_cls(value=[
                summary_cls.Value(tag=tag, simple_value=value) for tag, value in scalars.items()
            ])  # fmt: skip
            event = event_cls(wall_time=time.time(), step=step, summary=summary)
            self._writer(run, rank).add_event(event)

    def _text(self, tag: str, text: str) -> Any:
        tb = self._tb
        tensor = tb["TensorProto"](dtype=tb["DT_STRING"], string_val=[text.encode("utf-8")])
        metadata = tb["text_metadata"](display_name=tag, description="")
        return tb["Summary"](value=[tb["Summary"].Value(tag=tag, metadata=metadata, tensor=tensor)])

    def _writer(self, run: str, rank: int) -> Any:
        writer = self._writers.get(run)
        if writer is None:
            folder = os.path.join(rank_path(self.log_dir, rank), self._folder, run)
            writer = self._tb["EventFileWriter"](folder, flush_secs=self.flush_secs)
            self._writers[run] = writer
        return writer

    def _close(self) -> None:
        """Close every open event file (each one, even if closing another fails)."""
        writers, self._writers = self._writers, {}
        failure: BaseException | None = None
        for writer in writers.values():
            try:
                writer.close()
            except BaseException as exc:  # raised once all are closed
                failure = failure or exc
        if failure is not None:
            raise failure
