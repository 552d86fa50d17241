"""PyTorch Lightning adapter: ``Trainer(callbacks=[LightningCallback(bus)])``.

Lightning's hooks translated onto :mod:`eventhooks.lifecycle`, which keeps the canonical order,
the counters, the stop requests and the one ``teardown``. Importing this module imports
Lightning; nothing else in eventhooks does.

==============================================  ===============================================
Lightning                                       lifecycle
==============================================  ===============================================
``setup(stage="fit")``                          open a :class:`Run` (``on_pretrain_routine_start``)
sanity-check validation                         nothing (not an epoch's validation; it learns
                                                which metrics are validation metrics)
``on_train_start``                              ``ready`` (params now known), ``train_start``
                                                (a resumed fit: epoch and step go on from the
                                                checkpoint's)
``on_train_epoch_start``                        checkpoints written since (``model_save``), a
                                                learning-rate change, ``epoch_start`` (a fit
                                                resumed mid-epoch has none: at its first batch)
``on_train_batch_start`` / ``_end``             ``batch_start`` / ``batch_end`` (``loss`` and
                                                the module's step metrics, as floats)
``on_before_zero_grad``                         ``zero_grad``
``on_before_optimizer_step``                    ``optimizer_step`` (``step`` counts these: an
                                                accumulating batch has none)
the epoch's ``on_validation_start``              ``train_epoch_end`` (the epoch's training
(the last batch's, or after a stop that         metrics, computed now), then
Lightning honours: ``min_epochs`` met)          ``run.validation()`` (``val_*`` metrics);
                                                a mid-epoch one (``val_check_interval < 1``)
                                                is not reported
``on_train_epoch_end``                          ``train_epoch_end`` if no validation ran,
                                                checkpoints written at ``on_validation_end``,
                                                ``epoch_end`` (training metrics, and the
                                                ``val_*`` of its latest validation, a
                                                mid-epoch one's too, if it validated)
``on_train_end``                                last checkpoints, ``train_end``
``teardown(stage="fit")``                       ``teardown``
``on_exception``                                ``teardown`` carrying the error
``trainer.validate`` / ``test`` / ``predict``   a :class:`Validation` (metrics as logged) /
                                                a :class:`Prediction` (``predict_step``'s
                                                outputs at ``on_predict_batch_end``)
==============================================  ===============================================

Logs are floats read from ``trainer.callback_metrics`` (a batch's are what it would hold, read
from Lightning's results without its recomputing every metric; their ``loss`` is the step's,
not Lightning's divided by ``accumulate_grad_batches``). Validation metrics are told from
training ones by what the validation loop logged (learnt at each validation's end, the sanity
check's included); inside a fit they are named ``val_*`` (``val_loss`` stays, ``acc`` becomes
``val_acc``, ``val/x`` becomes ``val_x``). ``loss`` is added from ``train_loss`` (or
``train/loss``) when the module logs no ``loss``. Learning rates (``lr``, or ``lr_0``,
``lr_1``... over every optimizer's parameter groups) are compared at each batch's and epoch's
start: a change is ``on_params_update``.

``ModelCheckpoint`` is always moved last by Lightning and writes in its own
``on_train_epoch_end``, after ours: its file is reported (``on_model_save``, with the path) at
the next hook of ours, once it exists (the next epoch's start, or ``on_train_end``).

Lightning dispatches a hook only if it is callable, at about the cost of our work in it: a
per-batch hook nobody needs is ``None`` on the instance. ``on_before_backward`` and
``on_after_backward`` always; the training batch's others for an epoch when, at its start
(after ``on_train_epoch_start``'s subscribers), nobody listens to what they emit (steps taken
unheard are counted from ``trainer.global_step``; an unheard batch start is kept at its end);
a validation's, test's or prediction's batch hooks likewise at its start. A subscription made
in between is heard from the next start. ``on_train_batch_end`` stays: a stop asked outside
any hook stops the fit after the batch.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

import lightning.pytorch as pl

from eventhooks import EventBus
from eventhooks import events as ev
from eventhooks.events import Event
from eventhooks.lifecycle import Prediction, Run, Validation

from . import _lightning_logs as lg

__all__ = ["LightningCallback"]

_UNUSED = ("on_before_backward", "on_after_backward")  # pl.Callback's, called every batch
_TRAIN = ("on_train_batch_start", "on_before_zero_grad", "on_before_optimizer_step")
_EVAL = tuple(f"on_{kind}_batch_{end}" for kind in ("validation", "test", "predict")
              for end in ("start", "end"))  # fmt: skip


class LightningCallback(pl.Callback):
    """Emits Lightning's moments on ``bus``: ``Trainer(callbacks=[LightningCallback(bus)])``.

    ``fit`` is a run: payloads carry the ``Trainer`` as ``source``, its ``global_rank`` and
    ``world_size``, and ``params`` (``epochs``/``max_epochs``, ``steps``/``steps_per_epoch``
    when the loader has a length, ``accumulate_grad_batches``).

    ``bus.request_stop()`` sets ``trainer.should_stop`` after the hook that asked (Lightning
    ignores it before ``min_epochs``, as for its own callbacks). Under DDP the ranks decide at
    each epoch's end, together: a stop asked on any rank stops every rank after that epoch.

    Any failure of the fit (a subscriber, ``training_step``, the data) reaches ``teardown``
    through Lightning's ``on_exception``, and Lightning re-raises it unchanged (a
    ``KeyboardInterrupt`` is Lightning's ``SystemExit(1)``; ``teardown`` carries the
    interrupt). The sanity-check validation is not reported.
    """

    def __init__(self, bus: EventBus) -> None:
        super().__init__()
        if not isinstance(bus, EventBus):
            raise TypeError(f"LightningCallback needs an eventhooks.EventBus, got {bus!r}")
        self.bus = bus
        self.run: Run | None = None  # the fit in progress
        self._val: Validation | None = None
        self._predict: Prediction | None = None
        self._val_keys: set[str] = set()  # metric names that validation logs
        self._before_val: dict[str, Any] = {}
        self._saved: dict[str, int] = {}  # checkpoint path -> mtime reported
        self._lrs: dict[str, float] = {}
        self._epoch_train: dict[str, float] | None = None  # at this epoch's validation's start
        self._epoch_val: dict[str, float] | None = None  # at its end: none, none validated
        self._batches = self._starts = self._steps = True  # this epoch's (``_decide``)
        self._steps_at = 0  # trainer.global_step when the steps stopped being counted
        cls, ours = type(self), LightningCallback  # hooks a subclass overrides stay on
        self._own = {name for name in (*_UNUSED, *_TRAIN, *_EVAL)
                     if inspect.unwrap(getattr(cls, name)) is getattr(ours, name)}  # fmt: skip
        self._switch(False, *_UNUSED)

    # -- helpers ------------------------------------------------------------------------------

    def _switch(self, on: bool, *hooks: str) -> None:
        """Lightning skips a hook not callable: one off is None here, one on the class's."""
        for name in hooks:
            if on:
                self.__dict__.pop(name, None)
            elif name in self._own:
                self.__dict__[name] = None

    def _decide(self, trainer: pl.Trainer) -> None:
        """At an epoch's start, what its batches need by who listens now (``check_order``:
        everything). Steps not counted are added at the next start from ``global_step``."""
        self._steps_at = trainer.global_step
        hear = self.bus.listening
        zero = hear(ev.on_before_zero_grad)
        self._steps = zero or hear(ev.on_params_update) or hear(ev.optimizer_step)
        self._starts = self._steps or hear(ev.on_model_save) or hear(ev.on_train_batch_start)
        self._batches = self._starts or hear(ev.on_train_batch_end)
        self._switch(self._starts, "on_train_batch_start")
        self._switch(self._steps, "on_before_optimizer_step")
        self._switch(zero, "on_before_zero_grad")

    def _eval_hooks(self, kind: str, *events: Event[Any]) -> None:
        """At a validation's, test's or prediction's start: its batch hooks, if heard now."""
        heard = any(map(self.bus.listening, events))
        self._switch(heard, f"on_{kind}_batch_start", f"on_{kind}_batch_end")

    def _live(self) -> Run | None:
        run = self.run
        return run if run is not None and not run.closed else None

    def _check_stop(self, trainer: pl.Trainer, *, epoch_end: bool = False) -> None:
        """A stop request becomes ``trainer.should_stop``: at once on one process; under DDP
        at the epoch's end, decided by every rank together (any rank asking stops all), so
        that no rank stops alone and leaves the others waiting in a collective."""
        if not (epoch_end or self.bus.stop_requested) or self._live() is None:
            return  # (per batch, with no request: nothing to do, and the hot path)
        if trainer.world_size == 1:
            if self.bus.stop_requested:
                trainer.should_stop = True
        elif epoch_end:  # every rank comes here at the same point of the epoch
            if trainer.strategy.reduce_boolean_decision(self.bus.stop_requested, all=False):
                trainer.should_stop = True

    def _val_logs(self, trainer: pl.Trainer, fit: bool) -> dict[str, float]:
        logs = lg.floats(trainer.callback_metrics, self._val_keys)
        return {lg.val_name(k): v for k, v in logs.items()} if fit else logs

    def _open_epoch(self, trainer: pl.Trainer, run: Run) -> bool:
        """Whether an epoch is open; one is opened here if Lightning skipped its start (a fit
        resumed from a checkpoint written mid-epoch, or at its last batch)."""
        if not run.in_epoch and run.allows(ev.on_train_epoch_start):
            self._epoch_start(trainer, run)
        return run.in_epoch

    def _report_saves(self, trainer: pl.Trainer) -> None:
        """``on_model_save`` for each ModelCheckpoint file written since the last look."""
        run = self._live()
        if run is not None and self.bus.listening(ev.on_model_save, epoch=run.epoch):
            for path in lg.checkpoints(trainer, self._saved):
                run.model_save(path, run.logs)

    def _first_rates(self, trainer: pl.Trainer) -> dict[str, float]:
        self._lrs = lg.learning_rates(trainer)
        return self._lrs

    def _lr_changed(self, trainer: pl.Trainer, run: Run) -> None:
        if self.bus.listening(ev.on_params_update):
            rates = lg.learning_rates(trainer)
            if rates != self._lrs:
                self._lrs = rates
                run.params_update(rates)

    # -- fit ----------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._val_keys, self._saved, self._lrs = set(), {}, {}
            self._switch(True, *_TRAIN)
            self._batches = self._starts = self._steps = True
            self._val = None
            self.run = Run(self.bus, **lg.context(trainer))
            self.run.open()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (run := self._live()) is None:
            return
        run.initial_epoch = trainer.current_epoch  # a resumed fit goes on from its checkpoint's
        run.step = trainer.global_step  # epoch and optimizer step, as Lightning's loggers do
        run.ready(params=lg.params(trainer))
        run.first_hyperparams = partial(self._first_rates, trainer)  # announced at the start
        run.train_start()
        self._check_stop(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (run := self._live()) is not None:
            self._epoch_start(trainer, run)

    def _epoch_start(self, trainer: pl.Trainer, run: Run) -> None:
        if not self._steps:  # not counted last epoch
            run.step += trainer.global_step - self._steps_at
        self._report_saves(trainer)
        if run.epoch is not None:
            self._lr_changed(trainer, run)
        self._epoch_train = self._epoch_val = None
        run.epoch_start(trainer.current_epoch)
        self._decide(trainer)
        self._check_stop(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._starts or (run := self._live()) is None or not self._open_epoch(trainer, run):
            return
        self._report_saves(trainer)  # a checkpoint every N training steps
        run.batch_start(batch_idx)
        self._lr_changed(trainer, run)  # a step-wise scheduler stepped after the last batch

    def on_before_zero_grad(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if (run := self._live()) is not None and run.in_batch:
            run.zero_grad()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if self._steps and (run := self._live()) is not None and run.in_batch:
            run.optimizer_step()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if self._batches and (run := self._live()) is not None and self._open_epoch(trainer, run):
            if not self._starts:  # nobody hears the batch's start: begun here, unheard
                run.batch_start(batch_idx)
            run.batch_end(partial(lg.batch_logs, trainer, self._val_keys, outputs))  # if heard
        self._check_stop(trainer)  # always on: a stop asked from outside any hook

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (run := self._live()) is None or not self._open_epoch(trainer, run):
            return
        train = self._epoch_train
        if run.allows(ev.on_train_epoch_end):  # this epoch did not validate
            train = lg.epoch_train_logs(trainer, self._val_keys)
            run.train_epoch_end(train)
        self._report_saves(trainer)  # saved at on_validation_end (validation every n epochs)
        if train is None:
            train = lg.epoch_train_logs(trainer, self._val_keys)
        run.epoch_end({**train, **(self._epoch_val or {})})  # no val_* without a validation
        self._check_stop(trainer, epoch_end=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (run := self._live()) is None:
            return
        self._report_saves(trainer)
        run.train_end()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and (run := self._live()) is not None:
            run.finish()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._val = self._predict = None
        if (run := self._live()) is not None:
            run.close(exception)

    # -- validation, test and predict ---------------------------------------------------------

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before_val = dict(trainer.callback_metrics)
        self._eval_hooks("validation")  # on again below for a reported validation heard
        if trainer.sanity_checking:
            return
        run = self._live()
        if run is None:  # trainer.validate: a session of its own, metrics as logged
            self._val_keys = set()
            self._val = Validation(self.bus, **lg.context(trainer))
        elif self._open_epoch(trainer, run) and (
            trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            or (trainer.should_stop and getattr(trainer.fit_loop, "_can_stop_early", True))
        ):  # the epoch's validation: its training part ended (a stop asked before min_epochs
            # does not end it: Lightning validates as usual and goes on)
            self._epoch_train = lg.epoch_train_logs(trainer, self._val_keys)
            if run.allows(ev.on_train_epoch_end):
                run.train_epoch_end(self._epoch_train)
            self._report_saves(trainer)
            self._val = run.validation()
        else:  # mid-epoch (val_check_interval < 1), or outside the epochs: not reported
            return
        self._val.open()
        self._eval_hooks("validation", ev.on_val_batch_start, ev.on_val_batch_end)
        self._check_stop(trainer)

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if self._val is not None:
            self._val.batch_start()

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if self._val is not None:
            logs = None
            if self.bus.listening(ev.on_val_batch_end, batch=self._val.batch):
                logs = lg.output_logs(outputs)
            self._val.batch_end(logs)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_keys |= lg.logged_in_validation(trainer, self._before_val)
        if trainer.sanity_checking:
            return
        val, self._val = self._val, None
        in_fit = self._live() is not None
        if in_fit:  # one not reported (mid-epoch) still gives the epoch its val_* (the latest)
            self._epoch_val = self._val_logs(trainer, fit=True)
        if val is not None:  # in a fit, the epoch's names without ``val_``, as Keras'
            val.end(  # on_test_end has them (``val_loss`` -> ``loss``); alone, as logged
                {k.removeprefix("val_"): v for k, v in self._epoch_val.items()}
                if in_fit and self._epoch_val is not None else self._val_logs(trainer, False)
            )  # fmt: skip
            self._check_stop(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before_val, self._val_keys = dict(trainer.callback_metrics), set()
        self._val = Validation(self.bus, **lg.context(trainer)).open()
        self._eval_hooks("test", ev.on_val_batch_start, ev.on_val_batch_end)

    on_test_batch_start = on_validation_batch_start
    on_test_batch_end = on_validation_batch_end

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_keys |= lg.logged_in_validation(trainer, self._before_val)
        val, self._val = self._val, None
        if val is not None:
            val.end(self._val_logs(trainer, fit=False))

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._predict = Prediction(self.bus, **lg.context(trainer)).open()
        self._eval_hooks("predict", ev.on_predict_batch_start, ev.on_predict_batch_end)

    def on_predict_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if self._predict is not None:
            self._predict.batch_start()

    def on_predict_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if self._predict is not None:
            self._predict.batch_end(outputs)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        predict, self._predict = self._predict, None
        if predict is not None:
            predict.end()
