"""Events from a hand-written PyTorch loop: the user wraps what they have, the loop stays theirs.

``with instrument(bus, optimizer, model=model) as run:`` opens a lifecycle run
(:class:`eventhooks.lifecycle.Run`: the canonical order, the counters, the teardown);
``run.epochs(n)``, ``run.batches(loader)`` and ``run.validation(loader)`` wrap the loop's
iterables and tell the lifecycle where the loop is; ``run.log(loss=loss)`` hands over metrics
(tensors stay tensors until someone listens, or the epoch ends). The optimizer's own hooks give
the step moments; a hyper-parameter change is announced at the end of the batch that made it,
or between the epochs. Under ``torch.distributed`` the run carries ``rank``/``world_size``,
``sync_logs=True`` averages epoch logs over the ranks, and a stop asked on any rank stops all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any, TypeVar

import torch

from eventhooks import EventBus, events
from eventhooks import lifecycle as lc

from ._torch_logs import (
    PEER_STOP,
    Means,
    agree_to_stop,
    average,
    state_of,
    to_floats,
    where,
    write_checkpoint,
)  # fmt: skip
from ._torch_optim import OptimizerWatch, as_optimizers, hyperparams

__all__ = ["PEER_STOP", "Run", "instrument"]

_PARAMS, _BATCH_END, _VAL_BATCH_END = (
    events.on_params_update, events.on_train_batch_end, events.on_val_batch_end,
)  # fmt: skip

T = TypeVar("T")


class Run:
    """One instrumented training run. Build it with :func:`instrument`; use it with ``with``.

    ``optimizer`` (one or several) is watched for steps, ``zero_grad`` calls and changes of
    its hyper-parameters. ``model`` is needed only for checkpoints (``checkpoint_dir=`` saves
    ``last.pt`` at every epoch end, before ``on_fit_epoch_end``). ``sync_logs=True`` averages
    epoch logs over the ranks of ``torch.distributed``.

    Payloads carry the run as ``source`` (``payload.source.model``, ``.optimizers``,
    ``.epoch``...) and the run's ``params`` (``epochs``, ``steps`` where known). A run can be
    used again (``with run:`` twice): each use starts with fresh ``params`` and logs.
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
        #: Totals for progress bars; set before the first ``with run:`` they are that run's.
        self.params: dict[str, Any] = {}
        self.rank, self.world_size = 0, 1
        self._life: lc.Run | None = None  # the lifecycle of the current (or last) use
        self._val: lc.Validation | None = None  # the validation in progress
        self._watch: OptimizerWatch | None = None
        self._pending: int | None = None  # an epoch the loop began, not announced yet
        self._seen: dict[str, float] = {}  # hyper-parameters last announced
        #: Logs of the last finished epoch (train metrics, ``val_`` metrics, epoch-level logs)
        #: and every finished epoch's, by name.
        self.logs: dict[str, float] = {}
        self.history: dict[str, list[float]] = {}
        self._run_extra: dict[str, float] = {}
        self._fresh_epoch()

    def _fresh_epoch(self) -> None:
        self._train_means, self._val_means = Means(), Means()
        #: The epoch's training logs and the last validation's (names as logged, no ``val_``).
        self.train_logs: dict[str, float] = {}
        self.val_logs: dict[str, float] = {}
        self._epoch_extra: dict[str, float] = {}

    # -- pickling: a run crosses a process boundary before it starts, never while it runs ----

    def __getstate__(self) -> dict[str, Any]:
        if self.active:
            raise TypeError("an active Run cannot be pickled: pickle it before `with run:`")
        keep = ("bus", "optimizers", "model", "checkpoint_dir", "sync_logs")
        return {name: self.__dict__[name] for name in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        Run.__init__(self, state.pop("bus"), state.pop("optimizers"), **state)

    # -- the run ------------------------------------------------------------------------------

    def __enter__(self) -> Run:
        if self.active:
            raise RuntimeError("this Run is already active (runs do not nest)")
        if self._life is not None:  # a new dict: a reused run's totals are not the last run's
            self.params = {}
        self.rank, self.world_size = where()
        self._pending, self.logs, self.history, self._run_extra = None, {}, {}, {}
        self._fresh_epoch()
        life = self._life = lc.Run(self.bus, source=self, params=self.params, rank=self.rank,
                                   world_size=self.world_size)  # fmt: skip
        life.open()  # on_pretrain_routine_start (a failure there ends the run itself)
        try:
            self._watch = OptimizerWatch(self.optimizers, self)
            self._seen = hyperparams(self.optimizers)
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
                if self._pending is not None or life.in_epoch:  # a `break` out of the epochs
                    self._end_epoch()
                self._check_params()
                life.train_end({**self.logs, **self._run_extra})
        except BaseException as error:
            self._end(error)
            raise
        self._end(exc)  # the user's exception goes on, unchanged

    def _end(self, exc: BaseException | None) -> None:
        """Remove the hooks, then ``teardown`` (a failing subscriber never masks ``exc``)."""
        if self._watch is not None:
            self._watch.remove()
        self._watch = self._val = None
        if self._life is not None:
            self._life.finish(exc)

    def _set_params(self, **totals: Any) -> None:
        if any(self.params.get(k) != v for k, v in totals.items()):
            self.params.update(totals)
            self._require_active("epochs").update(params=dict(self.params))

    # -- epochs ---------------------------------------------------------------------------------

    def epochs(self, epochs: int | Iterable[int]) -> Iterator[int]:
        """Wrap the epoch loop: ``for epoch in run.epochs(10)`` (or ``range(5, 10)`` to resume).

        Stops yielding when a stop was requested; the epoch's end moments (validation closed,
        checkpoint, ``on_fit_epoch_end``) are emitted when the loop asks for the next epoch.
        """
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
        for epoch in epochs:
            if agree_to_stop(self.bus, self.world_size):
                return
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise ValueError(f"run.epochs(): epochs must be ints >= 0, got {epoch!r}")
            self._pending = epoch
            self._fresh_epoch()
            yield epoch
            self._end_epoch()

    def _announce(self) -> None:
        """``on_train_epoch_start``, deferred from the epoch's first line to its first loop
        (or its end), so that ``params["steps"]`` already counts the batches of the loader.
        A hyper-parameter changed since the last epoch ended is announced just before."""
        if self._pending is not None:
            epoch, self._pending = self._pending, None
            self._check_params()
            self._require_active("epochs").epoch_start(epoch)

    def _end_epoch(self) -> None:
        self._close_train()
        self._close_val()
        extra = self._epoch_extra
        if self.sync_logs:
            extra = average(extra, self.world_size, "on_fit_epoch_end")
        logs = {**self.train_logs, **{_val_name(k): v for k, v in self.val_logs.items()}}
        self.logs = logs = {**logs, **extra}
        for name, value in logs.items():
            self.history.setdefault(name, []).append(value)
        if self.checkpoint_dir is not None:
            self._save(self.checkpoint_dir / "last.pt", the_runs=True)
        self._require_active("epochs").epoch_end(logs)

    # -- training batches -----------------------------------------------------------------------

    def batches(self, loader: Iterable[T]) -> Iterator[T]:
        """Wrap the batch loop of an epoch: ``for x, y in run.batches(train_loader)``.

        Emits batch begin/end around each item and ``on_train_epoch_end`` when the loader is
        exhausted. A stop request ends it after the current batch (under torch.distributed,
        at the end of the epoch, when all ranks agree).
        """
        life = self._require_active("batches")
        if self._pending is None and not life.in_epoch:
            raise RuntimeError("run.batches() must be inside `for epoch in run.epochs(...)`")
        if self._pending is None and not life.allows(events.on_train_batch_start):
            raise RuntimeError("run.batches(): this epoch's training part has already ended")
        if isinstance(loader, Sized):
            self._set_params(steps=len(loader))
        self._announce()
        return self._batch_loop(life, loader)

    def _batch_loop(self, life: lc.Run, loader: Iterable[T]) -> Iterator[T]:
        bus = self.bus
        local_stop = self.world_size == 1  # under DDP the ranks agree at the epoch's end
        if not (local_stop and bus.stop_requested):
            for item in loader:
                life.batch_start()
                yield item
                self._end_batch(life)
                if local_stop and bus.stop_requested:
                    break
        self._close_train()

    def _end_batch(self, life: lc.Run) -> None:
        if self.bus.listening(_PARAMS):
            self._check_params()
        if self.bus.listening(_BATCH_END, batch=life.batch, epoch=life.epoch):
            life.batch_end(self._train_means.floats())  # the .item()s: only for a listener
        else:
            life.batch_end()

    def _close_train(self) -> None:
        life = self._require_active("batches")
        self._announce()
        if life.in_batch:  # the user broke out of the batch loop: the batch ended anyway
            self._end_batch(life)
        if life.allows(events.on_train_epoch_end):
            logs = self._train_means.floats()
            if self.sync_logs:
                logs = average(logs, self.world_size, "on_train_epoch_end")
            self.train_logs = logs
            life.train_epoch_end(logs)

    # -- validation -------------------------------------------------------------------------------

    def validation(self, loader: Iterable[T]) -> Iterator[T]:
        """Wrap a validation loop: ``for x, y in run.validation(val_loader)``.

        Inside an epoch it closes the training part first (``on_train_epoch_end``). Metrics
        logged in its batches become ``val_<name>`` in the epoch logs. After the last epoch it
        is the run's final validation; on a run that is not active, an evaluation on its own.
        """
        life = self._life
        if life is not None and not life.closed:
            if self._pending is not None or life.in_epoch:
                self._close_train()
                self._close_val()
            else:
                self._check_params()
            session = life.validation()
        else:
            self.rank, self.world_size = where()
            session = lc.Validation(self.bus, source=self, params=self.params, rank=self.rank,
                                    world_size=self.world_size)  # fmt: skip
        return self._val_loop(session, loader)

    def _val_loop(self, session: lc.Validation, loader: Iterable[T]) -> Iterator[T]:
        self._val_means = Means()
        self._val = session.open()
        for item in loader:
            session.batch_start()
            yield item
            self._end_val_batch(session)
        self._close_val()

    def _end_val_batch(self, session: lc.Validation) -> None:
        if self.bus.listening(_VAL_BATCH_END, batch=session.batch, epoch=session.epoch):
            session.batch_end(self._val_means.floats())
        else:
            session.batch_end()

    def _close_val(self) -> None:
        session, self._val = self._val, None
        if session is None:
            return
        if session.allows(_VAL_BATCH_END):  # the user broke out of the validation loop
            self._end_val_batch(session)
        logs = self._val_means.floats()
        if self.sync_logs:
            logs = average(logs, self.world_size, "on_val_end")
        self.val_logs = logs
        session.end(logs)

    # -- metrics, hyper-parameters, checkpoints ---------------------------------------------------

    def log(self, **metrics: object) -> None:
        """Hand over metrics: ``run.log(loss=loss, accuracy=acc)``; scalar tensors are fine.

        In a training batch they are averaged over the epoch (batch logs show the running
        mean); in a validation batch, the same, named ``val_<name>`` in the epoch logs; in the
        epoch outside batches (``run.log(val_auc=auc)`` after validation), taken as they are;
        outside epochs, added to ``on_train_end``'s logs.
        """
        life = self._life
        if self._val is not None:
            self._val_means.add(metrics)
        elif life is None or life.closed:
            raise RuntimeError("run.log() outside the run: use it inside `with run:`")
        elif life.in_batch:
            self._train_means.add(metrics)
        elif self._pending is not None or life.in_epoch:
            self._epoch_extra.update(to_floats(metrics))
        else:
            self._run_extra.update(to_floats(metrics))

    def _check_params(self) -> None:
        """Announce the hyper-parameters changed since last seen, where the order has room:
        at the end of the batch that changed them, or between epochs."""
        life = self._life
        if life is None or not self.bus.listening(_PARAMS) or not life.allows(_PARAMS):
            return
        now = hyperparams(self.optimizers)
        if now != self._seen:
            changed = {k: v for k, v in now.items() if self._seen.get(k) != v}
            self._seen = now
            rates = {k: v for k, v in now.items() if k == "lr" or k.startswith("lr/")}
            life.params_update({**rates, **changed})

    def checkpoint(self, path: str | os.PathLike[str]) -> Path | None:
        """Save ``{"model", "optimizer", "epoch", "logs"}`` state dicts and emit on_model_save.

        Under torch.distributed only rank 0 writes (and emits); other ranks return None.
        ``optimizer`` is a list when the run has several. Inside the run, a save after the
        epoch's validation or after ``on_fit_epoch_end`` (a ``ModelCheckpoint``, a final save
        after the loop) is the run's ``on_model_save``; one anywhere else (every N batches,
        before the validation) is a save of its own, as outside any run: the run goes on.
        """
        life = self._life if self.active else None
        runs = life is not None and life.allows(events.on_model_save) and not (
            life.allows(events.on_val_start) and life.allows(events.on_fit_epoch_end)
        )  # a save between training and validation would leave the validation no room
        return self._save(path, runs)

    def _save(self, path: str | os.PathLike[str], the_runs: bool) -> Path | None:
        if self.model is None:
            raise ValueError("run.checkpoint() needs the run's model= (its state_dict is saved)")
        if self.rank != 0:
            return None
        target = write_checkpoint(path, self.model, self.optimizers, self.epoch, self.logs)
        if the_runs and self._life is not None:
            self._life.model_save(target, self.logs)
        elif self.bus.listening(events.on_model_save):  # a save of its own
            self.bus.emit(events.on_model_save, path=target, epoch=self.epoch, logs=self.logs,
                          source=self, rank=self.rank, world_size=self.world_size)  # fmt: skip
        return target

    # -- the trainer API built-in subscribers use (EarlyStopping, ModelCheckpoint) ----------------

    def save(self, path: str | os.PathLike[str]) -> Path | None:
        """Same as :meth:`checkpoint`: what ``ModelCheckpoint`` calls on ``payload.source``."""
        return self.checkpoint(path)

    def get_weights(self) -> dict[str, torch.Tensor]:
        """A snapshot of the model's state_dict that later training cannot change."""
        if self.model is None:
            raise ValueError("run.get_weights() needs the run's model=")
        return {k: v.detach().clone() for k, v in state_of(self.model).items()}

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load a state_dict (from :meth:`get_weights`) into the model."""
        if self.model is None:
            raise ValueError("run.set_weights() needs the run's model=")
        getattr(self.model, "module", self.model).load_state_dict(weights)

    # -- optimizer moments, from the hooks of _torch_optim: emitted inside training batches only,
    # -- where the order has them (a zero_grad() at the top of an epoch is not emitted; a step
    # -- there is counted)

    def _after_step(self, index: int) -> None:
        life = self._life
        if life is not None and life.in_batch:
            life.optimizer_step()
        elif life is not None:
            life.step += 1

    def _before_zero_grad(self, index: int) -> None:
        life = self._life
        if life is not None and life.in_batch:
            life.zero_grad()

    # -- state -------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._life is not None and not self._life.closed

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


def _val_name(name: str) -> str:
    return name if name.startswith("val_") else f"val_{name}"


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
