"""The lifecycle: a run's canonical order, counters, stop requests and teardown, in one place.

An adapter (or a loop of your own) says what happened; the lifecycle emits the moments in the
canonical order (PRODUCT.md §1, :mod:`eventhooks._grammar`), fills in the ones a framework has
no hook for, keeps the counters and ends the run with exactly one ``teardown``::

    with Run(bus, source=trainer, params={"epochs": 3}) as run:
        run.ready()                            # model, data and optimizer are built
        for epoch in run.epochs(3):            # stops early when a subscriber asks
            for batch in loader:
                run.batch_start()
                ...; run.optimizer_step()
                run.batch_end({"loss": loss})
            with run.validation() as val:
                for batch in val_loader:
                    val.batch_start(); val.batch_end({"val_loss": ...})
                val.end({"val_loss": ...})
            run.epoch_end({"loss": ..., "val_loss": ...})
    # on_train_end when the block ended normally, then teardown (with the error, if it failed)

==========================  ========================================  =========================
method                      emits                                     fills in first, if due
==========================  ========================================  =========================
``Run(...)`` entered        on_pretrain_routine_start                 (forgets a stop request)
``ready()``                 on_pretrain_routine_end
``train_start()``           on_train_start, then on_params_update     ready
                            of ``first_hyperparams()`` if set
``epoch_start(epoch)``      on_train_epoch_start (again: a restart)   ready, train_start
``batch_start()``           on_train_batch_start (batch += 1)
``zero_grad()``             on_before_zero_grad
``optimizer_step()``        optimizer_step (step += 1)
``params_update(hp)``       on_params_update
``params_changed(hp)``      on_params_update of what changed since
                            last announced (``hyperparams``)
``batch_end(logs)``         on_train_batch_end (``logs`` may be a
                            function: called when heard or filled in)
``train_epoch_end(logs)``   on_train_epoch_end
``validation()``            on_val_start ... on_val_end               train_epoch_end
``model_save(path)``        on_model_save                             train_epoch_end
``epoch_end(logs)``         on_fit_epoch_end                          train_epoch_end
``train_end(logs)``         on_train_end (also on leaving the block)  ready, train_start
``close(error)``            teardown, exactly once (on leaving)
==========================  ========================================  =========================

Counters: ``epoch`` is absolute (a resumed run starts at its epoch), ``batch`` restarts each
epoch, ``step`` counts optimizer steps over the run. ``Validation``, ``Prediction`` and
``Export`` are sessions of their own when started on their own (``evaluate``, ``predict``) or
by a subscriber inside a fit: they do not disturb the fit's order. A moment the grammar does
not allow where it comes raises :class:`~eventhooks.errors.OrderError` naming it, the moment
before it and what was allowed there.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self

from . import events as ev
from ._grammar import FULL, NOWHERE
from .bus import EventBus
from .errors import OrderError
from .events import Event
from .payloads import RunContext

__all__ = ["Export", "Prediction", "Run", "Validation"]

Logs = Mapping[str, Any]
#: Logs, or a function that computes them when a subscriber gets them (or an end is filled in).
LazyLogs = Logs | Callable[[], Logs] | None


def _called(logs: LazyLogs) -> Logs:
    return logs() if callable(logs) else logs or {}


def _same(before: float, now: float) -> bool:
    """Equal, or both NaN (NaN != NaN: a rate that stays NaN has not changed)."""
    return before == now or (before != before and now != now)


_STEPS = FULL._steps  # position -> event -> next position, filled as they are met

#: How many runs are open on each bus: a stop request is forgotten only by an outermost run.
_OPEN_RUNS: weakref.WeakKeyDictionary[EventBus, int] = weakref.WeakKeyDictionary()

#: What a moment needs emitted before it when the framework has no hook for it.
_FILLS: dict[str, tuple[str, ...]] = {
    "on_train_start": ("on_pretrain_routine_end",),
    "on_train_epoch_start": ("on_pretrain_routine_end", "on_train_start"),
    "on_train_end": ("on_pretrain_routine_end", "on_train_start"),
    "on_val_start": ("on_train_epoch_end",),
    "on_model_save": ("on_train_epoch_end",),
    "on_fit_epoch_end": ("on_train_epoch_end",),
}


class _Session:
    """What every session shares: its bus, its context, its place in the grammar."""

    def __init__(
        self,
        bus: EventBus,
        *,
        source: Any = None,
        params: Mapping[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        parent: _Session | None = None,
    ) -> None:
        self.bus = bus
        self._parent = parent
        self.context: RunContext
        if parent is not None:  # the run's context; ``source``, if given, is the session's own
            context = parent.context
            self.context = context if source is None else context.changed(source=source)
        else:
            self.context = RunContext.check(source, params, rank, world_size)
        self._position = FULL.start
        self._last = "the start of the session"

    def update(self, **changes: Any) -> None:
        """Change the run's context (``source``, ``params``, ``rank``, ``world_size``)."""
        owner = self._parent or self
        owner.context = owner.context.changed(**changes)
        if self._parent is not None:
            self.context = owner.context

    def open(self) -> Self:
        """Emit the session's first moment: what entering the ``with`` does."""
        raise NotImplementedError

    def end(self) -> None:
        """Emit the session's last moment."""
        raise NotImplementedError

    def finish(self, error: BaseException | None = None) -> None:
        """What leaving the ``with`` does: the session's end, unless it failed."""
        if error is None:
            self.end()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.finish(error)

    def _step(self, name: str) -> None:
        owner = self._parent or self
        try:  # the automaton's cached step, looked up here: this runs for every moment
            nxt = _STEPS[owner._position][name]
        except KeyError:
            nxt = FULL.step(owner._position, name)
        if nxt == NOWHERE:
            raise OrderError(name, owner._last, FULL.expected(owner._position))
        owner._position, owner._last = nxt, name

    def _drain(self) -> None:
        """A session on its own (no run around it: a run drains at its teardown) ends once
        the bus's background subscribers have handled it."""
        if self._parent is None:
            self.bus.flush()

    def _allowed(self, name: str) -> bool:
        return FULL.step((self._parent or self)._position, name) != NOWHERE

    def allows(self, event: str | Event[Any]) -> bool:
        """Whether ``event`` may come now as it is, nothing filled in before it (for an
        adapter whose moment may or may not belong to the run, a save by a subscriber, say)."""
        name = event.name if isinstance(event, Event) else ev.CANONICAL.get(event, event)
        return self._allowed(name)

    def _emit(self, event: Event[Any], **fields: Any) -> Any:
        """Follow the grammar, then emit (nothing is built when nobody listens)."""
        self._step(event.name)
        if not self.bus.listening(event):
            return None
        return self.bus.emit(event, context=self.context, **fields)


