"""The state machine between Ultralytics' callbacks and one bus.

A :class:`Link` is what :func:`eventhooks.adapters.ultralytics.attach` creates: it holds the
bus, the counters Ultralytics lacks (batch indices), the trainer of the run in progress (a
validator inside training does not know it) and the handling of the final best-weights
validation. One :class:`Forwarder` per callback name calls into it.

Pickling (Ultralytics cloudpickles callbacks into its multi-GPU workers): a link pickles as
its key and its bus. Unpickled in the process that made it, it is the live link again (same
bus object); elsewhere, a new link around the unpickled copy of the bus (whose subscribers
must then pickle too).
"""

from __future__ import annotations

import os
import sys
import uuid
import weakref
from collections.abc import Callable
from typing import Any, Literal

from eventhooks import EventBus

from . import _ultralytics_logs as ul

FinalEval = Literal["drop", "keep"]


def check_final_eval(final_eval: object) -> FinalEval:
    """``final_eval`` itself, if it is one of the two choices; a clear error otherwise."""
    if final_eval not in ("drop", "keep"):
        raise ValueError(f"final_eval= must be 'drop' or 'keep', got {final_eval!r}")
    return final_eval


#: Live links of this process by key, so that a forwarder unpickled here finds its bus.
_LINKS: weakref.WeakValueDictionary[str, Link] = weakref.WeakValueDictionary()


def _relink(key: str, bus: EventBus, final_eval: FinalEval) -> Link:
    live = _LINKS.get(key)
    return live if live is not None else Link(bus, final_eval=final_eval, key=key)


def _rank() -> tuple[int, int]:
    rank = int(os.environ.get("RANK", "-1") or -1)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return max(rank, 0), max(world, 1)


