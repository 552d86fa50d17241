"""Helpers of the Ultralytics tests: a network guard, a native trace, picklable subscribers.

Module-level (not in the test file) so that a child process can import them by name when it
unpickles a bus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eventhooks import Callback, EpochPayload, TeardownPayload


class NativeTrace:
    """Plain Ultralytics callbacks on all 25 names: what Ultralytics itself calls, in order.

    Each record is ``(name, object, epoch, validator.training)``, read at call time.
    """

    def __init__(self) -> None:
        self.records: list[tuple[str, Any, int | None, bool | None]] = []

    def attach(self, model: Any, names: tuple[str, ...]) -> None:
        for name in names:
            model.add_callback(name, self._callback(name))

    def _callback(self, name: str) -> Any:
        def record(obj: Any) -> None:
            epoch = getattr(obj, "epoch", None) if hasattr(obj, "stop") else None
            self.records.append((name, obj, epoch, getattr(obj, "training", None)))

        return record

    @property
    def names(self) -> list[str]:
        return [name for name, *_ in self.records]


class EpochFile(Callback):
    """Appends ``fit <epoch>`` per epoch and ``teardown`` to a file: a picklable subscriber."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_fit_epoch_end(self, payload: EpochPayload) -> None:
        with self.path.open("a") as f:
            f.write(f"fit {payload.epoch} {payload.logs['loss']}\n")

    def teardown(self, payload: TeardownPayload) -> None:
        with self.path.open("a") as f:
            f.write(f"teardown {payload.error}\n")