class Run(_Session):
    """One training run (a fit): the FIT sequence, its counters and its teardown.

    ``initial_epoch`` is where a resumed run starts. Leaving the ``with`` block emits
    ``on_train_end`` (unless already emitted or the block failed) and ``teardown``.
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        source: Any = None,
        params: Mapping[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        initial_epoch: int | None = None,
    ) -> None:
        super().__init__(bus, source=source, params=params, rank=rank, world_size=world_size)
        #: Where a resumed run starts; None when the framework does not say (epochs count
        #: from 0 then, and ``on_train_start`` carries no epoch).
        self.initial_epoch = initial_epoch
        self.epoch: int | None = None  # the current (or last) epoch
        self.batch = -1  # the current batch of the epoch
        self.step = 0  # optimizer steps taken in the run
        self.logs: dict[str, Any] = {}  # the last epoch's logs
        self._hyperparams: dict[str, float] = {}
        #: Reads the hyper-parameters the run starts with, at ``train_start`` (see there).
        self.first_hyperparams: Callable[[], Mapping[str, float]] | None = None
        self._batch_logs: LazyLogs = None  # the last batch's, as given
        self._closed = False
        self._epoch_open = False
        self._in_batch = False
        self._trained = False  # on_train_end emitted
        self._opened = False

    # -- opening and closing -------------------------------------------------------------------

    def open(self) -> Run:
        """Open the run (``on_pretrain_routine_start``): what entering the ``with`` does, for
        adapters whose framework calls them at the start and the end of a run. A run opens
        once. An earlier run's stop request is forgotten here, unless another run is still
        open on the bus (a run started by a subscriber leaves the outer run's request)."""
        if self._opened:
            raise RuntimeError("a Run opens once: make a new Run for another run")
        self._opened = True
        open_runs = _OPEN_RUNS.get(self.bus, 0)
        if not open_runs:
            self.bus._forget_stop_request()
        _OPEN_RUNS[self.bus] = open_runs + 1
        try:
            self._emit(ev.on_pretrain_routine_start)
        except BaseException as error:
            self.close(error)
            raise
        return self

    def finish(self, error: BaseException | None = None) -> None:
        """End the run: ``on_train_end`` unless it failed (or that was emitted already), then
        ``teardown``. What leaving the ``with`` does; a failure at ``on_train_end``, or of a
        background subscriber still catching up (drained first), is raised after the teardown
        that carries it."""
        if error is None and not self._closed:
            try:
                if self._epoch_open and not self._in_batch:  # a `break` out of epochs()
                    self.epoch_end(dict(self._last_batch_logs()))
                if not self._trained:
                    self.train_end()
                self.bus.flush()  # background subscribers catch up: a failure is the run's
            except BaseException as failure:
                self.close(failure)
                raise
        self.close(error)

    @property
    def hyperparams(self) -> dict[str, float]:
        """The hyper-parameters last announced; set the run's first ones here (not a change).
        The run keeps a copy of what it is given: changing that dict afterwards is a change."""
        return self._hyperparams

    @hyperparams.setter
    def hyperparams(self, values: Mapping[str, float]) -> None:
        self._hyperparams = dict(values)

    @property
    def closed(self) -> bool:
        """Whether ``teardown`` was emitted."""
        return self._closed

    @property
    def in_epoch(self) -> bool:
        """Whether an epoch began (``epoch_start``) and has not ended (``epoch_end``)."""
        return self._epoch_open

    @property
    def in_batch(self) -> bool:
        """Whether a training batch began (``batch_start``) and has not ended."""
        return self._in_batch

    @property
    def ended(self) -> bool:
        """Whether ``on_train_end`` was emitted: the run ended well, only ``teardown`` is due."""
        return self._trained

    def close(self, error: BaseException | None = None) -> None:
        """Emit ``teardown`` once, carrying ``error`` if the run failed (a later call does
        nothing). A subscriber failing at a failed run's teardown is noted on ``error``."""
        if self._closed:
            return
        self._closed = True
        if self._opened:
            _OPEN_RUNS[self.bus] = _OPEN_RUNS.get(self.bus, 1) - 1
        ended = FULL.step(self._position, "teardown")
        (self._parent or self)._position = FULL.start if ended == NOWHERE else ended
        self._last = "teardown"
        self.bus.emit_teardown(error, epoch=self.epoch, logs=self.logs, context=self.context)

    # -- stop requests ---------------------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        """Whether a subscriber asked this run to stop (``bus.request_stop()``)."""
        return self.bus.stop_requested

    def request_stop(self, reason: str | None = None) -> None:
        self.bus.request_stop(reason)

    # -- the moments -------------------------------------------------------------------------

    def _fill_then(self, event: Event[Any], **fields: Any) -> Any:
        for name in _FILLS.get(event.name, ()):
            if not self._allowed(event.name) and self._allowed(name):
                self._filler(name)
        return self._emit(event, **fields)

    def _filler(self, name: str) -> None:
        if name == "on_pretrain_routine_end":
            self.ready()
        elif name == "on_train_start":
            self.train_start()
        else:
            self.train_epoch_end(dict(self._last_batch_logs()))

    def ready(self, **context: Any) -> None:
        """The model, data and optimizer are built (``context``: ``params`` known now...)."""
        if context:
            self.update(**context)
        self._emit(ev.on_pretrain_routine_end)

    def train_start(self) -> None:
        """Training begins; then the run's first hyper-parameters (``first_hyperparams``, read
        now: ``on_train_start``'s subscribers may have set them) become ``hyperparams`` and
        are announced (``epoch`` None), so that a tracker's learning rate starts at epoch 0."""
        self._fill_then(ev.on_train_start, epoch=self.initial_epoch)
        if self.first_hyperparams is not None:
            self._hyperparams = dict(self.first_hyperparams())
        if self._hyperparams and self.bus.listening(ev.on_params_update):
            self._emit(ev.on_params_update, epoch=None, batch=None, step=max(self.step - 1, 0),
                       hyperparams=dict(self._hyperparams))  # fmt: skip

    def epochs(self, epochs: int) -> Iterator[int]:
        """``initial_epoch`` up to ``epochs``, each opened with ``epoch_start``; an epoch the
        body leaves open is closed with its last logs. Ends early on a stop request."""
        for epoch in range(self.initial_epoch or 0, epochs):
            if self.stop_requested:
                return
            self.epoch_start(epoch)
            yield epoch
            if self._epoch_open:
                self.epoch_end(dict(self._last_batch_logs()))
            if self.stop_requested:
                return

    def epoch_start(self, epoch: int | None = None) -> None:
        """An epoch begins (the same epoch again, before it ended: a restart)."""
        if epoch is None:
            epoch = (self.initial_epoch or 0) if self.epoch is None else self.epoch + 1
        if self._epoch_open and epoch != self.epoch:
            note = f"epoch {epoch} began before epoch {self.epoch} ended"
            raise OrderError("on_train_epoch_start", self._last, ["on_train_epoch_end"], note)
        self.epoch, self.batch, self._epoch_open = epoch, -1, True
        self._batch_logs = None
        self._fill_then(ev.on_train_epoch_start, epoch=epoch)

    # The per-batch moments follow the grammar, then ask the bus (with the batch, so that
    # an ``every=50`` subscriber costs nothing on the other batches) before building anything.

    def batch_start(self, batch: int | None = None) -> None:
        self.batch = batch = self.batch + 1 if batch is None else batch
        self._in_batch = True
        self._step("on_train_batch_start")
        if self.bus.listening(ev.on_train_batch_start, batch=batch):
            self.bus.emit(ev.on_train_batch_start, batch=batch, epoch=self.epoch,
                          context=self.context)  # fmt: skip

    def zero_grad(self) -> None:
        self._step("on_before_zero_grad")
        if self.bus.listening(ev.on_before_zero_grad):
            self.bus.emit(ev.on_before_zero_grad, epoch=self.epoch, batch=self.batch,
                          step=self.step, context=self.context)  # fmt: skip

    def optimizer_step(self) -> None:
        self._step("optimizer_step")
        if self.bus.listening(ev.optimizer_step):
            self.bus.emit(ev.optimizer_step, epoch=self.epoch, batch=self.batch,
                          step=self.step, context=self.context)  # fmt: skip
        self.step += 1

    def params_update(self, hyperparams: Mapping[str, float]) -> None:
        """Hyper-parameters changed: inside a batch, after a step, or between epochs (the
        run's first ones are announced by ``train_start``)."""
        batch = self.batch if self._in_batch else None
        self._hyperparams.update(hyperparams)
        self._emit(ev.on_params_update, epoch=self.epoch, batch=batch,
                   step=max(self.step - 1, 0), hyperparams=dict(hyperparams))  # fmt: skip

    def params_changed(
        self, current: Mapping[str, float] | Callable[[], Mapping[str, float]],
        *, along: Callable[[str], bool] | None = None,
    ) -> None:  # fmt: skip
        """``params_update`` of what changed (and what ``along`` picks), when heard and in order.
        A value that was NaN and still is has not changed."""
        if not self.bus.listening(ev.on_params_update) or not self._allowed("on_params_update"):
            return
        now, seen = current() if callable(current) else current, self._hyperparams
        if now == seen:  # the usual case, told at C speed
            return
        changed = {k: v for k, v in now.items() if k not in seen or not _same(seen[k], v)}
        if changed:
            picked = {k: v for k, v in now.items() if along is not None and along(k)}
            self.params_update({**picked, **changed})

    def batch_end(self, logs: LazyLogs = None) -> None:
        self._batch_logs = logs  # copied if an epoch's end is filled in
        self._in_batch = False
        self._step("on_train_batch_end")
        if self.bus.listening(ev.on_train_batch_end, batch=self.batch):
            self.bus.emit(ev.on_train_batch_end, batch=self.batch, epoch=self.epoch,
                          logs=self._last_batch_logs(), context=self.context)  # fmt: skip

    def _last_batch_logs(self) -> Logs:
        """The last batch's logs; a function given for them is called once, at the first
        need (its batch's end, heard, or an epoch end filled in), and its result kept."""
        logs = self._batch_logs
        if callable(logs):
            logs = self._batch_logs = logs()
        return logs or {}

    def hears(self, event: Event[Any]) -> bool:
        """Whether a subscriber would get ``event`` for the current batch: ask before
        computing batch logs (a tensor's ``.item()``...) that nobody would read."""
        return self.bus.listening(event, batch=self.batch)

    def train_epoch_end(self, logs: Logs | None = None) -> None:
        """The training part of the epoch ended, before its validation."""
        self._emit(ev.on_train_epoch_end, epoch=self.epoch, logs=logs or {})

    def validation(self, source: Any = None) -> Validation:
        """The epoch's validation (or one after the last epoch), as a ``with`` block.
        ``source``: what its payloads carry, if not the run's (a framework's validator)."""
        return Validation(self.bus, parent=self, epoch=self.epoch, source=source)

    def model_save(self, path: str | os.PathLike[str], logs: Logs | None = None) -> None:
        self._fill_then(ev.on_model_save, path=path, epoch=self.epoch, logs=logs or self.logs)

    def epoch_end(self, logs: Logs | None = None) -> None:
        """The whole epoch ended, validation included (``on_fit_epoch_end``)."""
        self.logs = dict(logs or {})
        self._epoch_open = False
        self._fill_then(ev.on_fit_epoch_end, epoch=self.epoch, logs=self.logs)

    def train_end(self, logs: Logs | None = None) -> None:
        if logs is not None:
            self.logs = dict(logs)
        self._fill_then(ev.on_train_end, epoch=self.epoch, logs=self.logs)
        self._trained = True


class Validation(_Session):
    """VAL: ``on_val_start``, batches, ``on_val_end``; on its own (``evaluate``) or a fit's."""

    def __init__(
        self, bus: EventBus, *, parent: _Session | None = None, epoch: int | None = None,
        **context: Any,
    ) -> None:  # fmt: skip
        super().__init__(bus, parent=parent, **context)
        self.epoch, self.batch = epoch, -1
        self.logs: dict[str, Any] = {}
        self._ended = False

    def open(self) -> Validation:
        """``on_val_start``: what entering the ``with`` does (inside a run, after filling in
        ``on_train_epoch_end``)."""
        run = self._parent
        if isinstance(run, Run) and not run._allowed("on_val_start"):
            if run._allowed("on_train_epoch_end"):
                run._filler("on_train_epoch_end")
        self._emit(ev.on_val_start, epoch=self.epoch)
        return self

    def finish(self, error: BaseException | None = None) -> None:
        """``on_val_end`` with the last logs given, unless it failed or ended already."""
        if error is None and not self._ended:
            self.end(self.logs)

    def batch_start(self, batch: int | None = None) -> None:
        self.batch = self.batch + 1 if batch is None else batch
        self._emit(ev.on_val_batch_start, batch=self.batch, epoch=self.epoch)

    def batch_end(self, logs: LazyLogs = None) -> None:
        self._step("on_val_batch_end")
        if self.bus.listening(ev.on_val_batch_end, batch=self.batch):
            self.bus.emit(ev.on_val_batch_end, batch=self.batch, epoch=self.epoch,
                          logs=_called(logs), context=self.context)  # fmt: skip

    def end(self, logs: Logs | None = None) -> None:
        """Validation ended, with its metrics under their own names (``loss``, as Keras'
        ``on_test_end`` has them, inside a fit too: the epoch's logs carry them as ``val_*``)."""
        self.logs, self._ended = dict(logs or {}), True
        self._emit(ev.on_val_end, epoch=self.epoch, logs=self.logs)
        self._drain()


class Prediction(_Session):
    """PREDICT: ``on_predict_start``, batches with their outputs, ``on_predict_end``."""

    def __init__(self, bus: EventBus, **context: Any) -> None:
        super().__init__(bus, **context)
        self.batch = -1

    def open(self) -> Prediction:
        """``on_predict_start``: what entering the ``with`` does."""
        self._emit(ev.on_predict_start)
        return self

    def end(self) -> None:
        """``on_predict_end``: what leaving the ``with`` normally does."""
        self._emit(ev.on_predict_end)
        self._drain()


    def batch_start(self, batch: int | None = None) -> None:
        self.batch = self.batch + 1 if batch is None else batch
        self._emit(ev.on_predict_batch_start, batch=self.batch)

    def postprocess_end(self, outputs: Any = None) -> None:
        self._emit(ev.on_predict_postprocess_end, batch=self.batch, outputs=outputs)

    def batch_end(self, outputs: Any = None) -> None:
        self._emit(ev.on_predict_batch_end, batch=self.batch, outputs=outputs)


class Export(_Session):
    """EXPORT: ``on_export_start`` (format) and ``on_export_end`` (the artifact's path)."""

    def __init__(self, bus: EventBus, *, format: str | None = None, **context: Any) -> None:
        super().__init__(bus, **context)
        self.format = format
        self.path: str | os.PathLike[str] | None = None

    def open(self) -> Export:
        """``on_export_start``: what entering the ``with`` does."""
        self._emit(ev.on_export_start, format=self.format)
        return self

    def end(self, path: str | os.PathLike[str] | None = None) -> None:
        """``on_export_end`` with the artifact's path: what leaving the ``with`` does."""
        if path is not None:
            self.path = path
        self._emit(ev.on_export_end, format=self.format, path=self.path)
        self._drain()


