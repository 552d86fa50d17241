"""Helpers of the Ultralytics tests: a network guard, a native trace, picklable subscribers.

Module-level (not in the test file) so that a child process can import them by name when it
unpickles a bus.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eventhooks import Callback, EpochPayload, TeardownPayload


class NetworkAttempt(OSError):
    """Raised instead of opening a connection or resolving a name."""


class NetworkGuard:
    """Makes every connection and name lookup fail, and records who tried (``attempts``)."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def _refuse(self, what: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            target = args[1] if what.startswith("socket.") and len(args) > 1 else args[:1]
            self.attempts.append(f"{what}{target!r}")
            raise NetworkAttempt(f"network access attempted during a test: {what}{target!r}")

        return refuse

    @contextmanager
    def active(self) -> Iterator[NetworkGuard]:
        saved = {
            (socket.socket, "connect"): socket.socket.connect,
            (socket.socket, "connect_ex"): socket.socket.connect_ex,
            (socket, "create_connection"): socket.create_connection,
            (socket, "getaddrinfo"): socket.getaddrinfo,
        }
        try:
            for owner, name in saved:
                label = ("socket." if owner is socket.socket else "") + name
                setattr(owner, name, self._refuse(label))
            yield self
        finally:
            for (owner, name), original in saved.items():
                setattr(owner, name, original)


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