class Link:
    """One bus attached to Ultralytics objects: counters, run state and the forwarding."""

    def __init__(self, bus: EventBus, *, final_eval: FinalEval = "drop", key: str | None = None):
        if not isinstance(bus, EventBus):
            raise TypeError(f"attach() needs an eventhooks.EventBus, got {type(bus).__name__}")
        self.bus = bus
        self.final_eval: FinalEval = check_final_eval(final_eval)
        self.key = key or uuid.uuid4().hex
        self.rank, self.world_size = _rank()
        self.trainer: Any = None  # the trainer of the run in progress
        self.fitting = False  # between the pretrain routine and teardown
        self.in_final_eval = False  # inside the best-weights validation after the last epoch
        self.ended = False  # on_train_end was delivered: teardown of a run that did not fail
        self.validated = False  # a training validation ended in the current epoch
        self.runs = self.teardowns = 0  # runs started and teardowns emitted, for train()
        self.batch = self.val_batch = self.predict_batch = -1
        self.last_logs: dict[str, float] = {}  # the last real epoch's logs, for on_train_end
        self.best_logs: dict[str, float] = {}  # the best-weights validation, as best/<key>
        _LINKS[self.key] = self

    def __reduce__(self) -> tuple[Callable[..., Link], tuple[str, EventBus, FinalEval]]:
        return _relink, (self.key, self.bus, self.final_eval)

    def __repr__(self) -> str:
        return f"<ultralytics Link {self.key[:8]} final_eval={self.final_eval!r} {self.bus!r}>"

    # -- delivery -----------------------------------------------------------------------------

    def _emit(self, name: str, source: Any, **fields: Any) -> None:
        self.bus.emit(name, source=source, rank=self.rank, world_size=self.world_size, **fields)

    def _check_stop(self) -> None:
        """``bus.request_stop()`` becomes ``trainer.stop = True`` (checked after each event)."""
        if self.bus.stop_requested and self.trainer is not None:
            self.trainer.stop = True

    def _epoch(self) -> int | None:
        epoch = getattr(self.trainer, "epoch", None)
        return epoch if isinstance(epoch, int) and epoch >= 0 else None

    # -- training -----------------------------------------------------------------------------

    def _start_run(self, trainer: Any) -> None:
        self.trainer, self.fitting, self.in_final_eval, self.ended = trainer, True, False, False
        self.validated = False
        self.last_logs, self.best_logs = {}, {}
        self.runs += 1

    def _new_run(self, trainer: Any) -> bool:
        # A later hook of a run whose start was not heard: attached to a built trainer, or a
        # start that failed in the constructor of another trainer (no teardown came then).
        return not self.fitting or trainer is not self.trainer

    def on_pretrain_routine_start(self, trainer: Any) -> None:
        self._start_run(trainer)
        self._emit("on_pretrain_routine_start", trainer)  # always: the bus resets its stop flag
        self._check_stop()

    def on_pretrain_routine_end(self, trainer: Any) -> None:
        if self._new_run(trainer):
            self._start_run(trainer)
        if self.bus.listening("on_pretrain_routine_end"):
            self._emit("on_pretrain_routine_end", trainer)
        self._check_stop()

    def on_train_start(self, trainer: Any) -> None:
        if self._new_run(trainer):
            self._start_run(trainer)
        self._emit("on_train_start", trainer, epoch=getattr(trainer, "start_epoch", None))
        self._check_stop()

    def on_train_epoch_start(self, trainer: Any) -> None:
        self.trainer, self.batch, self.validated = trainer, -1, False
        if self.bus.listening("on_train_epoch_start"):
            self._emit("on_train_epoch_start", trainer, epoch=trainer.epoch)
        self._check_stop()

    def on_train_batch_start(self, trainer: Any) -> None:
        self.batch += 1
        if self.bus.listening("on_train_batch_start"):
            self._emit("on_train_batch_start", trainer, batch=self.batch, epoch=trainer.epoch)
        self._check_stop()

    def _step(self, name: str, trainer: Any) -> None:
        # Ultralytics reserves these three names and never calls them; a custom trainer may.
        if self.bus.listening(name):
            fields: dict[str, Any] = {"epoch": self._epoch(), "batch": max(self.batch, 0)}
            if name == "on_params_update":
                fields["hyperparams"] = ul.learning_rates(trainer)
            self._emit(name, trainer, **fields)
        self._check_stop()

    def on_before_zero_grad(self, trainer: Any) -> None:
        self._step("on_before_zero_grad", trainer)

    def optimizer_step(self, trainer: Any) -> None:
        self._step("optimizer_step", trainer)

    def on_params_update(self, trainer: Any) -> None:
        self._step("on_params_update", trainer)

    def on_train_batch_end(self, trainer: Any) -> None:
        if self.bus.listening("on_train_batch_end"):
            logs = ul.train_losses(trainer)
            logs.update(ul.learning_rates(trainer))
            self._emit("on_train_batch_end", trainer, batch=max(self.batch, 0),
                       epoch=trainer.epoch, logs=logs)  # fmt: skip
        self._check_stop()

    def on_train_epoch_end(self, trainer: Any) -> None:
        if self.bus.listening("on_train_epoch_end"):
            logs = ul.train_losses(trainer)
            logs.update(ul.floats(getattr(trainer, "lr", None)))
            self._emit("on_train_epoch_end", trainer, epoch=trainer.epoch, logs=logs)
        self._check_stop()

    def on_model_save(self, trainer: Any) -> None:
        bus = self.bus
        if bus.listening("on_model_save"):
            logs = ul.fit_logs(trainer, validated=self.validated)
            for path in _checkpoints_written(trainer):
                self._emit("on_model_save", trainer, path=path, epoch=trainer.epoch, logs=logs)
        self._check_stop()

    def on_fit_epoch_end(self, trainer: Any) -> None:
        bus = self.bus
        final = self.in_final_eval
        wanted = bus.listening("on_fit_epoch_end")
        if not final and (wanted or bus.listening("on_train_end") or bus.listening("teardown")):
            self.last_logs = ul.fit_logs(trainer, validated=self.validated)
        if wanted and (not final or self.final_eval == "keep"):
            logs = self.last_logs if not final else ul.fit_logs(trainer)
            self._emit("on_fit_epoch_end", trainer, epoch=trainer.epoch, logs=dict(logs))
        self._check_stop()

    def on_train_end(self, trainer: Any) -> None:
        self.in_final_eval = False
        logs = {**self.last_logs, **self.best_logs} if self.bus.listening("on_train_end") else {}
        self._emit("on_train_end", trainer, epoch=self._epoch(), logs=logs)
        # Only now: a subscriber failing above fails the run, and teardown must carry that.
        self.ended = True
        self._check_stop()

    def teardown(self, trainer: Any) -> None:
        # Ultralytics calls teardown in a `finally`: a teardown subscriber failing while the
        # run fails must not replace the run's error (bus.emit_teardown notes it on the error).
        self._end_run(None if self.ended else sys.exception(), trainer, started=True)

    def abort(self, error: BaseException, source: Any, *, started: bool) -> None:
        """Emit the ``teardown`` Ultralytics does not send: for a run that failed to start.

        Ultralytics runs ``on_pretrain_routine_start`` and the dataset check in the trainer's
        constructor and ``teardown`` only in ``train()``; :func:`train` calls this when
        ``model.train()`` raised without a teardown. ``started``: the trainer was built far
        enough to run the start hook (it is the payload's source; else ``source``).
        """
        self._end_run(error, self.trainer if started else None, started=started, source=source)

    def _end_run(
        self, failure: BaseException | None, trainer: Any, *, started: bool, source: Any = None
    ) -> None:
        epoch = self._epoch() if started else None
        logs = dict(self.last_logs) if started else {}
        self.fitting = self.in_final_eval = False
        self.trainer = None
        self.teardowns += 1
        self.bus.emit_teardown(
            failure, source=trainer if trainer is not None else source, rank=self.rank,
            world_size=self.world_size, epoch=epoch, logs=logs,
        )  # fmt: skip

    # -- validation ---------------------------------------------------------------------------

    def _val_epoch(self, validator: Any) -> int | None:
        return self._epoch() if getattr(validator, "training", False) else None

    def _dropped(self) -> bool:
        return self.in_final_eval and self.final_eval == "drop"

    def on_val_start(self, validator: Any) -> None:
        self.val_batch = -1
        # final_eval(): the trainer's own validator, on best.pt, as a standalone run. Told by
        # identity: a model.val() after a start that failed (no teardown) is not it.
        trainer = self.trainer
        if (
            trainer is not None
            and validator is getattr(trainer, "validator", None)
            and not getattr(validator, "training", False)
        ):
            self.in_final_eval = True
        if not self._dropped() and self.bus.listening("on_val_start"):
            self._emit("on_val_start", validator, epoch=self._val_epoch(validator))
        self._check_stop()

    def on_val_batch_start(self, validator: Any) -> None:
        self.val_batch += 1
        if not self._dropped() and self.bus.listening("on_val_batch_start"):
            self._emit("on_val_batch_start", validator, batch=self.val_batch,
                       epoch=self._val_epoch(validator))  # fmt: skip
        self._check_stop()

    def on_val_batch_end(self, validator: Any) -> None:
        if not self._dropped() and self.bus.listening("on_val_batch_end"):
            self._emit("on_val_batch_end", validator, batch=max(self.val_batch, 0),
                       epoch=self._val_epoch(validator))  # fmt: skip
        self._check_stop()

    def on_val_end(self, validator: Any) -> None:
        bus = self.bus
        names = getattr(self.trainer, "loss_names", ())
        if self.in_final_eval:
            if bus.listening("on_train_end"):
                self.best_logs = ul.floats(ul.val_logs(validator, names), "best/")
        elif getattr(validator, "training", False):
            self.validated = True  # trainer.metrics and fitness are this epoch's, not zeros
        if not self._dropped() and bus.listening("on_val_end"):
            self._emit("on_val_end", validator, epoch=self._val_epoch(validator),
                       logs=ul.val_logs(validator, names))  # fmt: skip
        self._check_stop()

    # -- prediction and export ----------------------------------------------------------------

    def on_predict_start(self, predictor: Any) -> None:
        self.predict_batch = -1
        if self.bus.listening("on_predict_start"):
            self._emit("on_predict_start", predictor)

    def on_predict_batch_start(self, predictor: Any) -> None:
        self.predict_batch += 1
        if self.bus.listening("on_predict_batch_start"):
            self._emit("on_predict_batch_start", predictor, batch=self.predict_batch)

    def on_predict_postprocess_end(self, predictor: Any) -> None:
        if self.bus.listening("on_predict_postprocess_end"):
            self._emit("on_predict_postprocess_end", predictor, batch=max(self.predict_batch, 0),
                       outputs=getattr(predictor, "results", None))  # fmt: skip

    def on_predict_batch_end(self, predictor: Any) -> None:
        if self.bus.listening("on_predict_batch_end"):
            self._emit("on_predict_batch_end", predictor, batch=max(self.predict_batch, 0),
                       outputs=getattr(predictor, "results", None))  # fmt: skip

    def on_predict_end(self, predictor: Any) -> None:
        if self.bus.listening("on_predict_end"):
            self._emit("on_predict_end", predictor)

    def on_export_start(self, exporter: Any) -> None:
        if self.bus.listening("on_export_start"):
            self._emit("on_export_start", exporter, format=_export_format(exporter))

    def on_export_end(self, exporter: Any) -> None:
        if self.bus.listening("on_export_end"):
            self._emit("on_export_end", exporter, format=_export_format(exporter),
                       path=ul.export_artifact(exporter))  # fmt: skip


