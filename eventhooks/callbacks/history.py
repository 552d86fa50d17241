"""History: the epoch logs of the last run, shaped like Keras' ``History``."""

from __future__ import annotations

from typing import Any

from ..callback import Callback
from ..payloads import EpochPayload, RunPayload


class History(Callback):
    """Collects ``on_fit_epoch_end`` logs: ``history["val_loss"]`` is a list, one per epoch.

    ``epoch`` lists the (0-based) epochs seen. Both are reset when a run starts, so one
    History describes one run; ``source`` is the trainer that emitted the last run.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.source: Any = None

    def on_train_start(self, payload: RunPayload) -> None:
        self.history = {}
        self.epoch = []
        self.source = payload.source

    def on_fit_epoch_end(self, payload: EpochPayload) -> None:
        self.epoch.append(payload.epoch)
        for key, value in payload.logs.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self) -> str:
        return f"<History {len(self.epoch)} epochs, keys={sorted(self.history)}>"
