"""A network guard for the framework tests: every connection and name lookup fails, and is
recorded. Nothing may download weights, fonts or data at run time.

``NetworkGuard(allow_loopback=True)`` lets connections and lookups of this machine's loopback
(``127.0.0.0/8``, ``::1``, ``localhost``) through, for a test that talks to a server it
started itself (an ``mlflow server`` on 127.0.0.1), and refuses and records everything else.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})


class NetworkAttempt(OSError):
    """Raised instead of opening a connection or resolving a name."""


def is_loopback(host: object) -> bool:
    """Whether ``host`` (a name, an address, or bytes of either) is this machine's loopback."""
    if isinstance(host, bytes | bytearray):
        host = bytes(host).decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class NetworkGuard:
    """Makes every connection and name lookup fail, and records who tried (``attempts``).

    With ``allow_loopback=True``, those to the loopback go through (and are counted in
    ``loopback``); everything else still fails and is recorded.
    """

    def __init__(self, *, allow_loopback: bool = False) -> None:
        self.allow_loopback = allow_loopback
        self.attempts: list[str] = []
        self.loopback = 0

    def _host(self, what: str, args: tuple[Any, ...]) -> object:
        """The host a call is about, or None when it cannot be told (a Unix socket...)."""
        if what == "getaddrinfo":
            return args[0] if args else None
        address = args[1] if what.startswith("socket.") and len(args) > 1 else (
            args[0] if args else None
        )  # fmt: skip
        if isinstance(address, tuple) and address:
            return address[0]
        return None

    def _refuse(self, what: str, original: Any) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            if self.allow_loopback and is_loopback(self._host(what, args)):
                self.loopback += 1
                return original(*args, **kwargs)
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
            for (owner, name), original in saved.items():
                label = ("socket." if owner is socket.socket else "") + name
                setattr(owner, name, self._refuse(label, original))
            yield self
        finally:
            for (owner, name), original in saved.items():
                setattr(owner, name, original)
