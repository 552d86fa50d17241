"""Hugging Face ``Trainer`` adapter: its callbacks translated onto the lifecycle.

>>> from eventhooks.adapters.transformers import TransformersCallback, train   # doctest: +SKIP
>>> trainer = Trainer(model, args, callbacks=[TransformersCallback(bus)])      # doctest: +SKIP
>>> train(trainer, bus)   # trainer.train(), with a teardown even if it fails  # doctest: +SKIP

Importing this module imports ``transformers`` (an optional extra); nothing else in
eventhooks does.

=======================================  ====================================================
Hugging Face                             lifecycle (:mod:`eventhooks.lifecycle`)
=======================================  ====================================================
``on_train_begin``                       open a :class:`Run` (``source`` = the Trainer,
                                         ``params``), ``ready``, ``train_start``, the initial
                                         learning rate as ``on_params_update``
``on_epoch_begin``                       ``epoch_start``: ``floor(state.epoch)`` the first
                                         time (a resumed run), then counted
``on_step_begin``                        ``batch_start`` (the step's first micro-batch)
``on_substep_end``                       ``batch_end`` (gradient accumulation: a batch
                                         without a step); the next micro-batch, which has
                                         no hook, starts at the step's next hook
``on_pre_optimizer_step``                (that ``batch_start``; eventhooks has no "before
                                         the step" moment)
``on_optimizer_step``                    ``optimizer_step`` (``step`` = ``global_step``
                                         before it), ``on_before_zero_grad``
``on_step_end``                          ``on_params_update`` if the learning rate changed;
                                         ``batch_end``: at once if this step does not log (a
                                         stop asked there stops this step), else with the
                                         logs of its ``on_log``
``on_epoch_end``                         the training part ended: ``train_epoch_end`` once
                                         its ``on_log`` came (``control.should_log`` is set,
                                         so every epoch has its loss)
``on_prediction_step`` / ``on_evaluate``  the epoch's validation (``eval_`` dropped: ``loss``;
                                         a dict of eval datasets: one validation, ``a_loss``,
                                         ``b_loss``), then ``epoch_end`` (``val_loss``,
                                         ``val_a_loss``...); outside ``train()`` a
                                         :class:`Validation` (``eval_`` dropped)
``on_prediction_step`` / ``on_predict``  outside ``train()``: a :class:`Prediction`
``on_save``                              ``model_save(<output_dir>/checkpoint-<global_step>)``
``on_train_end``                         ``train_end`` (logs: the last epoch's and HF's
                                         summary), ``teardown``
=======================================  ====================================================

``bus.request_stop()`` sets ``control.should_training_stop``: HF stops after the current
step (the epoch still logs, evaluates and saves as configured). HF calls no callback when
training fails: :func:`train` closes the run with ``teardown`` carrying the error and re-raises
it unchanged; a plain ``trainer.train()`` that failed gets its ``teardown``, carrying
:class:`TrainNotEnded`, when the trainer is next used. A subscriber failing under
``errors="raise"`` aborts training with a :class:`~eventhooks.SubscriberError`; the callback
emits ``teardown`` with it first. A callback listed after this one that makes a step log
(``control.should_log`` in its ``on_step_end``) gives that step's batch no logs (they join the
epoch's). Evaluations HF runs inside an epoch
(``eval_strategy="steps"``) or before the first epoch (``eval_on_start``) have no place in the
canonical order: they emit nothing; a mid-epoch one's metrics (as ``val_*``) join that
epoch's logs, ``eval_on_start``'s are not reported. ``params``: ``epochs``, ``steps`` (an
epoch's batches, when the loader has a length), ``max_steps`` and HF's arguments.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from eventhooks import EventBus
from eventhooks import events as ev
from eventhooks.lifecycle import Prediction, Run, Validation

__all__ = ["TrainNotEnded", "TransformersCallback", "train"]


class TrainNotEnded(RuntimeError):
    """What the ``teardown`` of a plain ``trainer.train()`` that failed carries: HF calls no
    callback on failure, so the run is closed when the trainer is next used (another
    ``train()``, ``evaluate()``, ``predict()``). :func:`train` closes it at once, with the
    error itself."""

Session = Validation | Prediction


def _floats(logs: dict[str, Any] | None, prefix: str | None = None) -> dict[str, float]:
    """Numbers as floats, without HF's float ``epoch``; ``eval_x`` becomes ``prefix + x``."""
    out: dict[str, float] = {}
    for key, value in (logs or {}).items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if prefix is not None and key.startswith("eval_"):
            key = prefix + key[5:]
        out[key] = float(value)
    return out


