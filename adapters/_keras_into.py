"""Into Keras: a ``keras.callbacks.Callback`` that emits every moment Keras exposes on a bus.

Every hook is overridden, on purpose: Keras dispatches the batch-end hooks of callbacks that
do not override them to a thread pool, where events could arrive out of order and off the
calling thread. A callback that overrides them makes Keras call the whole list in order.
"""

from __future__ import annotations

from typing import Any

import keras  # type: ignore[import-untyped]

from eventhooks import EventBus, events

# Bound once: the Event objects are the bus's fastest lookup keys.
_TRAIN_START = events.on_train_start
_EPOCH_START = events.on_train_epoch_start
_BATCH_START = events.on_train_batch_start
_BATCH_END = events.on_train_batch_end
_TRAIN_EPOCH_END = events.on_train_epoch_end
_VAL_START = events.on_val_start
_VAL_BATCH_START = events.on_val_batch_start
_VAL_BATCH_END = events.on_val_batch_end
_VAL_END = events.on_val_end
_FIT_EPOCH_END = events.on_fit_epoch_end
_TRAIN_END = events.on_train_end
_TEARDOWN = events.teardown
_PREDICT_START = events.on_predict_start
_PREDICT_BATCH_START = events.on_predict_batch_start
_PREDICT_BATCH_END = events.on_predict_batch_end
_PREDICT_END = events.on_predict_end

_EMPTY: dict[str, float] = {}


class KerasCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Emits Keras' moments on ``bus``: pass it in ``callbacks=`` to fit, evaluate, predict.

    Payloads carry the Keras model as ``source`` and Keras' ``params``. Batch payloads carry
    the epoch, which Keras does not give its batch hooks. ``bus.request_stop()`` sets
    ``model.stop_training``, so ``fit`` stops after the current batch.

    Two moments Keras has no hook for are emitted where they happen, because subscribers
    written for other loops count on them:

    - ``on_train_epoch_end`` (``train_epoch_end=True``): after the last training batch of an
      epoch, just before validation starts (or before ``on_epoch_end`` when the epoch has no
      validation); its logs are the epoch's training metrics.
    - ``teardown`` (``teardown=True``): right after ``on_train_end``. Keras calls no hook
      when ``fit`` raises; run ``fit`` inside :func:`keras_run` (or use :func:`fit`) to get
      ``teardown`` with the error then.

    The same callback may serve a ``predict`` or ``evaluate`` made *during* a ``fit`` (from
    a subscriber or another Keras callback). That run is nested: its events come with its
    own model and ``params`` and ``epoch=None``, as for a standalone call, and are not taken
    for the fit's validation; the fit's epoch, model, ``params`` and open state go on. The
    canonical order has no place for a run inside a fit, so such a trace is canonical only
    once the nested run's events are taken out.
    """

    def __init__(
        self, bus: EventBus, *, train_epoch_end: bool = True, teardown: bool = True
    ) -> None:
        super().__init__()
        self.bus = bus
        self.train_epoch_end = train_epoch_end
        self.teardown = teardown
        #: The epoch ``fit`` is in (absolute, 0-based); ``None`` outside ``fit`` (before its
        #: first epoch, and again once it ended: ``teardown`` carries the last epoch).
        self.epoch: int | None = None
        #: Whether a ``fit`` began and has not ended (normally or through :meth:`abort`).
        self.fitting = False
        self._source: Any = None
        self._emit = bus.emit
        self._listening = bus.listening
        self._epoch_open = False
        self._began = False  # whether any fit reached on_train_begin (see fit())
        # The fit's model and params, kept while a nested run (predict/evaluate called during
        # the fit) has Keras' set_model/set_params replace them.
        self._fit_model: Any = None
        self._fit_source: Any = None
        self._fit_params: dict[str, Any] | None = None
        self._shadowed = False  # set_model was called during a fit: a nested run took over
        self._nested = 0  # how many nested runs have begun and not ended
        self._outer: list[tuple[Any, Any, Any]] = []  # what a run nested in a nested run hid
        self._train_logs: dict[str, float] = _EMPTY
        self._last_logs: dict[str, float] = _EMPTY

    def set_model(self, model: Any) -> None:
        """Keras calls this once per ``fit``/``evaluate``/``predict`` call (new CallbackList).

        During a ``fit`` it comes from a nested ``predict``/``evaluate`` (made by a subscriber
        or another callback): the fit's state is kept, and the run that follows is nested.
        A ``fit`` that raised outside :func:`keras_run` looks the same (nobody announced its
        end): it is forgotten at the next ``on_train_begin``, and until then an ``evaluate``
        is nested too, so it is not taken for that fit's validation.
        """
        if self.fitting and self._nested:  # a run nested in a nested run: keep the outer's
            self._outer.append((self._model, self._source, self.params))
        super().set_model(model)
        # Keras' ``model`` property unwraps DDP on every access; do it once here.
        self._source = self.model
        if self.fitting:
            self._shadowed = True
        else:
            self.epoch, self._epoch_open = None, False
            self._train_logs = self._last_logs = _EMPTY

    def _back_to_fit(self) -> None:
        """The nested runs are over (or died): the fit's model and params are back."""
        self._shadowed, self._nested = False, 0
        self._outer.clear()
        super().set_model(self._fit_model)
        self._source, self.params = self._fit_source, self._fit_params

    def _nested_begin(self) -> bool:
        """Called by the begin hooks of evaluate and predict: whether this run is nested."""
        if self._shadowed:
            self._nested += 1
        return self._nested > 0

    def _nested_end(self) -> None:
        """Called after the end hooks of evaluate and predict, once their event is out."""
        if self._nested:
            self._nested -= 1
            if not self._nested:
                self._back_to_fit()
            elif self._outer:
                model, self._source, self.params = self._outer.pop()
                super().set_model(model)

    def _stop_if_asked(self) -> None:
        # Called by the fit's hooks once their event is out: nested runs that the event's
        # subscribers made are over by now, also those that failed and were caught.
        if self._shadowed:
            self._back_to_fit()
        if self.bus.stop_requested and self._source is not None:
            self._source.stop_training = True

    # -- fit ---------------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.fitting, self.epoch, self._epoch_open, self._began = True, None, False, True
        self._train_logs = self._last_logs = _EMPTY
        # A new fit: whatever an abandoned one left (its nested runs included) is forgotten.
        self._fit_model, self._fit_source, self._fit_params = self._model, self._source, self.params
        self._shadowed, self._nested = False, 0
        self._outer.clear()
        # Always emitted, even unheard: the bus forgets the last run's stop request here.
        self._emit(_TRAIN_START, logs=logs or _EMPTY, source=self._source, params=self.params)
        self._stop_if_asked()

    # The fit's own hooks: a nested run never calls them, so when one comes every nested run
    # is over, or died (its error caught by whoever made it), and the fit has its state back.

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._shadowed:
            self._back_to_fit()
        self.epoch, self._epoch_open, self._train_logs = epoch, True, _EMPTY
        if self._listening(_EPOCH_START):
            self._emit(
                _EPOCH_START, epoch=epoch, logs=logs or _EMPTY, source=self._source,
                params=self.params,
            )  # fmt: skip
        self._stop_if_asked()

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._shadowed:
            self._back_to_fit()
        if self._listening(_BATCH_START):
            self._emit(
                _BATCH_START, batch=batch, epoch=self.epoch, logs=logs or _EMPTY,
                source=self._source, params=self.params,
            )  # fmt: skip
        self._stop_if_asked()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._shadowed:
            self._back_to_fit()
        logs = logs or _EMPTY
        self._train_logs = logs
        if self._listening(_BATCH_END):
            self._emit(
                _BATCH_END, batch=batch, epoch=self.epoch, logs=logs, source=self._source,
                params=self.params,
            )  # fmt: skip
        self._stop_if_asked()

    def _close_train_epoch(self) -> None:
        """Emit the synthesized ``on_train_epoch_end`` once per epoch."""
        self._epoch_open = False
        if self.train_epoch_end and self._listening(_TRAIN_EPOCH_END):
            self._emit(
                _TRAIN_EPOCH_END, epoch=self.epoch, logs=self._train_logs,
                source=self._source, params=self.params,
            )  # fmt: skip
        self._stop_if_asked()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._shadowed:
            self._back_to_fit()
        if self._epoch_open:
            self._close_train_epoch()
        logs = logs or _EMPTY
        self._last_logs = logs
        if self._listening(_FIT_EPOCH_END):
            self._emit(
                _FIT_EPOCH_END, epoch=epoch, logs=logs, source=self._source, params=self.params
            )
        self._stop_if_asked()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._shadowed:
            self._back_to_fit()
        logs = logs or _EMPTY
        self._last_logs = logs
        self._emit(_TRAIN_END, epoch=self.epoch, logs=logs, source=self._source, params=self.params)
        # Only now: a subscriber failing in on_train_end leaves the fit open for abort().
        self.fitting = False
        epoch, self.epoch = self.epoch, None
        if self._shadowed:
            self._back_to_fit()
        if self.teardown:
            self._emit(_TEARDOWN, epoch=epoch, logs=logs, source=self._source, params=self.params)

    def abort(self, exc: BaseException, *, always: bool = False) -> None:
        """Emit ``teardown`` with ``exc`` if a ``fit`` is running (or ``always``).

        For code that catches an exception escaping ``model.fit``: Keras calls no hook then.
        :func:`keras_run` calls this for you. A teardown subscriber failing here does not
        replace ``exc``: it is logged and added to ``exc`` as a note, so re-raise ``exc``.
        """
        if not (self.fitting or always):
            return
        if self._shadowed:  # the fit failed inside (or after) a nested run: report the fit
            self._back_to_fit()
        self.fitting, self._epoch_open = False, False
        epoch, self.epoch = self.epoch, None
        if self.teardown:
            # A teardown subscriber that fails too becomes a note on exc, which goes on.
            self.bus.emit_teardown(
                exc, epoch=epoch, logs=self._last_logs, source=self._source, params=self.params
            )

    # -- validation and evaluate -------------------------------------------------------------

    def _validating(self) -> bool:
        """Whether this evaluate is the fit's validation (not standalone, not nested)."""
        return self.fitting and not self._nested

    def _val_epoch(self) -> int | None:
        return self.epoch if self._validating() else None

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not self._nested_begin() and self._epoch_open and self.fitting:
            self._close_train_epoch()
        validating = self._validating()
        if self._listening(_VAL_START):
            self._emit(
                _VAL_START, epoch=self._val_epoch(), logs=logs or _EMPTY, source=self._source,
                params=self.params,
            )  # fmt: skip
        self._val_hook_done(validating)

    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        validating = self._validating()
        if self._listening(_VAL_BATCH_START):
            self._emit(
                _VAL_BATCH_START, batch=batch, epoch=self._val_epoch(), logs=logs or _EMPTY,
                source=self._source, params=self.params,
            )  # fmt: skip
        self._val_hook_done(validating)

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        validating = self._validating()
        if self._listening(_VAL_BATCH_END):
            self._emit(
                _VAL_BATCH_END, batch=batch, epoch=self._val_epoch(), logs=logs or _EMPTY,
                source=self._source, params=self.params,
            )  # fmt: skip
        self._val_hook_done(validating)

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        validating = self._validating()
        if self._listening(_VAL_END):
            self._emit(
                _VAL_END, epoch=self._val_epoch(), logs=logs or _EMPTY, source=self._source,
                params=self.params,
            )  # fmt: skip
        self._val_hook_done(validating)
        self._nested_end()

    def _val_hook_done(self, validating: bool) -> None:
        # A stop request outlives a run until the next one starts: only a fit obeys it,
        # so a later evaluate or predict is not cut short by an old request. A run nested in
        # a fit leaves it to the fit's next hook. Told before the emit: a nested run that a
        # subscriber of this event started and that died (its error caught) is over now,
        # and _stop_if_asked gives the fit its state back.
        if validating:
            self._stop_if_asked()

    # -- predict -----------------------------------------------------------------------------

    def on_predict_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._nested_begin()
        if self._listening(_PREDICT_START):
            self._emit(_PREDICT_START, logs=logs or _EMPTY, source=self._source, params=self.params)

    def on_predict_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._listening(_PREDICT_BATCH_START):
            self._emit(
                _PREDICT_BATCH_START, batch=batch, logs=logs or _EMPTY, source=self._source,
                params=self.params,
            )  # fmt: skip

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._listening(_PREDICT_BATCH_END):
            logs = logs or _EMPTY
            # Keras flattens dict outputs into the logs themselves: keep them whole.
            outputs = logs["outputs"] if "outputs" in logs else dict(logs)
            self._emit(
                _PREDICT_BATCH_END, batch=batch, outputs=outputs, source=self._source,
                params=self.params,
            )  # fmt: skip

    def on_predict_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._listening(_PREDICT_END):
            self._emit(_PREDICT_END, logs=logs or _EMPTY, source=self._source, params=self.params)
        self._nested_end()

    # Keras' legacy batch hooks: the hooks above replace them. Overridden so that Keras never
    # moves this callback to its thread pool.
    def on_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Not called by Keras 3's own loops (``on_train_batch_begin`` covers it)."""

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Not called by Keras 3's own loops (``on_train_batch_end`` covers it)."""
