"""EarlyStopping: stop when a monitored metric stopped improving, optionally rewinding."""

from __future__ import annotations

import warnings
from typing import Any

from ..callback import Callback
from ..payloads import EpochPayload, RunPayload
from ._monitor import Mode, Monitor, trainer_name


def _copy(weights: Any) -> Any:
    """A snapshot that later training cannot change (arrays copied, lists rebuilt)."""
    if isinstance(weights, (list, tuple)):
        return type(weights)(_copy(w) for w in weights)
    if isinstance(weights, dict):
        return {k: _copy(v) for k, v in weights.items()}
    for method in ("clone", "copy"):  # torch tensors clone; numpy arrays copy
        copy = getattr(weights, method, None)
        if callable(copy):
            return copy()
    return weights


class EarlyStopping(Callback):
    """Requests a stop after ``patience`` epochs without improvement of ``monitor``.

    Semantics follow Keras 3: an epoch improves when it beats the best value by more than
    ``min_delta``; the first ``start_from_epoch`` epochs are ignored; with ``baseline`` the
    waiting only resets once the baseline is beaten. With ``restore_best_weights`` the best
    epoch's weights are put back when training ends, through the emitting trainer's
    ``get_weights()``/``set_weights()`` (a clear error for a trainer without them). Unlike
    Keras, a NaN value never counts as the best one.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 0,
        mode: Mode = "auto",
        min_delta: float = 0.0,
        restore_best_weights: bool = False,
        baseline: float | None = None,
        start_from_epoch: int = 0,
    ) -> None:
        if patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {patience}")
        self.monitor = monitor
        self.patience = patience
        self.baseline = baseline
        self.start_from_epoch = start_from_epoch
        self.restore_best_weights = restore_best_weights
        self._op = Monitor(monitor, mode, min_delta, "EarlyStopping")
        self.mode = self._op.mode
        self.min_delta = self._op.min_delta
        self._reset()

    def _reset(self) -> None:
        self.wait = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_weights: Any = None
        self.stopped_epoch: int | None = None
        self.restored = False
        self._source: Any = None

    def _weights_api(self, source: Any) -> Any:
        if not (callable(getattr(source, "get_weights", None))
                and callable(getattr(source, "set_weights", None))):  # fmt: skip
            raise TypeError(
                "EarlyStopping(restore_best_weights=True) restores through the emitting "
                f"trainer's get_weights()/set_weights(), and {trainer_name(source)} has none; "
                "use restore_best_weights=False or a ModelCheckpoint"
            )
        return source

    def on_train_start(self, payload: RunPayload) -> None:
        self._reset()
        if self.restore_best_weights and payload.source is not None:
            self._weights_api(payload.source)  # fail before the first epoch, not after it

    def on_fit_epoch_end(self, payload: EpochPayload) -> None:
        current = payload.logs.get(self.monitor)
        if current is None:
            available = ",".join(payload.logs) or "none"
            warnings.warn(
                f"Early stopping conditioned on metric `{self.monitor}` which is not "
                f"available. Available metrics are: {available}",
                stacklevel=2,
            )
            return
        if payload.epoch < self.start_from_epoch:
            return
        if payload.source is not None:
            self._source = payload.source
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = _copy(self._weights_api(payload.source).get_weights())
            self.best_epoch = payload.epoch
        self.wait += 1
        if self._op.improved(current, self.best):
            self.best = current
            self.best_epoch = payload.epoch
            if self.restore_best_weights:
                self.best_weights = _copy(self._weights_api(payload.source).get_weights())
            if self.baseline is None or self._op.improved(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and payload.epoch > 0:
            self.stopped_epoch = payload.epoch
            self.request_stop(
                f"EarlyStopping: {self.monitor} did not improve for {self.wait} epochs "
                f"(best {self.best} at epoch {self.best_epoch})"
            )

    def on_train_end(self, payload: RunPayload) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            source = payload.source if payload.source is not None else self._source
            self._weights_api(source).set_weights(self.best_weights)
            self.restored = True
