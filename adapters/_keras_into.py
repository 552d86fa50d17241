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
        self._train_logs: dict[str, float] = _EMPTY
        self._last_logs: dict[str, float] = _EMPTY

    def set_model(self, model: Any) -> None:
        """Keras calls this once per ``fit``/``evaluate``/``predict`` call (new CallbackList).

        So a run starts here: whatever a previous ``fit`` left open (it raised outside
        :func:`keras_run`, where nobody announced its end) is forgotten, and a later
        ``evaluate`` is not taken for that fit's validation.
        """
        super().set_model(model)
        # Keras' ``model`` property unwraps DDP on every access; do it once here.
        self._source = self.model
        self.fitting, self.epoch, self._epoch_open = False, None, False
        self._train_logs = self._last_logs = _EMPTY

    def _stop_if_asked(self) -> None:
        if self.bus.stop_requested and self._source is not None:
            self._source.stop_training = True

    # -- fit ---------------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.fitting, self.epoch, self._epoch_open, self._began = True, None, False, True
        self._train_logs = self._last_logs = _EMPTY
        # Always emitted, even unheard: the bus forgets the last run's stop request here.
        self._emit(_TRAIN_START, logs=logs or _EMPTY, source=self._source, params=self.params)
        self._stop_if_asked()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch, self._epoch_open, self._train_logs = epoch, True, _EMPTY
        if self._listening(_EPOCH_START):
            self._emit(
                _EPOCH_START, epoch=epoch, logs=logs or _EMPTY, source=self._source,
                params=self.params,
            )  # fmt: skip
        self._stop_if_asked()

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._listening(_BATCH_START):
            self._emit(
                _BATCH_START, batch=batch, epoch=self.epoch, logs=logs or _EMPTY,
                source=self._source, params=self.params,
            )  # fmt: skip
        self._stop_if_asked()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
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
        logs = logs or _EMPTY
        self._last_logs = logs
        self._emit(_TRAIN_END, epoch=self.epoch, logs=logs, source=self._source, params=self.params)
        # Only now: a subscriber failing in on_train_end leaves the fit open for abort().
        self.fitting = False
        epoch, self.epoch = self.epoch, None
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
        self.fitting, self._epoch_open = False, False
        epoch, self.epoch = self.epoch, None
        if self.teardown:
            # A teardown subscriber that fails too becomes a note on exc, which goes on.
            self.bus.emit_teardown(
                exc, epoch=epoch, logs=self._last_logs, source=self._source, params=self.params
            )

    # -- validation and evaluate -------------------------------------------------------------

    def _val_epoch(self) -> int | None:
        return self.epoch if self.fitting else None

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._epoch_open and self.fitting:
            self._close_train_epoch()
        if self._listening(_VAL_START):
            self._emit(
                _VAL_START, epoch=self._val_epoch(), logs=logs or _EMPTY, source=self._source,
                params=self.params,
            )  # fmt: skip
        self._stop_if_fitting()

    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._listening(_VAL_BATCH_START):
            self._emit(
                _VAL_BATCH_START, batch=batch, epoch=self._val_epoch(), logs=logs or _EMPTY,
                source=self._source, params=self.params,
            )  # fmt: skip
        self._stop_if_fitting()

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._listening(_VAL_BATCH_END):
            self._emit(
                _VAL_BATCH_END, batch=batch, epoch=self._val_epoch(), logs=logs or _EMPTY,
                source=self._source, params=self.params,
            )  # fmt: skip
        self._stop_if_fitting()

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._listening(_VAL_END):
            self._emit(
                _VAL_END, epoch=self._val_epoch(), logs=logs or _EMPTY, source=self._source,
                params=self.params,
            )  # fmt: skip
        self._stop_if_fitting()

    def _stop_if_fitting(self) -> None:
        # A stop request outlives a run until the next one starts: only a fit obeys it,
        # so a later evaluate or predict is not cut short by an old request.
        if self.fitting:
            self._stop_if_asked()

    # -- predict -----------------------------------------------------------------------------

    def on_predict_begin(self, logs: dict[str, Any] | None = None) -> None:
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

    # Keras' legacy batch hooks: the hooks above replace them. Overridden so that Keras never
    # moves this callback to its thread pool.
    def on_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Not called by Keras 3's own loops (``on_train_batch_begin`` covers it)."""

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Not called by Keras 3's own loops (``on_train_batch_end`` covers it)."""
