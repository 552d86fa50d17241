"""Replay: re-emit a recorded run on a bus, so subscribers run on it without training.

>>> from eventhooks import EventBus
>>> from eventhooks.callbacks import History
>>> bus = EventBus()
>>> history = History()
>>> _ = bus.attach(history)
>>> replay("events.jsonl", bus)  # doctest: +SKIP

A log that ends early (a killed run: its last line cut off mid-write, or its last training
run without ``teardown``) is replayed up to where it ends, with an
:class:`~eventhooks.eventlog.IncompleteLogWarning` saying what is missing; replay never
invents the missing events. :func:`eventhooks.eventlog.read_log` gives the same description
(``incomplete``) without a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

from . import eventlog
from .bus import EventBus
from .eventlog import EventLogError, Incomplete, IncompleteLogWarning, Record

__all__ = [
    "EventLogError", "Incomplete", "IncompleteLogWarning", "Record", "emit_records", "load",
    "replay",
]  # fmt: skip


def load(path: str | os.PathLike[str], bus: EventBus | None = None) -> list[Record]:
    """Read and validate a whole log (events resolved in ``bus``'s registry, if given).

    A log that ends early gives its complete records and an
    :class:`~eventhooks.eventlog.IncompleteLogWarning` (see :func:`replay`).
    """
    contents = eventlog.read_log(path, bus.registry if bus is not None else None)
    _warn(contents.incomplete)
    return contents.records


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

    A log that ends early, as a killed run leaves it (the last line cut off mid-write, or
    the last training run without its ``teardown``), is replayed up to where it ends: every
    complete line's event, and nothing invented (no ``teardown`` is made up). Before the
    first event is emitted, an :class:`~eventhooks.eventlog.IncompleteLogWarning` says in one
    line what is missing (``warning.incomplete`` holds it); make that warning an error to
    refuse such logs with nothing emitted. A cut line anywhere but last is an ``EventLogError``.
    """
    contents = eventlog.read_log(path, bus.registry)
    _warn(contents.incomplete)
    return emit_records(contents.records, bus, source=source)


def emit_records(records: Sequence[Record], bus: EventBus, *, source: Any = None) -> int:
    """Emit already validated records on ``bus``, in order; returns how many."""
    for record in records:
        bus.emit(record.event, source=source, **record.fields)
    return len(records)


def _warn(incomplete: Incomplete | None) -> None:
    if incomplete is not None:
        # stacklevel 3: the warning points at the caller of load() or replay().
        warnings.warn(IncompleteLogWarning(incomplete), stacklevel=3)
