"""EventLog: every lifecycle event of a run as one JSON line, for replay and post-mortems."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import IO, Any

from .. import eventlog
from ..callback import Callback
from ..events import Event
from ._monitor import rank_path, writes_here


class EventLog(Callback):
    """Writes every event to ``path`` as a line of :mod:`eventhooks.eventlog`.

    Every event means the 25 moments and the events other libraries registered before
    ``bus.attach(log)``; their payloads must dump to JSON, as built-in ones do.

    Each line is flushed as it is written, so a crash loses nothing already emitted (the
    ``teardown`` line carrying the error included). The file is truncated on the first event
    and closed at ``teardown``; later events (predict, export) are appended. Under
    distributed training only rank 0 writes unless ``all_ranks=True`` (put ``{rank}`` in the
    path then). ``fsync=True`` also survives a machine crash, at a cost per line.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, all_ranks: bool = False, fsync: bool = False
    ) -> None:
        self.path = os.fspath(path)
        self.all_ranks = all_ranks
        self.fsync = fsync
        self.lines = 0
        self._files: dict[str, IO[str]] = {}
        self._opened: set[str] = set()

    def on_event(self, event: Event[Any], payload: Any) -> None:
        if not writes_here(payload.rank, self.all_ranks):
            return
        path = rank_path(self.path, payload.rank)
        f = self._files.get(path)
        if f is None:
            mode = "a" if path in self._opened else "w"
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            f = self._files[path] = open(path, mode, encoding="utf-8")
            self._opened.add(path)
        f.write(eventlog.encode(event, payload, time.time()))
        f.flush()
        if self.fsync:
            os.fsync(f.fileno())
        self.lines += 1
        if event.name == "teardown":
            self._files.pop(path).close()

    def close(self) -> None:
        """Close the files still open (after predict or export events)."""
        while self._files:
            self._files.popitem()[1].close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
