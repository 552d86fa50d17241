"""Out of Keras: any unchanged ``keras.callbacks.Callback`` as a subscriber of any loop.

``bus.attach(from_keras(keras.callbacks.EarlyStopping(...)))`` runs the callback under the
NumPy reference trainer, the PyTorch adapter or anything else that emits on the bus. Its
``on_*`` methods get what Keras would give them (``epoch``/``batch`` and a ``logs`` dict),
``self.params`` comes from the payload's ``params`` (with Keras' ``fit`` defaults for the
keys it lacks: ``verbose="auto"``, ``epochs=1``, ``steps=None``), and ``self.model`` is a
:class:`KerasModelProxy` around the emitting trainer (the payload's ``source``).
"""

from __future__ import annotations

from typing import Any

import keras  # type: ignore[import-untyped]

from eventhooks import Callback, EventBus
from eventhooks.payloads import (
    BatchPayload,
    EpochPayload,
    Payload,
    PredictBatchPayload,
    RunPayload,
)

_UNSET: Any = object()

#: What ``keras.Model.fit`` passes to ``set_params`` by default. Keras callbacks read these
#: keys unguarded (``ProgbarLogger.set_params`` indexes all three), so the keys a loop does
#: not give (the PyTorch adapter knows no ``verbose``, Ultralytics gives no params at all)
#: take Keras' own defaults: ``"auto"`` (a progress bar), one epoch, an unknown step count.
KERAS_FIT_DEFAULTS: dict[str, Any] = {"verbose": "auto", "epochs": 1, "steps": None}