def _export_format(exporter: Any) -> str | None:
    fmt = getattr(getattr(exporter, "args", None), "format", None)
    return str(fmt) if fmt is not None else None


def _checkpoints_written(trainer: Any) -> list[str]:
    """The files ``BaseTrainer.save_model`` wrote this epoch: last.pt, best.pt, epoch<N>.pt."""
    written = [os.fspath(trainer.last)]
    best = getattr(trainer, "best", None)
    if best is not None and trainer.best_fitness == trainer.fitness:
        written.append(os.fspath(best))
    period = getattr(trainer, "save_period", 0) or 0
    if period > 0 and trainer.epoch % period == 0:
        written.append(os.fspath(trainer.wdir / f"epoch{trainer.epoch}.pt"))
    return written


class Forwarder:
    """The Ultralytics callback for one event name: ``callback(obj)`` calls the link.

    Picklable (a module-level class; its link pickles as key and bus).
    """

    __slots__ = ("_handle", "event", "link")

    def __init__(self, link: Link, event: str) -> None:
        self.link = link
        self.event = event
        self._handle: Callable[[Any], None] = getattr(link, event)

    def __call__(self, obj: Any) -> None:
        self._handle(obj)

    def __reduce__(self) -> tuple[type[Forwarder], tuple[Link, str]]:
        return Forwarder, (self.link, self.event)

    def __repr__(self) -> str:
        return f"<eventhooks Forwarder {self.event} -> {self.link!r}>"
