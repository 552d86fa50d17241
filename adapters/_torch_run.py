"""Events from a hand-written PyTorch loop: the user wraps what they have, the loop stays theirs.

``with instrument(bus, optimizer, model=model) as run:`` opens the run; ``run.epochs(n)``,
``run.batches(loader)`` and ``run.validation(loader)`` wrap the loop's iterables and emit the
begin/end moments around each item; ``run.log(loss=loss)`` hands over the user's metrics
(tensors welcome: they become floats only when someone listens, or once per epoch). The
optimizer's own hooks give the step moments. Leaving the ``with`` block emits
``on_train_end`` (normal end) and ``teardown`` (always, with the error if one escaped).

Under ``torch.distributed`` every payload carries the process's ``rank`` and ``world_size``;
``sync_logs=True`` averages the epoch's logs over the ranks before they are delivered, and stop
requests are agreed between the ranks at each epoch boundary, so that a rank-0-only subscriber
(early stopping) stops every rank instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from eventhooks import EventBus, events

from ._torch_logs import Means, average, state_of, to_floats, where
from ._torch_optim import OptimizerWatch, hyperparams

_BATCH_START, _BATCH_END = events.on_train_batch_start, events.on_train_batch_end
_PARAMS, _STEP, _ZERO_GRAD = (
    events.on_params_update,
    events.optimizer_step,
    events.on_before_zero_grad,
)

T = TypeVar("T")

#: Reason given to the bus of a rank that stops because another rank asked to.
PEER_STOP = "stop requested on another rank"


def _as_tuple(optimizer: Any) -> tuple[torch.optim.Optimizer, ...]:
    if optimizer is None:
        return ()
    if isinstance(optimizer, torch.optim.Optimizer):
        return (optimizer,)
    optimizers = tuple(optimizer)
    for opt in optimizers:
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(opt).__name__}")
    return optimizers


def _val_name(name: str) -> str:
    return name if name.startswith("val_") else f"val_{name}"


class Run:
    """One instrumented training run. Build it with :func:`instrument`; use it with ``with``.

    ``optimizer`` (one or several) is watched for steps, ``zero_grad`` calls and changes of
    its hyper-parameters. ``model`` is needed only for checkpoints (``checkpoint_dir=`` saves
    ``last.pt`` at every epoch end, before ``on_fit_epoch_end``). ``sync_logs=True`` averages
    epoch logs over the ranks of ``torch.distributed``. ``routine=True`` also emits the pretrain
    routine moments around the run's own setup (the ready-made :func:`fit` does).

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
        routine: bool = False,
    ) -> None:
        if not isinstance(bus, EventBus):
            raise TypeError(f"bus must be an eventhooks.EventBus, got {type(bus).__name__}")
        self.bus = bus
        self.optimizers = _as_tuple(optimizer)
        self.model = model
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        if self.checkpoint_dir is not None and model is None:
            raise ValueError("checkpoint_dir= needs model= (the model whose state_dict is saved)")
        self.sync_logs = sync_logs
        self.routine = routine
        #: Totals for progress bars; set before the first ``with run:`` they are that run's.
        self.params: dict[str, Any] = {}
        self._used = False  # entered before: the next ``with`` starts with fresh params
        #: Logs of the last finished epoch (train metrics, ``val_`` metrics, epoch-level logs).
        self.logs: dict[str, float] = {}
        #: Every finished epoch's logs, by name.
        self.history: dict[str, list[float]] = {}
        #: Logs of the last validation (names as logged, without ``val_``).
        self.val_logs: dict[str, float] = {}
        self.epoch: int | None = None
        self.batch: int | None = None
        self.steps = 0
        self.rank, self.world_size = 0, 1
        self._reset()

    def _reset(self) -> None:
        self._active = False
        self._watch: OptimizerWatch | None = None
        self._where: dict[str, Any] = {"source": self, "params": self.params}
        self._in_epoch = self._announced = self._started = False
        self._train_open = False
        self._batch_open = False
        self._next_batch = 0
        self._val_open = False
        self._val_batch: int | None = None
        self._train = Means()
        self._val = Means()
        self.train_logs: dict[str, float] = {}
        self._epoch_extra: dict[str, float] = {}
        self._run_extra: dict[str, float] = {}
        self._seen: dict[str, float] = {}
        self._zero_grad_seen = self._step_seen = self._params_told = False

    # -- pickling: a run crosses a process boundary before it starts, never while it runs ----

    def __getstate__(self) -> dict[str, Any]:
        if self._active:
            raise TypeError("an active Run cannot be pickled: pickle it before `with run:`")
        keep = ("bus", "optimizers", "model", "checkpoint_dir", "sync_logs", "routine")
        return {name: self.__dict__[name] for name in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        Run.__init__(self, state.pop("bus"), state.pop("optimizers"), **state)

    # -- the run ------------------------------------------------------------------------------

    def __enter__(self) -> Run:
        if self._active:
            raise RuntimeError("this Run is already active (runs do not nest)")
        if self._used:  # a new dict: a reused run's totals are not the last run's
            self.params = {}
        self._used = True
        self._reset()
        self.epoch, self.batch, self.steps = None, None, 0
        self.logs, self.history = {}, {}
        self.rank, self.world_size = where()
        self._where.update(rank=self.rank, world_size=self.world_size)
        self._active = True
        bus = self.bus
        try:
            if self.routine:
                bus.emit(events.on_pretrain_routine_start, **self._where)
            self._watch = OptimizerWatch(self.optimizers, self)
            self._seen = hyperparams(self.optimizers)
            if self.checkpoint_dir is not None and self.rank == 0:
                self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            if self.routine:
                bus.emit(events.on_pretrain_routine_end, **self._where)
        except BaseException as exc:
            self._teardown(exc)
            raise
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if not self._active:
            return
        if exc is not None:
            self._teardown(exc)
            return  # the user's exception goes on, unchanged
        try:
            self._start_training(None)
            if self._in_epoch:  # the user broke out of the epoch loop: that epoch still ended
                self._end_epoch()
            logs = {**self.logs, **self._run_extra}
            self.bus.emit(events.on_train_end, epoch=self.epoch, logs=logs, **self._where)
        except BaseException as error:
            self._teardown(error)
            raise
        self._teardown(None)

    def _teardown(self, exc: BaseException | None) -> None:
        """Remove the hooks and emit ``teardown``; never mask the exception that ended the run.

        ``bus.emit_teardown``: a teardown subscriber failing while the run fails is logged and
        noted on ``exc``, which stays the exception the caller gets.
        """
        if self._watch is not None:
            self._watch.remove()
        self._watch = None
        self._active = False
        self._in_epoch = self._batch_open = self._val_open = False
        self.bus.emit_teardown(exc, epoch=self.epoch, logs=self.logs, **self._where)

    # -- epochs ---------------------------------------------------------------------------------

    def epochs(self, epochs: int | Iterable[int]) -> Iterator[int]:
        """Wrap the epoch loop: ``for epoch in run.epochs(10)`` (or ``range(5, 10)`` to resume).

        Stops yielding when a stop was requested; the epoch's end moments (validation closed,
        checkpoint, ``on_fit_epoch_end``) are emitted when the loop asks for the next epoch.
        """
        self._require_active("epochs")
        if isinstance(epochs, int):
            epochs = range(epochs)
        if isinstance(epochs, range):
            self.params["epochs"] = epochs.stop
        self._start_training(epochs.start if isinstance(epochs, range) else None)
        return self._epoch_loop(epochs)

    def _start_training(self, initial_epoch: int | None) -> None:
        """Emit ``on_train_start`` once, when the epoch loop starts: ``params`` know ``epochs``."""
        if not self._started:
            self._started = True
            self.bus.emit(events.on_train_start, epoch=initial_epoch, logs={}, **self._where)

    def _epoch_loop(self, epochs: Iterable[int]) -> Iterator[int]:
        for epoch in epochs:
            if self._stop_agreed():
                return
            self._begin_epoch(epoch)
            yield epoch
            self._end_epoch()

    def _stop_agreed(self) -> bool:
        """Whether to stop; under torch.distributed, the ranks agree (one rank asking is enough)."""
        stop = self.bus.stop_requested
        if self.world_size > 1:
            flag = torch.tensor([1.0 if stop else 0.0])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and not stop:
                self.bus.request_stop(PEER_STOP)
                stop = True
        return stop

    def _begin_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"run.epochs(): epochs must be ints >= 0, got {epoch!r}")
        self.epoch = epoch
        self._in_epoch = self._train_open = True
        self._next_batch = 0
        self._train, self._val = Means(), Means()
        self.train_logs, self.val_logs, self._epoch_extra = {}, {}, {}
        self._announced = False

    def _announce_epoch(self) -> None:
        """Emit ``on_train_epoch_start`` once, when the epoch's first loop starts.

        Deferred from the epoch's first line to its first ``run.batches()`` (or validation,
        or end), so that ``params["steps"]`` already counts the batches of the loader.
        """
        if self._in_epoch and not self._announced:
            self._announced = True
            self.bus.emit(events.on_train_epoch_start, epoch=self.epoch, **self._where)

    def _end_epoch(self) -> None:
        self._close_val()
        self._close_train()
        extra = dict(self._epoch_extra)
        if self.sync_logs:
            extra = average(extra, self.world_size, "on_fit_epoch_end")
        logs = {**self.train_logs, **{_val_name(k): v for k, v in self.val_logs.items()}}
        logs.update(extra)
        self.logs = logs
        for name, value in logs.items():
            self.history.setdefault(name, []).append(value)
        if self.checkpoint_dir is not None:
            self.checkpoint(self.checkpoint_dir / "last.pt")
        self._in_epoch = False
        self.bus.emit(events.on_fit_epoch_end, epoch=self.epoch, logs=logs, **self._where)

    # -- training batches -----------------------------------------------------------------------

    def batches(self, loader: Iterable[T]) -> Iterator[T]:
        """Wrap the batch loop of an epoch: ``for x, y in run.batches(train_loader)``.

        Emits batch begin/end around each item and ``on_train_epoch_end`` when the loader is
        exhausted. A stop request ends it after the current batch (under torch.distributed,
        at the end of the epoch, when all ranks agree).
        """
        self._require_active("batches")
        if not self._in_epoch:
            raise RuntimeError("run.batches() must be inside `for epoch in run.epochs(...)`")
        if not self._train_open:
            raise RuntimeError("run.batches(): this epoch's training part has already ended")
        if isinstance(loader, Sized):
            self.params["steps"] = len(loader)
        self._announce_epoch()
        return self._batch_loop(loader)

    def _batch_loop(self, loader: Iterable[T]) -> Iterator[T]:
        # The hot path: inline, no helper calls unless someone listens.
        bus, where_ = self.bus, self._where
        listening, emit = bus.listening, bus.emit
        local_stop = self.world_size == 1
        if not (local_stop and bus.stop_requested):
            for item in loader:
                self.batch = index = self._next_batch
                self._next_batch = index + 1
                self._batch_open = True
                self._zero_grad_seen = self._step_seen = self._params_told = False
                if listening(_BATCH_START):
                    emit(_BATCH_START, batch=index, epoch=self.epoch, **where_)
                yield item
                self._end_batch()
                if local_stop and bus.stop_requested:
                    break
        self._close_train()

    def _end_batch(self) -> None:
        self._batch_open = False
        bus = self.bus
        if bus.listening(_PARAMS):
            self._check_params()
        if bus.listening(_BATCH_END):
            bus.emit(
                _BATCH_END, batch=self.batch, epoch=self.epoch, logs=self._train.floats(),
                **self._where,
            )  # fmt: skip

    def _close_train(self) -> None:
        self._announce_epoch()
        if self._batch_open:  # the user broke out of the batch loop: the batch ended anyway
            self._end_batch()
        if not self._train_open:
            return
        self._train_open = False
        logs = self._train.floats()
        if self.sync_logs:
            logs = average(logs, self.world_size, "on_train_epoch_end")
        self.train_logs = logs
        self.bus.emit(events.on_train_epoch_end, epoch=self.epoch, logs=logs, **self._where)

    # -- validation -------------------------------------------------------------------------------

    def validation(self, loader: Iterable[T]) -> Iterator[T]:
        """Wrap a validation loop: ``for x, y in run.validation(val_loader)``.

        Inside an epoch it closes the training part first (``on_train_epoch_end``). Metrics
        logged in its batches become ``val_<name>`` in the epoch logs. Also works on a run
        that is not active: evaluation on its own (``on_val_start`` ... ``on_val_end``).
        """
        if self._in_epoch:
            self._close_train()
            self._close_val()
        elif not self._active:
            self.rank, self.world_size = where()
            self._where.update(rank=self.rank, world_size=self.world_size)
        return self._val_loop(loader)

    def _val_loop(self, loader: Iterable[T]) -> Iterator[T]:
        self._val = Means()
        self._val_open = True
        bus, where_ = self.bus, self._where
        epoch = self.epoch if self._in_epoch else None
        bus.emit(events.on_val_start, epoch=epoch, logs={}, **where_)
        for index, item in enumerate(loader):
            self._val_batch = index
            if bus.listening(events.on_val_batch_start):
                bus.emit(events.on_val_batch_start, batch=index, epoch=epoch, **where_)
            yield item
            self._end_val_batch()
        self._close_val()

    def _end_val_batch(self) -> None:
        index, self._val_batch = self._val_batch, None
        bus = self.bus
        if index is not None and bus.listening(events.on_val_batch_end):
            epoch = self.epoch if self._in_epoch else None
            bus.emit(
                events.on_val_batch_end, batch=index, epoch=epoch, logs=self._val.floats(),
                **self._where,
            )  # fmt: skip

    def _close_val(self) -> None:
        if not self._val_open:
            return
        self._end_val_batch()
        self._val_open = False
        logs = self._val.floats()
        if self.sync_logs:
            logs = average(logs, self.world_size, "on_val_end")
        self.val_logs = logs
        epoch = self.epoch if self._in_epoch else None
        self.bus.emit(events.on_val_end, epoch=epoch, logs=logs, **self._where)

    # -- metrics and checkpoints ------------------------------------------------------------------

    def log(self, **metrics: object) -> None:
        """Hand over metrics: ``run.log(loss=loss, accuracy=acc)``; scalar tensors are fine.

        In a training batch they are averaged over the epoch (batch logs show the running
        mean); in a validation batch, the same, named ``val_<name>`` in the epoch logs; in the
        epoch outside batches (``run.log(val_auc=auc)`` after validation), taken as they are;
        outside epochs, added to ``on_train_end``'s logs.
        """
        if self._batch_open:
            self._train.add(metrics)
        elif self._val_batch is not None:
            self._val.add(metrics)
        elif self._in_epoch:
            self._epoch_extra.update(to_floats(metrics))
        elif self._active:
            self._run_extra.update(to_floats(metrics))
        else:
            raise RuntimeError("run.log() outside the run: use it inside `with run:`")

    def checkpoint(self, path: str | os.PathLike[str]) -> Path | None:
        """Save ``{"model", "optimizer", "epoch", "logs"}`` state dicts and emit on_model_save.

        Under torch.distributed only rank 0 writes (and emits); other ranks return None.
        ``optimizer`` is a list when the run has several.
        """
        if self.model is None:
            raise ValueError("run.checkpoint() needs the run's model= (its state_dict is saved)")
        if self.rank != 0:
            return None
        self._announce_epoch()
        target = Path(path)
        optimizers = [state_of(opt) for opt in self.optimizers]
        state = {
            "model": state_of(self.model),
            "optimizer": optimizers[0] if len(optimizers) == 1 else optimizers,
            "epoch": self.epoch,
            "logs": dict(self.logs),
        }
        partial = target.with_name(target.name + ".partial")
        torch.save(state, partial)
        os.replace(partial, target)  # a crash mid-save leaves the previous checkpoint intact
        self.bus.emit(
            events.on_model_save, path=target, epoch=self.epoch, logs=self.logs, **self._where
        )
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

    # -- optimizer moments (called by the hooks of _torch_optim) ----------------------------------

    # The canonical order has optimizer moments only inside a training batch: a zero_grad()
    # before the epoch loop or at the top of an epoch is counted, not emitted.

    def _after_step(self, index: int) -> None:
        step = self.steps
        self.steps += 1
        if not self._batch_open:
            return
        self._step_seen = True
        bus = self.bus
        if bus.listening(_STEP):
            bus.emit(_STEP, epoch=self.epoch, batch=self.batch, step=step, **self._where)
        if self._zero_grad_seen and bus.listening(_PARAMS):
            self._check_params()

    def _before_zero_grad(self, index: int) -> None:
        if not self._batch_open:
            return
        bus = self.bus
        if bus.listening(_ZERO_GRAD):
            bus.emit(
                _ZERO_GRAD, epoch=self.epoch, batch=self.batch, step=self.steps, **self._where
            )  # fmt: skip
        self._zero_grad_seen = True
        if self._step_seen and bus.listening(_PARAMS):
            self._check_params()

    def _check_params(self) -> None:
        """Emit on_params_update if a hyper-parameter changed since last seen (once a batch)."""
        if self._params_told:
            return
        now = hyperparams(self.optimizers)
        if now == self._seen:
            return
        changed = {k: v for k, v in now.items() if self._seen.get(k) != v}
        self._seen = now
        self._params_told = True
        report = {k: v for k, v in now.items() if k == "lr" or k.startswith("lr/")}
        report.update(changed)
        self.bus.emit(
            events.on_params_update, epoch=self.epoch, batch=self.batch,
            step=max(self.steps - 1, 0), hyperparams=report, **self._where,
        )  # fmt: skip

    # -- helpers -----------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._active

    @property
    def stop_requested(self) -> bool:
        """The bus's stop flag: for loops that do not iterate through the run's wrappers."""
        return self.bus.stop_requested

    def _require_active(self, what: str) -> None:
        if not self._active:
            raise RuntimeError(f"run.{what}() outside the run: use it inside `with run:`")

    def __repr__(self) -> str:
        state = "active" if self._active else "idle"
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