class KerasModelProxy:
    """What a Keras callback sees as ``self.model`` outside Keras.

    ``stop_training = True`` becomes ``bus.request_stop()`` and reading it tells whether a
    stop was requested. ``get_weights``/``set_weights`` call the trainer's, where it has
    them (Keras' ``EarlyStopping(restore_best_weights=True)`` needs both). Any other
    attribute is read from the trainer; attributes a callback sets (``History`` sets
    ``model.history``) stay on the proxy, so the trainer is never changed behind its back.
    """

    def __init__(self, source: Any, bridge: KerasBridge) -> None:
        self.__dict__["source"] = source
        self.__dict__["_bridge"] = bridge

    @property
    def stop_training(self) -> bool:
        bus = self._bridge.bus
        return bool(bus is not None and bus.stop_requested)

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        # Only a request can be made: a bus forgets it when the next run starts.
        if value:
            self._bridge.require_bus().request_stop(
                f"{type(self._bridge.callback).__name__} set model.stop_training"
            )

    def get_weights(self) -> Any:
        return self._trainer_method("get_weights")()

    def set_weights(self, weights: Any) -> None:
        self._trainer_method("set_weights")(weights)

    def _trainer_method(self, name: str) -> Any:
        method = getattr(self.source, name, None)
        if not callable(method):
            raise AttributeError(
                f"{type(self._bridge.callback).__name__} called model.{name}(), but the "
                f"emitting trainer ({type(self.source).__name__}) has no {name}()"
            )
        return method

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found on the proxy itself.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.__dict__["source"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
        else:
            self.__dict__[name] = value

    def __repr__(self) -> str:
        return f"<KerasModelProxy of {self.source!r}>"


class KerasBridge(Callback):
    """Calls a Keras callback's hooks with Keras-shaped arguments; see :func:`from_keras`.

    Subscribed (by ``bus.attach``) only to the moments whose Keras hook the callback
    overrides, so a callback that only watches epochs costs nothing per batch.
    """

    def __init__(self, callback: Any) -> None:
        if not isinstance(callback, keras.callbacks.Callback):
            raise TypeError(
                f"from_keras() takes a keras.callbacks.Callback, got {type(callback).__name__}"
            )
        self.callback = callback
        self.proxy: KerasModelProxy | None = None
        self._source: Any = _UNSET
        self._params: Any = _UNSET  # the payload's params dict last handed on
        self._seen: dict[str, Any] = {}  # its content then (a loop may add keys later)

    def require_bus(self) -> EventBus:
        if self.bus is None:
            raise RuntimeError(
                f"{type(self.callback).__name__} asked to stop training, but its from_keras() "
                "subscriber is not attached to a bus (use bus.attach(...))"
            )
        return self.bus

    def _bind(self, payload: Payload) -> Any:
        """Point the callback at the emitting trainer and its params; return the callback."""
        cb = self.callback
        source = payload.source
        if source is not self._source:
            self._source = source
            self.proxy = KerasModelProxy(source, self)
            cb.set_model(self.proxy)
        params = payload.params
        # Compared by content: pydantic copies params into each payload (shallowly, so the
        # values keep their identity), and set_params on every batch would cost each hook.
        # A payload without params (most batch events) leaves the known ones in place.
        if params is not None:
            if self._params is _UNSET or self._params is None or self._changed(params):
                self._params, self._seen = params, dict(params)
                cb.set_params({**KERAS_FIT_DEFAULTS, **params})
        elif self._params is _UNSET:  # nothing known yet: Keras' defaults
            self._params, self._seen = None, {}
            cb.set_params(dict(KERAS_FIT_DEFAULTS))
        return cb

    def _changed(self, params: dict[str, Any]) -> bool:
        """Whether a key was added, removed or rebound since the last ``set_params``.

        By identity, not ``==``: cheap on every batch, and safe for values (arrays) whose
        equality is not a bool; a value rebound to an equal one only costs a ``set_params``.
        """
        seen = self._seen
        return len(params) != len(seen) or any(
            params.get(key, _UNSET) is not value for key, value in seen.items()
        )

    # Each override forwards one moment to the Keras hook of the same moment.
    def on_train_start(self, payload: RunPayload) -> None:
        self._bind(payload).on_train_begin(payload.logs)

    def on_train_epoch_start(self, payload: EpochPayload) -> None:
        self._bind(payload).on_epoch_begin(payload.epoch, payload.logs)

    def on_train_batch_start(self, payload: BatchPayload) -> None:
        self._bind(payload).on_train_batch_begin(payload.batch, logs=payload.logs)

    def on_train_batch_end(self, payload: BatchPayload) -> None:
        self._bind(payload).on_train_batch_end(payload.batch, logs=payload.logs)

    def on_val_start(self, payload: RunPayload) -> None:
        self._bind(payload).on_test_begin(payload.logs)

    def on_val_batch_start(self, payload: BatchPayload) -> None:
        self._bind(payload).on_test_batch_begin(payload.batch, logs=payload.logs)

    def on_val_batch_end(self, payload: BatchPayload) -> None:
        self._bind(payload).on_test_batch_end(payload.batch, logs=payload.logs)

    def on_val_end(self, payload: RunPayload) -> None:
        self._bind(payload).on_test_end(payload.logs)

    def on_fit_epoch_end(self, payload: EpochPayload) -> None:
        self._bind(payload).on_epoch_end(payload.epoch, payload.logs)

    def on_train_end(self, payload: RunPayload) -> None:
        self._bind(payload).on_train_end(payload.logs)

    def on_predict_start(self, payload: RunPayload) -> None:
        self._bind(payload).on_predict_begin(payload.logs)

    def on_predict_batch_start(self, payload: PredictBatchPayload) -> None:
        self._bind(payload).on_predict_batch_begin(payload.batch, logs=payload.logs)

    def on_predict_batch_end(self, payload: PredictBatchPayload) -> None:
        self._bind(payload).on_predict_batch_end(payload.batch, logs={"outputs": payload.outputs})

    def on_predict_end(self, payload: RunPayload) -> None:
        self._bind(payload).on_predict_end(payload.logs)

    def __reduce__(self) -> tuple[Any, ...]:
        # The class is made per set of hooks at run time (see from_keras), so pickle cannot
        # find it by name: rebuild through from_keras. The bus is kept (request_stop needs
        # it); the trainer binding is redone by the first payload.
        return (from_keras, (self.callback,), {"bus": self.bus})

    def __repr__(self) -> str:
        return f"<from_keras({type(self.callback).__name__})>"


#: Our moment -> the Keras hooks that hear it (base Callback's batch hooks call the legacy
#: ``on_batch_begin``/``on_batch_end``, which ``TerminateOnNaN`` still overrides).
_KERAS_HOOKS: dict[str, tuple[str, ...]] = {
    "on_train_start": ("on_train_begin",),
    "on_train_epoch_start": ("on_epoch_begin",),
    "on_train_batch_start": ("on_train_batch_begin", "on_batch_begin"),
    "on_train_batch_end": ("on_train_batch_end", "on_batch_end"),
    "on_val_start": ("on_test_begin",),
    "on_val_batch_start": ("on_test_batch_begin",),
    "on_val_batch_end": ("on_test_batch_end",),
    "on_val_end": ("on_test_end",),
    "on_fit_epoch_end": ("on_epoch_end",),
    "on_train_end": ("on_train_end",),
    "on_predict_start": ("on_predict_begin",),
    "on_predict_batch_start": ("on_predict_batch_begin",),
    "on_predict_batch_end": ("on_predict_batch_end",),
    "on_predict_end": ("on_predict_end",),
}

_bridge_classes: dict[frozenset[str], type[KerasBridge]] = {}


def _overrides(callback: Any, hook: str) -> bool:
    """Whether ``callback`` does something at ``hook``: a subclass method or, as
    ``LambdaCallback`` does, a function set on the instance."""
    method = getattr(callback, hook, None)
    return callable(method) and getattr(method, "__func__", method) is not getattr(
        keras.callbacks.Callback, hook
    )


def from_keras(callback: Any) -> KerasBridge:
    """Wrap an unchanged Keras callback as an eventhooks subscriber: ``bus.attach(...)`` it.

    >>> bus.attach(from_keras(keras.callbacks.CSVLogger("log.csv")))  # doctest: +SKIP

    A hook the callback overrides (or, like ``LambdaCallback``, sets on the instance) runs at
    its moment, as in ``model.fit``; which hooks count is decided here, at wrapping time.
    Where Keras would pass the same ``logs`` dict to every callback, the callback gets the
    payload's ``logs``. A bridge pickles (so does a bus it is attached to) when its Keras
    callback does.
    """
    wanted = frozenset(
        moment
        for moment, hooks in _KERAS_HOOKS.items()
        if any(_overrides(callback, hook) for hook in hooks)
    )
    cls = _bridge_classes.get(wanted)
    if cls is None:
        # bus.attach subscribes the methods a Callback subclass overrides: hand back the base
        # (no-op) method for the moments this Keras callback ignores.
        skipped = {m: getattr(Callback, m) for m in _KERAS_HOOKS if m not in wanted}
        cls = type("KerasBridge", (KerasBridge,), skipped)
        _bridge_classes[wanted] = cls
    return cls(callback)
