"""Events from a hand-written PyTorch loop: the user wraps what they have, the loop stays theirs.

:class:`Run` tells the lifecycle (:class:`eventhooks.lifecycle.Run`: the order, the counters,
the teardown) where the loop is, from the iterables it wraps, and what the optimizer did, from
its hooks (:mod:`._torch_optim`). Usage: :mod:`eventhooks.adapters.torch` and the README.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from eventhooks import EventBus, events
from eventhooks import lifecycle as lc

from ._torch_io import Checkpoints
from ._torch_logs import PEER_STOP, Means, agree_to_stop, average, length, to_floats, where
from ._torch_optim import OptimizerWatch, as_optimizers, hyperparams

__all__ = ["PEER_STOP", "Run", "instrument"]

_PICKLED = ("bus", "optimizers", "model", "checkpoint_dir", "sync_logs")
T = TypeVar("T")


def _is_rate(name: str) -> bool:  # learning rates go along with any change announced
    return name == "lr" or name.startswith("lr/")


class Run(Checkpoints):
    """One instrumented training run. Build it with :func:`instrument`; use it with ``with``.

    Payloads carry the run as ``source`` (``.model``, ``.optimizers``, ``.epoch``...) and its
    ``params``. A run can be used again: each ``with run:`` starts with fresh params and logs.
    Checkpoints and weights: :class:`._torch_io.Checkpoints`.
    """

    def __init__(
        self,
        bus: EventBus,
        optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
        *,
        model: torch.nn.Module | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        sync_logs: bool = False,
    ) -> None:
        if not isinstance(bus, EventBus):
            raise TypeError(f"bus must be an eventhooks.EventBus, got {type(bus).__name__}")
        if checkpoint_dir is not None and model is None:
            raise ValueError("checkpoint_dir= needs model= (the model whose state_dict is saved)")
        self.bus, self.optimizers, self.model = bus, as_optimizers(optimizer), model
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.sync_logs = sync_logs
        self.params: dict[str, Any] = {}  #: totals for progress bars (``epochs``, ``steps``)
        self.rank, self.world_size = 0, 1
        self._life: lc.Run | None = None  # the lifecycle of the current (or last) use
        self._val: lc.Validation | None = None  # the validation in progress, if reported
        self._validating = False  # a validation began (reported or not) and has not ended
        self._val_running = False  # its loop is running (not left by a `break`)
        self._val_into: dict[str, float] | None = None  # where its val_ metrics go
        self._batches_open = False  # the batch loop is running (not left by a `break`)
        self._epochs_open = False  # the epoch loop is running (not left by a `break`)
        self._watch: OptimizerWatch | None = None
        self._fresh_run()

    def _fresh_run(self) -> None:
        self._pending: int | None = None  # an epoch the loop began, not announced yet
        self._saves = []
        #: The last finished epoch's logs (train, ``val_`` and epoch-level), and every epoch's.
        self.logs: dict[str, float] = {}
        self.history: dict[str, list[float]] = {}
        self._run_extra: dict[str, float] = {}
        self._fresh_epoch()

    def _fresh_epoch(self) -> None:
        self._train_means, self._val_means = Means(), Means()
        #: The epoch's training logs and the last validation's (names as logged, no ``val_``).
        self.train_logs: dict[str, float] = {}
        self._val_logs: dict[str, float] = {}
        self._epoch_extra: dict[str, float] = {}
        self._epoch_val: dict[str, float] = {}  # every validation's of the epoch, ``val_``
        self._batches_ran = self._validated = False  # this epoch's run.batches(), validation

    def __getstate__(self) -> dict[str, Any]:
        if self.active:
            raise TypeError("an active Run cannot be pickled: pickle it before `with run:`")
        return {name: self.__dict__[name] for name in _PICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        Run.__init__(self, state.pop("bus"), state.pop("optimizers"), **state)

    # -- the run ------------------------------------------------------------------------------

    def __enter__(self) -> Run:
        if self.active:
            raise RuntimeError("this Run is already active (runs do not nest)")
        if self._life is not None:  # a new dict: a reused run's totals are not the last run's
            self.params = {}
        self.rank, self.world_size = where()
        self._fresh_run()
        life = self._life = lc.Run(self.bus, source=self, params=self.params, rank=self.rank,
                                   world_size=self.world_size)  # fmt: skip
        life.open()  # on_pretrain_routine_start (a failure there ends the run itself)
        try:
            self._watch = OptimizerWatch(self.optimizers, life)
            life.first_hyperparams = lambda: hyperparams(self.optimizers)  # at train_start
            if self.checkpoint_dir is not None and self.rank == 0:
                self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            life.ready()
        except BaseException as exc:
            self._end(exc)
            raise
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        life = self._life
        if life is None or life.closed:
            return
        try:
            if exc is None:
                if self._in_epoch:  # a `break` out of the epochs
                    self._end_epoch()
                self._close_val()  # a `break` out of a validation after the epochs
                self._check_params(life)
                self._saved(anyway=True)
                life.train_end({**self.logs, **self._run_extra})
        except BaseException as error:
            self._end(error)
            raise
        self._end(exc)  # the user's exception goes on, unchanged

    def _end(self, exc: BaseException | None) -> None:
        """Remove the hooks, then ``teardown`` (a failing subscriber never masks ``exc``)."""
        if self._watch is not None:
            self._watch.remove()
        self._watch = self._val = self._val_into = None
        self._validating = False
        if self._life is not None:
            self._life.finish(exc)

    def _set_params(self, **totals: Any) -> None:
        if any(self.params.get(k) != v for k, v in totals.items()):
            self.params.update(totals)
            self._require_active("epochs").update(params=dict(self.params))

    def _synced(self, logs: dict[str, float], moment: str) -> dict[str, float]:
        return average(logs, self.world_size, moment) if self.sync_logs else logs

    # -- epochs ---------------------------------------------------------------------------------

    def epochs(self, epochs: int | Iterable[int]) -> Iterator[int]:
        """Wrap the epoch loop: ``for epoch in run.epochs(10)`` (or ``range(5, 10)`` to resume)."""
        life = self._require_active("epochs")
        if isinstance(epochs, int):
            epochs = range(epochs)
        if isinstance(epochs, range):
            self._set_params(epochs=epochs.stop)
            life.initial_epoch = epochs.start
        if life.allows(events.on_train_start):  # once a run: params know `epochs` now
            life.train_start()
        return self._epoch_loop(epochs)

    def _epoch_loop(self, epochs: Iterable[int]) -> Iterator[int]:
        self._epochs_open = True
        try:  # a `break` closes this generator: the epoch ends at the next moment
            for epoch in epochs:
                # An epoch follows: a change made between the epochs (scheduler.step()) is
                # announced now, so that a stop asked at its on_params_update starts no other
                # epoch (after the last epoch it waits: a final checkpoint may come first).
                self._check_params(self._require_active("epochs"))
                if agree_to_stop(self.bus, self.world_size):
                    return
                if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                    raise ValueError(f"run.epochs(): epochs must be ints >= 0, got {epoch!r}")
                self._pending = epoch
                self._fresh_epoch()
                yield epoch
                self._end_epoch()  # when the loop asks for the next epoch
        finally:
            self._epochs_open = False

    def _announce(self) -> None:
        """``on_train_epoch_start``, deferred to the epoch's first loop (or its end) so that
        ``params["steps"]`` counts the loader's batches; a pending hyper-parameter change first."""
        if self._pending is not None:
            epoch, self._pending = self._pending, None
            life = self._require_active("epochs")
            self._check_params(life)
            life.epoch_start(epoch)
            self._saved()

    def _end_epoch(self) -> None:
        self._close_train()
        self._close_val()
        extra = self._synced(self._epoch_extra, "on_fit_epoch_end")
        self.logs = logs = {**self.train_logs, **self._epoch_val, **extra}
        for name, value in logs.items():
            self.history.setdefault(name, []).append(value)
        if self.checkpoint_dir is not None:
            self._save(self.checkpoint_dir / "last.pt", the_runs=True)
        self._require_active("epochs").epoch_end(logs)
        self._saved()

    # -- batches --------------------------------------------------------------------------------

    def batches(self, loader: Iterable[T]) -> Iterator[T]:
        """Wrap the batch loop of an epoch: ``for x, y in run.batches(train_loader)``."""
        life = self._require_active("batches")
        if not self._in_epoch:
            raise RuntimeError("run.batches() must be inside `for epoch in run.epochs(...)`")
        if self._pending is None and not life.allows(events.on_train_batch_start):
            raise RuntimeError("run.batches(): this epoch's training part has already ended")
        self._batches_ran = True
        steps = length(loader)
        if steps is not None:
            self._set_params(steps=steps)
        elif "steps" in self.params:  # a loader of unknown length: no stale total
            del self.params["steps"]
            life.update(params=dict(self.params))
        self._announce()
        return self._batch_loop(life, loader)

    def _batch_loop(self, life: lc.Run, loader: Iterable[T]) -> Iterator[T]:
        local_stop = self.world_size == 1  # under DDP the ranks agree at the epoch's end
        if not (local_stop and self.bus.stop_requested):
            self._batches_open = True
            try:  # a `break` closes this generator: the batch ends at the next moment
                for item in loader:
                    life.batch_start()
                    yield item
                    self._end_batch(life)
                    if local_stop and self.bus.stop_requested:
                        break
            finally:
                self._batches_open = False
        self._close_train()

    def _end_batch(self, life: lc.Run) -> None:
        self._check_params(life)  # a change made in the batch is announced at its end
        life.batch_end(self._train_means.floats)  # the .item()s: only for a listener
        if self._saves:
            self._saved()

    def _close_train(self) -> None:
        life = self._require_active("batches")
        self._announce()
        if life.in_batch:  # the user broke out of the batch loop: the batch ended anyway
            self._end_batch(life)
        if life.allows(events.on_train_epoch_end):
            self.train_logs = self._synced(self._train_means.floats(), "on_train_epoch_end")
            life.train_epoch_end(self.train_logs)

    def validation(self, loader: Iterable[T]) -> Iterator[T]:
        """Wrap a validation loop: ``for x, y in run.validation(val_loader)``; outside a run,
        an evaluation of its own."""
        life = self._life
        if life is None or life.closed:
            self.rank, self.world_size = where()
            session = lc.Validation(self.bus, source=self, params=self.params, rank=self.rank,
                                    world_size=self.world_size)  # fmt: skip
            return self._val_loop(session, loader, None)
        self._catch_up()
        if self._in_epoch:  # the epoch's validation: the first after its training part
            if self._batches_ran and not self._batches_open and not self._validated:
                self._close_train()
                self._validated = True
                return self._val_loop(life.validation(), loader, self._epoch_val)
            return self._val_loop(None, loader, self._epoch_val)
        if life.epoch is None:  # a sanity check before the epochs: not reported
            return self._val_loop(None, loader, None)
        self._check_params(life)
        if life.allows(events.on_val_start):  # the run's own, after its epochs
            return self._val_loop(life.validation(), loader, None)
        return self._val_loop(None, loader, self._run_extra)

    def _val_loop(
        self, session: lc.Validation | None, loader: Iterable[T], into: dict[str, float] | None
    ) -> Iterator[T]:
        """A validation; one that is not reported (``session`` None) emits nothing, its
        metrics go ``into`` the epoch's (or the run's) logs, with ``val_`` names."""
        self._close_val()
        self._val_means, self._val_into = Means(), into
        self._val = None if session is None else session.open()
        self._validating = self._val_running = True
        try:  # a `break` closes this generator: the validation ends at the next moment
            for item in loader:
                if session is not None:
                    session.batch_start()
                yield item
                if session is not None:
                    session.batch_end(self._val_means.floats)
        finally:
            self._val_running = False
        self._close_val()

    def _close_val(self) -> None:
        if not self._validating:
            return
        session, into, self._val, self._val_into = self._val, self._val_into, None, None
        self._validating = False
        if session is not None and session.allows(events.on_val_batch_end):  # a `break`
            session.batch_end(self._val_means.floats)
        self._val_logs = logs = self._synced(self._val_means.floats(), "on_val_end")
        if session is not None:
            session.end(logs)
            self._saved()
        if into is not None:  # the latest values win
            into.update({k if k.startswith("val_") else f"val_{k}": v
                         for k, v in logs.items()})  # fmt: skip

    # -- metrics and hyper-parameters -------------------------------------------------------------

    def log(self, **metrics: object) -> None:
        """Hand over metrics: ``run.log(loss=loss, accuracy=acc)``; scalar tensors are fine."""
        life = self._life
        if self.active:
            self._catch_up()
        if self._validating:
            self._val_means.add(metrics)
        elif life is None or life.closed:
            raise RuntimeError("run.log() outside the run: use it inside `with run:`")
        elif life.in_batch and self._batches_open:
            self._train_means.add(metrics)
        elif self._in_epoch:
            if life.in_batch:  # after a `break` out of the batch loop: its training part ends
                self._close_train()
            self._epoch_extra.update(to_floats(metrics))
        else:
            self._run_extra.update(to_floats(metrics))

    def _catch_up(self) -> None:
        """End the loops the user broke out of (a `break` closes the wrapper's generator;
        nothing is emitted then, as the loop may be unwinding an error): at the next moment."""
        if self._validating and not self._val_running:
            self._close_val()
        if self._in_epoch and not self._epochs_open:
            self._end_epoch()

    def _check_params(self, life: lc.Run) -> None:
        """Announce the hyper-parameters changed since last announced, if the order has room."""
        life.params_changed(lambda: hyperparams(self.optimizers), along=_is_rate)

    # -- state -------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._life is not None and not self._life.closed

    @property
    def val_logs(self) -> dict[str, float]:
        """The last validation's logs (names as logged, no ``val_``); read after a ``break``
        out of it (``scheduler.step(run.val_logs["loss"])``), they are that validation's."""
        if self.active:
            self._catch_up()
        return self._val_logs

    @property
    def _in_epoch(self) -> bool:  # an epoch began (announced or not) and has not ended
        return self._pending is not None or (self._life is not None and self._life.in_epoch)

    @property
    def epoch(self) -> int | None:
        """The current (or last) epoch."""
        if self._pending is not None or self._life is None:
            return self._pending
        return self._life.epoch

    @property
    def batch(self) -> int | None:
        """The current (or last) training batch of the epoch."""
        return None if self._life is None or self._life.batch < 0 else self._life.batch

    @property
    def steps(self) -> int:
        """Optimizer steps taken in the run (inside batches or not)."""
        return 0 if self._life is None else self._life.step

    @property
    def stop_requested(self) -> bool:
        """The bus's stop flag: for loops that do not iterate through the run's wrappers."""
        return self.bus.stop_requested

    def _require_active(self, what: str) -> lc.Run:
        if self._life is None or self._life.closed:
            raise RuntimeError(f"run.{what}() outside the run: use it inside `with run:`")
        return self._life

    def __repr__(self) -> str:
        state = "active" if self.active else "idle"
        return f"<eventhooks torch Run {state} epoch={self.epoch} steps={self.steps}>"


def instrument(
    bus: EventBus,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    *,
    model: torch.nn.Module | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    sync_logs: bool = False,
) -> Run:
    """Instrument your own loop: ``with instrument(bus, optimizer) as run:`` (see :class:`Run`)."""
    return Run(bus, optimizer, model=model, checkpoint_dir=checkpoint_dir, sync_logs=sync_logs)