def _caller(names: tuple[str, ...] = ()) -> tuple[Any, str | None]:
    """The Trainer calling back (a ``self`` up the stack), and the first of ``names`` met."""
    frame = sys._getframe(2)
    found: str | None = None
    while frame is not None:
        if found is None and frame.f_code.co_name in names:
            found = frame.f_code.co_name
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer) and (found is not None or not names):
            return owner, found
        frame = frame.f_back  # type: ignore[assignment]
    return None, found


def _in_training() -> bool:
    """Whether a ``Trainer``'s training loop is on the stack (an evaluation inside ``train()``)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "_inner_training_loop":
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _batches(loader: Any) -> int | None:
    """Batches (micro-batches) an epoch, if the training loader has a length."""
    try:
        return len(loader)
    except (TypeError, ValueError):
        return None


def _params(args: TrainingArguments, state: TrainerState, loader: Any) -> dict[str, Any]:
    def text(value: Any) -> str:
        return str(getattr(value, "value", value))

    batches = _batches(loader)  # ``steps``: an epoch's batches, as under the other adapters
    if batches is not None and state.max_steps > 0:  # max_steps shorter than an epoch
        batches = min(batches, int(state.max_steps) * max(int(args.gradient_accumulation_steps), 1))
    epochs = int(state.num_train_epochs)  # sys.maxsize: an iterable dataset, max_steps
    return {
        **({"epochs": epochs} if epochs < sys.maxsize else {}),
        **({"steps": batches, "steps_per_epoch": batches} if batches is not None else {}),
        "num_train_epochs": float(args.num_train_epochs), "max_steps": int(state.max_steps),
        "train_batch_size": int(state.train_batch_size or args.per_device_train_batch_size),
        "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
        "learning_rate": float(args.learning_rate), "logging_steps": float(args.logging_steps),
        "eval_strategy": text(args.eval_strategy), "save_strategy": text(args.save_strategy),
        "output_dir": str(args.output_dir),
    }  # fmt: skip


class TransformersCallback(TrainerCallback):
    """Emits a ``Trainer``'s moments on ``bus``: ``Trainer(callbacks=[TransformersCallback(bus)])``
    or ``trainer.add_callback(TransformersCallback(bus))``."""

    def __init__(self, bus: EventBus) -> None:
        if not isinstance(bus, EventBus):
            raise TypeError(f"TransformersCallback needs an eventhooks.EventBus, got {bus!r}")
        self.bus = bus
        self.trainer: Any = None  # the Trainer of the run (set by train(), else found)
        self.run: Run | None = None  # the training run in progress
        self.last: Run | None = None  # the last run begun (in progress or closed)
        self.session: Session | None = None  # a standalone evaluate() or predict()
        self.val: Validation | None = None  # the epoch's validation in progress
        self._loader: Any = None  # the standalone session's data loader
        self._val_loader: Any = None  # the epoch validation's current data loader
        self._pending = False  # a step's last micro-batch awaits its batch_end
        self._next = False  # a micro-batch of the step follows: its batch_start is due
        self._closing = False  # on_epoch_end came: the epoch's log and evaluation follow
        self._log_due = self._eval_due = False
        self._evals = 0  # evaluations still due at the epoch's end (one per eval dataset)
        self._logs: dict[str, float] = {}  # the epoch's logs so far
        self._summary: dict[str, float] = {}
        self._lr: float | None = None

    # -- plumbing ------------------------------------------------------------------------------

    def _live(self) -> Run | None:
        return self.run if self.run is not None and not self.run.closed else None

    def _guard(self, control: TrainerControl, moment: Any, *args: Any) -> None:
        """Run ``moment``; a failure ends the run with ``teardown`` (HF will not), a stop
        request becomes ``control.should_training_stop``."""
        try:
            moment(*args)
        except BaseException as exc:
            run, self.run, self.session, self.val = self._live(), None, None, None
            if run is not None:
                run.close(exc)
            raise
        if self.bus.stop_requested and self._live() is not None:
            control.should_training_stop = True

    def abort(self, error: BaseException) -> None:
        """``teardown`` with ``error`` for a run in progress (HF calls nothing on failure)."""
        run, self.run, self.session, self.val = self._live(), None, None, None
        if run is not None:
            run.close(error)

    def _flush(self, logs: dict[str, float] | None = None) -> None:
        """End the step's last batch; forget a micro-batch that never came (a stop)."""
        run, self._next = self._live(), False
        if self._pending and run is not None:
            self._pending = False
            run.batch_end(logs)

    def _learning_rate(self, optimizer: Any) -> float | None:
        groups = getattr(optimizer, "param_groups", None)
        return float(groups[0]["lr"]) if groups else None

    def _lr_changed(self, run: Run, optimizer: Any) -> None:
        if not self.bus.listening(ev.on_params_update):  # nobody to tell: read nothing
            return
        lr = self._learning_rate(optimizer)
        if lr is not None and lr != self._lr:
            self._lr = lr
            run.params_update({"learning_rate": lr})

    # -- training ------------------------------------------------------------------------------

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kw: Any) -> None:  # fmt: skip
        trainer = _caller()[0] or self.trainer
        self._abandoned()
        start = math.floor(state.epoch + 1e-9) if state.epoch else None
        self.run = self.last = Run(
            self.bus, source=trainer, params=_params(args, state, kw.get("train_dataloader")),
            initial_epoch=start,
            rank=max(int(args.process_index), 0), world_size=max(int(args.world_size), 1),
        )  # fmt: skip
        self._pending = self._closing = self._next = False
        self._logs, self._summary, self._lr = {}, {}, None

        def begin(run: Run) -> None:
            run.open()
            run.step = state.global_step  # a resumed run does not start at step 0
            run.train_start()
            self._lr_changed(run, kw.get("optimizer"))

        self._guard(control, begin, self.run)

    def _abandoned(self) -> None:
        """A run whose plain ``trainer.train()`` failed (no ``on_train_end``) ends now."""
        run, self.run, self.val = self._live(), None, None
        if run is not None:
            run.close(TrainNotEnded(
                "trainer.train() ended without on_train_end (it failed or was interrupted); "
                "eventhooks.adapters.transformers.train(trainer, bus) tears down with its error"
            ))  # fmt: skip

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kw: Any) -> None:  # fmt: skip
        if (run := self._live()) is not None:
            # Counted, not read off ``state.epoch``: with an iterable dataset and ``max_steps``
            # HF's epochs are fractions that may floor to the same number twice.
            epoch = math.floor((state.epoch or 0) + 1e-9) if run.epoch is None else run.epoch + 1
            self._guard(control, self._epoch_begin, run, epoch)

    def _epoch_begin(self, run: Run, epoch: int) -> None:
        self._close_epoch(run)
        self._closing, self._logs = False, {}
        run.epoch_start(epoch)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState,
                      control: TrainerControl, **kw: Any) -> None:  # fmt: skip
        if (run := self._live()) is not None:
            self._guard(control, self._step_begin, run)

    def _step_begin(self, run: Run) -> None:
        self._flush()
        run.batch_start()

    def on_substep_end(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kw: Any) -> None:  # fmt: skip
        if (run := self._live()) is not None:
            self._guard(control, self._substep_end, run)

    def _substep_end(self, run: Run) -> None:
        self._start_due(run)
        run.batch_end()
        self._next = True  # HF goes on with the next micro-batch, unless asked to stop

    def _start_due(self, run: Run) -> None:
        if self._next:
            self._next = False
            run.batch_start()

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                              control: TrainerControl, **kw: Any) -> None:  # fmt: skip
        if self._next and (run := self._live()) is not None:
            self._guard(control, self._start_due, run)

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                          control: TrainerControl, **kw: Any) -> None:  # fmt: skip
        if (run := self._live()) is not None:
            run.step = state.global_step  # HF's count (a resumed run does not start at 0)
            self._guard(control, self._optimizer_step, run)

    def _optimizer_step(self, run: Run) -> None:
        self._start_due(run)
        run.optimizer_step()
        run.zero_grad()  # HF clears the gradients right after the scheduler's step

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kw: Any) -> None:  # fmt: skip
        if (run := self._live()) is not None:
            # HF's DefaultFlowCallback (first in the list) has decided whether this step logs
            self._guard(control, self._step_end, run, kw.get("optimizer"), control.should_log)

    def _step_end(self, run: Run, optimizer: Any, logs_follow: bool) -> None:
        self._start_due(run)
        self._lr_changed(run, optimizer)
        self._pending = True  # batch_end waits for this step's on_log, if one comes
        if not logs_follow:  # none: ends now, so that a stop asked there stops this step
            self._flush()

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kw: Any) -> None:  # fmt: skip
        if (run := self._live()) is None:
            return
        control.should_log = True  # the epoch's loss, even under logging_steps
        last = getattr(run.context.source, "_globalstep_last_logged", -1)
        self._log_due = state.global_step > last
        self._eval_due = bool(control.should_evaluate)
        evals = getattr(run.context.source, "eval_dataset", None)  # a dict: one eval each
        self._evals = len(evals) if isinstance(evals, dict) and evals else 1
        self._guard(control, self._epoch_trained, run)

    def _epoch_trained(self, run: Run) -> None:
        self._flush()
        self._closing = True
        if not self._log_due:
            run.train_epoch_end(dict(self._logs))
            if not self._eval_due:
                self._close_epoch(run)

    def _close_epoch(self, run: Run) -> None:
        """The epoch's end: its validation's, then ``on_fit_epoch_end`` with all its logs."""
        self._flush()
        val, self.val = self.val, None
        if val is not None:
            val.end(val.logs)
        if run.in_epoch:
            run.epoch_end(dict(self._logs))
        self._closing = False

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kw: Any) -> None:  # fmt: skip
        logs = logs or {}
        run = self._live()
        if run is None or any(key.startswith("eval_") for key in logs):
            return  # evaluation metrics come with on_evaluate
        if "train_runtime" in logs and "loss" not in logs:  # the summary (``train_loss``...);
            self._summary = _floats(logs)  # include_num_input_tokens_seen times every log too
        else:
            self._guard(control, self._train_log, run, _floats(logs))

    def _train_log(self, run: Run, logs: dict[str, float]) -> None:
        self._logs.update(logs)
        if self._pending:
            self._flush(logs)
        elif self._closing and self._log_due:
            self._log_due = False
            run.train_epoch_end(logs)
            if not self._eval_due:
                self._close_epoch(run)

    def on_save(self, args: TrainingArguments, state: TrainerState,
                control: TrainerControl, **kw: Any) -> None:  # fmt: skip
        if (run := self._live()) is not None:
            path = os.path.join(str(args.output_dir), f"checkpoint-{state.global_step}")
            self._guard(control, self._save, run, path)

    def _save(self, run: Run, path: str) -> None:
        self._flush()
        run.model_save(path, dict(self._logs))

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kw: Any) -> None:  # fmt: skip
        if (run := self._live()) is not None:
            self._guard(control, self._train_end, run)
            self.run = None

    def _train_end(self, run: Run) -> None:
        self._close_epoch(run)
        run.train_end({**run.logs, **self._summary})
        run.finish()

    # -- evaluation and prediction -------------------------------------------------------------

    def _epoch_validation(self, run: Run | None) -> bool:
        return run is not None and self._closing and run.in_epoch

    def on_prediction_step(self, args: TrainingArguments, state: TrainerState,
                           control: TrainerControl, **kw: Any) -> None:  # fmt: skip
        self._guard(control, self._prediction_step, kw.get("eval_dataloader"))

    def _prediction_step(self, loader: Any) -> None:
        run = self._live()
        if run is not None and (self.val is None or loader is not self._val_loader):
            if not _in_training():  # evaluate() or predict() after a plain train() that failed
                self._abandoned()  # (in an epoch's evaluation too)
                run = None
            self._val_loader = loader
        session: Session | None
        if run is not None:
            self._flush()
            if not self._epoch_validation(run):
                return  # an evaluation inside an epoch: no place in the order
            if self.val is None:
                self.val = run.validation()
                self.val.open()
            session = self.val
        else:
            if self.session is None or loader is not self._loader:  # else one that failed
                trainer, kind = _caller(("evaluate", "predict"))
                made = Prediction if kind == "predict" else Validation
                self.session, self._loader = made(self.bus, source=trainer).open(), loader
            session = self.session
        session.batch_start()  # HF calls back once, after the batch: both moments here
        session.batch_end()

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, Any] | None = None, **kw: Any) -> None:  # fmt: skip
        self._guard(control, self._evaluated, metrics)

    def _evaluated(self, metrics: dict[str, Any] | None) -> None:
        run = self._live()
        if run is not None and not _in_training():
            self._abandoned()
            run = None
        if run is None:
            session = self.session
            if not isinstance(session, Validation):
                session = Validation(self.bus, source=_caller()[0]).open()
            self.session = None
            session.end(_floats(metrics, ""))
            return
        self._logs.update(_floats(metrics, "val_"))  # the epoch's logs: val_loss...
        if self._epoch_validation(run):
            if self.val is None:
                self.val = run.validation()
                self.val.open()
            # on_val_end: the evaluation's own names (``loss``), as outside train() and as
            # Keras' on_test_end
            self.val.logs = {**(self.val.logs or {}), **_floats(metrics, "")}
            self._evals -= 1
            if self._evals > 0:  # another eval dataset follows
                return
            self._eval_due = False
            if not self._log_due:
                self._close_epoch(run)

    def on_predict(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                   metrics: dict[str, Any] | None = None, **kw: Any) -> None:  # fmt: skip
        if self._live() is not None and not _in_training():
            self._abandoned()
        if self._live() is None:
            self._guard(control, self._predicted)

    def _predicted(self) -> None:
        session, self.session = self.session, None
        if not isinstance(session, Prediction):
            session = Prediction(self.bus, source=_caller()[0]).open()
        session.end()


def train(trainer: Any, bus: EventBus, **train_kwargs: Any) -> Any:
    """``trainer.train(**train_kwargs)`` heard on ``bus``, ending in ``teardown`` whatever happens.

    Adds a :class:`TransformersCallback` for ``bus`` unless the trainer has one. If training
    raises, emits ``teardown`` carrying the error (unless the callback already did: a
    subscriber's error) and re-raises it unchanged; a failure before HF's ``on_train_begin``
    gets a run of its own that is only its ``teardown``.
    """
    handler = trainer.callback_handler
    found = [c for c in handler.callbacks if isinstance(c, TransformersCallback) and c.bus is bus]
    callback = found[0] if found else TransformersCallback(bus)
    if not found:
        trainer.add_callback(callback)
    callback.trainer = trainer
    before = callback.last
    try:
        return trainer.train(**train_kwargs)
    except BaseException as exc:
        if callback.last is before:  # failed before on_train_begin: a run of its own
            Run(bus, source=trainer).close(exc)
        callback.abort(exc)
        raise
