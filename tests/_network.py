"""A network guard for the framework tests: every connection and name lookup fails, and is
recorded. Nothing may download weights, fonts or data at run time."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


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
