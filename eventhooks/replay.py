"""Replay: re-emit a recorded run on a bus, so subscribers run on it without training.

>>> from eventhooks import EventBus
>>> from eventhooks.callbacks import History
>>> bus = EventBus()
>>> history = History()
>>> _ = bus.attach(history)
>>> replay("events.jsonl", bus)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

from . import eventlog
from .bus import EventBus
from .eventlog import EventLogError, Record

__all__ = ["EventLogError", "Record", "load", "replay"]


def load(path: str | os.PathLike[str], bus: EventBus | None = None) -> list[Record]:
    """Read and validate a whole log (events resolved in ``bus``'s registry, if given)."""
    return list(eventlog.read(path, bus.registry if bus is not None else None))


def replay(
    path: str | os.PathLike[str],
    bus: EventBus,
    *,
    source: Any = None,
) -> int:
    """Emit every event of the log at ``path`` on ``bus``, in order; returns how many.

    The whole file is validated before the first event is emitted, so a bad line (reported
    with its number as :class:`~eventhooks.eventlog.EventLogError`) never leaves
    subscribers with half a run. ``source`` becomes each payload's ``source`` (the log holds
    no framework objects); subscriber failures propagate as they would in a live run.
    """
    records = load(path, bus)
    for record in records:
        bus.emit(record.event, source=source, **record.fields)
    return len(records)
