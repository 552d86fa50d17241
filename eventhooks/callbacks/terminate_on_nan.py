"""TerminateOnNaN: stop a run whose loss became NaN or infinite."""

from __future__ import annotations

import logging
import math

from ..callback import Callback
from ..payloads import BatchPayload, EpochPayload, RunPayload

log = logging.getLogger("eventhooks")


class TerminateOnNaN(Callback):
    """Requests a stop when ``monitor`` (``loss``) is NaN or infinite in batch or epoch logs.

    Keras checks batches only; epoch logs are checked too, because some frameworks
    (Ultralytics) report no batch logs. ``terminated`` holds the reason once it fired.
    """

    def __init__(self, monitor: str = "loss") -> None:
        self.monitor = monitor
        self.terminated: str | None = None

    def _invalid(self, logs: dict[str, float]) -> float | None:
        value = logs.get(self.monitor)
        return value if value is not None and not math.isfinite(value) else None

    def _terminate(self, where: str, value: float) -> None:
        self.terminated = f"{where}: invalid {self.monitor} {value}, terminating training"
        log.warning("%s", self.terminated)
        self.request_stop(self.terminated)

    def on_train_start(self, payload: RunPayload) -> None:
        self.terminated = None

    def on_train_batch_end(self, payload: BatchPayload) -> None:
        value = self._invalid(payload.logs)
        if value is not None:
            epoch = "" if payload.epoch is None else f"epoch {payload.epoch} "
            self._terminate(f"{epoch}batch {payload.batch}", value)

    def on_fit_epoch_end(self, payload: EpochPayload) -> None:
        value = self._invalid(payload.logs)
        if value is not None and self.terminated is None:
            self._terminate(f"epoch {payload.epoch}", value)
