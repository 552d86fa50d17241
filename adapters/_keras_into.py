"""Into Keras: a ``keras.callbacks.Callback`` translating Keras' hooks onto the lifecycle.

Keras' hooks map one to one onto :mod:`eventhooks.lifecycle`, which keeps the order, the
counters and the stop requests, and emits what Keras has no hook for:

==========================================  ==========================================
Keras                                       lifecycle
==========================================  ==========================================
``on_train_begin``                          open a :class:`Run` (``on_pretrain_routine_
                                            start``/``_end``: Keras prepared the fit by
                                            now), ``train_start``
``on_epoch_begin`` / ``on_epoch_end``       ``epoch_start`` / ``epoch_end`` (fills
                                            ``on_train_epoch_end`` first)
``on_train_batch_begin`` / ``_end``         ``batch_start`` / ``batch_end``
``on_test_*`` inside ``fit``                ``run.validation()`` (fills
                                            ``on_train_epoch_end`` first)
``on_train_end``                            ``finish``: ``on_train_end``, ``teardown``
the optimizer's ``learning_rate``           ``on_params_update`` ``{"learning_rate": ...}``
                                            after ``on_train_start``, then when it
                                            changed: checked as the epoch's training
                                            begins (its first batch), after its last
                                            step, and at its end
``on_test_*`` / ``on_predict_*`` otherwise  a :class:`Validation` / :class:`Prediction`
==========================================  ==========================================

The learning rate is read (``float(ops.convert_to_numpy(optimizer.learning_rate))``, as Keras'
``TensorBoard`` callback reads it) only when someone listens to ``on_params_update``. A
``LearningRateScheduler`` sets it in ``on_epoch_begin``, before or after this callback: by the
epoch's first batch it has, and the change is that epoch's. A ``LearningRateSchedule`` changes
it every step: it is announced once an epoch, after the epoch's last step (when Keras knows the
epoch's steps), so an epoch's rate is the one at its end, as Keras' ``TensorBoard`` writes it.

Every hook is overridden, on purpose: Keras dispatches the batch-end hooks of callbacks that
do not override them to a thread pool, where events could arrive out of order and off the
calling thread. A callback that overrides them makes Keras call the whole list in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import keras  # type: ignore[import-untyped]

from eventhooks import EventBus, events
from eventhooks.lifecycle import Prediction, Run, Validation

S = TypeVar("S", Run, Validation, Prediction)
Logs = dict[str, Any] | None


class KerasCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Emits Keras' moments on ``bus``: pass it in ``callbacks=`` to fit, evaluate, predict.

    Payloads carry the Keras model as ``source`` and Keras' ``params``; batch payloads carry
    the epoch, which Keras does not give its batch hooks. ``bus.request_stop()`` sets
    ``model.stop_training``, so ``fit`` stops after the current batch. Keras has no hook for
    ``on_pretrain_routine_start``/``_end``, ``on_train_epoch_end`` (the training part of an
    epoch ended: its logs are the epoch's training metrics) or ``teardown``: the lifecycle
    emits them where they belong. Keras calls no hook when ``fit`` raises: run ``fit`` inside
    :func:`keras_run` (or use :func:`fit`) to get ``teardown`` with the error then.

    The same callback may serve a ``predict`` or ``evaluate`` made *during* a ``fit`` (from a
    subscriber or another Keras callback): Keras hands the callback that call's model and
    ``params`` (``set_model``), and the call is a session of its own, with ``epoch=None`` as a
    standalone call, not taken for the fit's validation; the fit goes on undisturbed.
    """

    def __init__(self, bus: EventBus) -> None:
        super().__init__()
        self.bus = bus
        self._run: Run | None = None  # the fit in progress
        # The sessions open through this callback, innermost last, each with the model and
        # params Keras gave the callback for it: the fit's Run first, then evaluate/predict.
        self._sessions: list[tuple[Any, Any, Any]] = []
        # Keras called set_model since the last begin hook: it built a new CallbackList, so
        # the evaluate that begins next is a call of its own, not the fit's validation.
        self._fresh = False
        self._ahead: Run | None = None  # a run that fit() opened before Keras prepared it
        self._rate_due = False  # the epoch's first batch checks the learning rate

    @property
    def epoch(self) -> int | None:
        """The epoch ``fit`` is in (absolute, 0-based); ``None`` outside ``fit`` (before its
        first epoch, and again once it ended: ``teardown`` carries the last epoch)."""
        return self._run.epoch if self._run is not None else None

    @property
    def fitting(self) -> bool:
        """Whether a ``fit`` began and has not ended (normally or through :meth:`abort`)."""
        return self._run is not None

    def set_model(self, model: Any) -> None:
        """Keras calls this once per ``fit``/``evaluate``/``predict`` call (new CallbackList)."""
        super().set_model(model)
        self._fresh = True

    def _on(self, session: S) -> S:
        """Back on ``session``: the sessions above it died (their call failed between two
        hooks, and whoever made it caught the error), and Keras' model and params are its
        again."""
        stack = self._sessions
        while stack and stack[-1][0] is not session:
            stack.pop()
        if stack:
            _, model, self.params = stack[-1]
            if self._model is not model:
                super().set_model(model)
        self._fresh = False
        return session

    def _innermost(self, kind: type[S]) -> S | None:
        for session, _, _ in reversed(self._sessions):
            if isinstance(session, kind):
                return self._on(session)
        return None

    def _do(self, session: S, moment: Callable[..., object], *args: Any) -> None:
        """``moment(*args)`` of ``session``; then its subscribers' sessions are over, and a stop
        request reaches the fit. A moment that fails ends the session: Keras aborts the call
        (a fit's run stays for :meth:`abort`)."""
        try:
            moment(*args)
        except BaseException:
            self._drop(session)
            raise
        self._on(session)
        if self._run is not None and self.bus.stop_requested:
            self._run.context.source.stop_training = True

    def _drop(self, session: S) -> None:
        """``session`` is over: back on the session it was nested in, if any."""
        self._on(session)
        if self._sessions:
            self._sessions.pop()
        if self._sessions:
            self._on(self._sessions[-1][0])

    def _begin(self, session: S) -> None:
        """A session of its own (evaluate or predict), with the model and params Keras set."""
        self._sessions.append((session, self._model, self.params))
        self._do(session, session.open)

    def _fit(self) -> Run | None:
        return self._on(self._run) if self._run is not None else None

    def _rate(self) -> dict[str, float]:
        """The fit's optimizer's learning rate, read only when someone listens for it."""
        optimizer = getattr(self._run.context.source if self._run else None, "optimizer", None)
        if not isinstance(optimizer, keras.optimizers.Optimizer) or not self.bus.listening(
            events.on_params_update
        ):
            return {}
        return {"learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate))}

    def _check_rate(self, run: Run) -> None:
        """``on_params_update`` if the learning rate changed since it was last announced."""
        self._do(run, run.params_changed, self._rate)

    # -- fit ---------------------------------------------------------------------------------

    def on_train_begin(self, logs: Logs = None) -> None:
        # A new fit: one that failed unannounced (outside keras_run) is forgotten here.
        run, self._ahead = self._ahead, None
        if run is None or run.closed:
            run = Run(self.bus, source=self.model, params=self.params).open()
        else:
            run.update(source=self.model, params=self.params)
        self._run, self._sessions = run, [(run, self._model, self.params)]
        run.first_hyperparams = self._rate  # announced after on_train_start
        self._do(run, run.train_start)

    def on_epoch_begin(self, epoch: int, logs: Logs = None) -> None:
        if (run := self._fit()) is not None:
            self._do(run, run.epoch_start, epoch)
            # Other callbacks' on_epoch_begin (a LearningRateScheduler's) may come after this
            # one: the rate is checked at the epoch's first batch, when all of them have run.
            self._rate_due = True

    def on_train_batch_begin(self, batch: int, logs: Logs = None) -> None:
        if (run := self._fit()) is not None:
            self._do(run, run.batch_start, batch)
            if self._rate_due:
                self._rate_due = False
                self._check_rate(run)

    def on_train_batch_end(self, batch: int, logs: Logs = None) -> None:
        if (run := self._fit()) is not None:
            run.batch = batch  # Keras' last step of the batch (steps_per_execution > 1)
            if batch + 1 == (self.params or {}).get("steps"):  # the epoch's last step: its rate
                self._check_rate(run)  # at its end, as Keras' TensorBoard reads it (a schedule)
            self._do(run, run.batch_end, logs)

    def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
        if (run := self._fit()) is not None:
            self._rate_due = False
            self._do(run, run.epoch_end, logs)
            self._check_rate(run)  # changed at the epoch's end (ReduceLROnPlateau): the next's

    def on_train_end(self, logs: Logs = None) -> None:
        if (run := self._fit()) is None:
            return
        run.logs = dict(logs or run.logs)  # as Keras' other callbacks left them
        try:
            run.finish()  # a subscriber failing at on_train_end: teardown carries its error
        finally:
            self._on(run)
            self._run, self._sessions = None, []

    def abort(self, exc: BaseException) -> None:
        """Emit ``teardown`` with ``exc`` if a ``fit`` is running.

        For code that catches an exception escaping ``model.fit``: Keras calls no hook then.
        :func:`keras_run` calls this for you. A teardown subscriber failing here does not
        replace ``exc``: it is logged and added to ``exc`` as a note, so re-raise ``exc``.
        """
        if (run := self._fit()) is not None:
            self._run, self._sessions = None, []
            run.close(exc)

    # -- validation and evaluate -------------------------------------------------------------

    def on_test_begin(self, logs: Logs = None) -> None:
        if self._fresh or self._run is None:  # an evaluate of its own, standalone or nested
            self._begin(Validation(self.bus, source=self.model, params=self.params))
        else:  # the fit's validation: Keras passes the fit's CallbackList on, no set_model
            self._begin(self._on(self._run).validation())

    def on_test_batch_begin(self, batch: int, logs: Logs = None) -> None:
        if (val := self._innermost(Validation)) is not None:
            self._do(val, val.batch_start, batch)

    def on_test_batch_end(self, batch: int, logs: Logs = None) -> None:
        if (val := self._innermost(Validation)) is not None:
            val.batch = batch
            self._do(val, val.batch_end, logs)

    def on_test_end(self, logs: Logs = None) -> None:
        if (val := self._innermost(Validation)) is not None:
            self._do(val, val.end, logs)
            self._drop(val)

    # -- predict -----------------------------------------------------------------------------

    def on_predict_begin(self, logs: Logs = None) -> None:
        self._begin(Prediction(self.bus, source=self.model, params=self.params))

    def on_predict_batch_begin(self, batch: int, logs: Logs = None) -> None:
        if (predict := self._innermost(Prediction)) is not None:
            self._do(predict, predict.batch_start, batch)

    def on_predict_batch_end(self, batch: int, logs: Logs = None) -> None:
        if (predict := self._innermost(Prediction)) is not None:
            logs = logs or {}
            predict.batch = batch
            # Keras flattens dict outputs into the logs themselves: keep them whole.
            outputs = logs["outputs"] if "outputs" in logs else dict(logs)
            self._do(predict, predict.batch_end, outputs)

    def on_predict_end(self, logs: Logs = None) -> None:
        if (predict := self._innermost(Prediction)) is not None:
            self._do(predict, predict.end)
            self._drop(predict)

    # Keras' legacy batch hooks: the hooks above replace them. Overridden so that Keras never
    # moves this callback to its thread pool.
    def on_batch_begin(self, batch: int, logs: Logs = None) -> None:
        """Not called by Keras 3's own loops (``on_train_batch_begin`` covers it)."""

    def on_batch_end(self, batch: int, logs: Logs = None) -> None:
        """Not called by Keras 3's own loops (``on_train_batch_end`` covers it)."""
