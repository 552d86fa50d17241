"""Ultralytics' callbacks translated onto the lifecycle (:mod:`eventhooks.lifecycle`).

A :class:`Link` is what :func:`eventhooks.adapters.ultralytics.attach` creates: one bus, the
sessions in progress (a trainer's :class:`~eventhooks.lifecycle.Run`, a validator's, a
predictor's or an exporter's session) and the handling of the best-weights validation after
the last epoch. The lifecycle keeps the order, the counters, the stop requests and the one
``teardown``; the link says which of its moments each Ultralytics hook is. One
:class:`Forwarder` per callback name calls into it.

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
from eventhooks import events as ev
from eventhooks.lifecycle import Export, Prediction, Run, Validation

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


def _context(source: Any) -> dict[str, Any]:
    """A session's context: its Ultralytics object, and the process' place under DDP."""
    rank = int(os.environ.get("RANK", "-1") or -1)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return {"source": source, "rank": max(rank, 0), "world_size": max(world, 1)}


class Link:
    """One bus attached to Ultralytics objects: the sessions in progress and the translation."""

    def __init__(self, bus: EventBus, *, final_eval: FinalEval = "drop", key: str | None = None):
        if not isinstance(bus, EventBus):
            raise TypeError(f"attach() needs an eventhooks.EventBus, got {type(bus).__name__}")
        self.bus = bus
        self.final_eval: FinalEval = check_final_eval(final_eval)
        self.key = key or uuid.uuid4().hex
        self.run: Run | None = None  # the last training run (open, or closed)
        self.val: Validation | None = None  # the validation in progress, unless dropped
        self.predict: Prediction | None = None
        self.export: Export | None = None
        self.validated = False  # the run's current epoch validated (val=False skips some)
        self.best: dict[str, float] = {}  # the best-weights validation, as best/<key>
        _LINKS[self.key] = self

    def __reduce__(self) -> tuple[Callable[..., Link], tuple[str, EventBus, FinalEval]]:
        return _relink, (self.key, self.bus, self.final_eval)

    def __repr__(self) -> str:
        return f"<ultralytics Link {self.key[:8]} final_eval={self.final_eval!r} {self.bus!r}>"

    # -- the run ------------------------------------------------------------------------------

    def _open(self, trainer: Any) -> Run:
        self.run, self.validated, self.best = Run(self.bus, **_context(trainer)), False, {}
        return self.run.open()  # a subscriber failing here: teardown, then the error

    def _run(self, trainer: Any) -> Run:
        """The trainer's run; opened here if its start was not heard (attached to a built
        trainer: its constructor ran ``on_pretrain_routine_start``; a second ``train()``)."""
        run = self.run
        if run is None or run.closed or run.context.source is not trainer:
            run = self._open(trainer)
        return run

    def _live(self) -> Run | None:
        return self.run if self.run is not None and not self.run.closed else None

    def check_stop(self) -> None:
        """``bus.request_stop()`` becomes ``trainer.stop = True`` (checked after each hook)."""
        run = self._live()
        if run is not None and run.stop_requested:
            run.context.source.stop = True

    def _end_batch(self, run: Run, trainer: Any) -> None:
        """End a batch Ultralytics left without its end: it ran out of time (``time=``) or of
        memory (the epoch then restarts with half the batch size)."""
        if run.in_batch:
            run.batch_end(self._batch_logs(run, trainer))

    def _batch_logs(self, run: Run, trainer: Any) -> dict[str, float] | None:
        if not run.hears(ev.on_train_batch_end):
            return None  # nothing converted for a batch nobody hears (every=N)
        return {**ul.train_losses(trainer), **ul.learning_rates(trainer)}

    # -- training -----------------------------------------------------------------------------

    def on_pretrain_routine_start(self, trainer: Any) -> None:
        self._open(trainer)

    def on_pretrain_routine_end(self, trainer: Any) -> None:
        self._run(trainer).ready()

    def on_train_start(self, trainer: Any) -> None:
        run = self._run(trainer)
        run.initial_epoch = trainer.start_epoch
        run.train_start()

    def on_train_epoch_start(self, trainer: Any) -> None:
        run = self._run(trainer)
        if run.in_epoch and run.epoch == trainer.epoch:  # Ultralytics restarts the epoch
            self._end_batch(run, trainer)  # out of memory: a batch that did not end
            if not run.allows("on_train_epoch_start"):  # a NaN, seen after the validation:
                run.epoch_end(ul.fit_logs(trainer, validated=self.validated))  # its attempt
        self.validated = False
        run.epoch_start(trainer.epoch)  # the same epoch again (restart) or the next

    def on_train_batch_start(self, trainer: Any) -> None:
        self._run(trainer).batch_start()

    # Ultralytics reserves these three names and never calls them; a custom trainer may.
    def on_before_zero_grad(self, trainer: Any) -> None:
        self._run(trainer).zero_grad()

    def optimizer_step(self, trainer: Any) -> None:
        self._run(trainer).optimizer_step()

    def on_params_update(self, trainer: Any) -> None:
        self._run(trainer).params_update(ul.learning_rates(trainer))

    def on_train_batch_end(self, trainer: Any) -> None:
        run = self._run(trainer)
        run.batch_end(self._batch_logs(run, trainer))

    def on_train_epoch_end(self, trainer: Any) -> None:
        run = self._run(trainer)
        self._end_batch(run, trainer)
        logs = None
        if self.bus.listening("on_train_epoch_end", epoch=run.epoch):
            logs = {**ul.train_losses(trainer), **ul.floats(getattr(trainer, "lr", None))}
        run.train_epoch_end(logs)

    def on_model_save(self, trainer: Any) -> None:
        run = self._run(trainer)
        if self.bus.listening("on_model_save", epoch=run.epoch):
            logs = ul.fit_logs(trainer, validated=self.validated)
            for path in _checkpoints_written(trainer):
                run.model_save(path, logs)

    def on_fit_epoch_end(self, trainer: Any) -> None:
        run = self._run(trainer)
        if trainer.epoch != run.epoch:  # after the best-weights validation: epoch last + 1
            return
        run.epoch_end(ul.fit_logs(trainer, validated=self.validated))

    def on_train_end(self, trainer: Any) -> None:
        run = self._run(trainer)
        last = run.logs
        try:
            run.train_end({**last, **self.best})
        finally:
            run.logs = last  # teardown carries the last epoch's logs, not best/<key>

    def teardown(self, trainer: Any) -> None:
        # Ultralytics calls teardown in a `finally`: the error propagating through it, if the
        # run did not end. A teardown subscriber failing then does not replace that error.
        run = self._run(trainer)
        run.finish(None if run.ended else sys.exception())

    def abort(self, error: BaseException, model: Any, since: Run | None) -> None:
        """The ``teardown`` Ultralytics does not send, for a ``model.train()`` that failed in
        the trainer's constructor (:func:`~eventhooks.adapters.ultralytics.train`).

        ``since``: the link's run before that call. A run opened since (the start hook ran)
        is closed with ``error``; else a run of ``model``'s that never opened ends at once.
        """
        run = self.run if self.run is not since else None
        (run or Run(self.bus, **_context(model))).close(error)

    # -- validation ---------------------------------------------------------------------------

    def _final(self, validator: Any) -> bool:
        """Whether this is ``final_eval()``: the trainer's own validator on ``best.pt`` after the
        last epoch, as a standalone run (told by identity: a ``model.val()`` is not it)."""
        run = self._live()
        return (
            run is not None
            and validator is getattr(run.context.source, "validator", None)
            and not getattr(validator, "training", False)
        )

    def on_val_start(self, validator: Any) -> None:
        run = self._live()
        if run is not None and getattr(validator, "training", False):
            self.val = run.validation(source=validator)  # the epoch's
        elif self._final(validator):
            keep = self.final_eval == "keep"  # as a validation after the last epoch
            self.val = Validation(self.bus, parent=run, source=validator) if keep else None
        else:  # a validation of its own (model.val(), or a subscriber's inside a fit)
            self.val = Validation(self.bus, **_context(validator))
        if self.val is not None:
            self.val.open()

    def on_val_batch_start(self, validator: Any) -> None:
        if self.val is not None:
            self.val.batch_start()

    def on_val_batch_end(self, validator: Any) -> None:
        if self.val is not None:
            self.val.batch_end()

    def on_val_end(self, validator: Any) -> None:
        run = self._live()
        names = getattr(run.context.source, "loss_names", ()) if run is not None else ()
        if self._final(validator):
            self.best = ul.floats(ul.val_logs(validator, names), "best/")
        elif run is not None and getattr(validator, "training", False):
            self.validated = True  # trainer.metrics and fitness are this epoch's, not zeros
        val, self.val = self.val, None
        if val is not None:
            wanted = self.bus.listening("on_val_end", epoch=val.epoch)
            val.end(ul.val_logs(validator, names) if wanted else None)

    # -- prediction and export ----------------------------------------------------------------

    def on_predict_start(self, predictor: Any) -> None:
        self.predict = Prediction(self.bus, **_context(predictor)).open()

    def on_predict_batch_start(self, predictor: Any) -> None:
        if self.predict is not None:
            self.predict.batch_start()

    def on_predict_postprocess_end(self, predictor: Any) -> None:
        if self.predict is not None:
            self.predict.postprocess_end(getattr(predictor, "results", None))

    def on_predict_batch_end(self, predictor: Any) -> None:
        if self.predict is not None:
            self.predict.batch_end(getattr(predictor, "results", None))

    def on_predict_end(self, predictor: Any) -> None:
        predict, self.predict = self.predict, None
        if predict is not None:
            predict.end()

    def on_export_start(self, exporter: Any) -> None:
        fmt = getattr(getattr(exporter, "args", None), "format", None)
        export = Export(self.bus, format=None if fmt is None else str(fmt), **_context(exporter))
        self.export = export.open()

    def on_export_end(self, exporter: Any) -> None:
        export, self.export = self.export, None
        if export is not None:
            export.end(ul.export_artifact(exporter))


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
        self.link.check_stop()

    def __reduce__(self) -> tuple[type[Forwarder], tuple[Link, str]]:
        return Forwarder, (self.link, self.event)

    def __repr__(self) -> str:
        return f"<eventhooks Forwarder {self.event} -> {self.link!r}>"
