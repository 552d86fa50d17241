"""The event-log file format: one JSON object per line, versioned, readable without trust.

A line is ``{"v": 1, "event": "<canonical name>", "time": <unix seconds>, "payload": {...}}``.
The payload is the pydantic payload's own JSON (``source``, ``params`` and other framework
objects are not serialized; NaN and infinities are written as ``NaN``/``Infinity``, which
Python's ``json`` reads back). Reading parses JSON only and validates every payload against
its event's type: nothing in a file is ever executed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from . import registry as _registry
from .errors import EventhooksError
from .events import Event

#: The schema version this eventhooks writes and reads.
VERSION = 1

_KEYS = frozenset({"v", "event", "time", "payload"})


class EventLogError(EventhooksError):
    """A line of an event log that cannot be read: ``path``, ``line`` (1-based) and why."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}, line {line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


def encode(event: Event[Any], payload: BaseModel, time: float) -> str:
    """One log line (with its newline) for a delivered payload."""
    return (
        f'{{"v":{VERSION},"event":{json.dumps(event.name)},"time":{time!r},'
        f'"payload":{payload.model_dump_json()}}}\n'
    )


@dataclass(frozen=True)
class Record:
    """One validated line: the event, its payload fields, when it was written, where it is."""

    line: int
    event: Event[Any]
    fields: dict[str, Any] = field(repr=False)
    time: float | None = None


_ALLOWED: dict[type[BaseModel], frozenset[str]] = {}


def _serialized_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields a log line may hold: the payload's, minus framework objects."""
    allowed = _ALLOWED.get(model)
    if allowed is None:
        allowed = frozenset(n for n, info in model.model_fields.items() if not info.exclude)
        _ALLOWED[model] = allowed
    return allowed


def parse(
    text: str, line: int, path: str = "<event log>", registry: _registry.Registry | None = None
) -> Record:
    """Validate one line into a :class:`Record`, or raise :class:`EventLogError`."""
    reg = registry or _registry.default
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EventLogError(
            path, line, f"not valid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    except RecursionError:
        raise EventLogError(path, line, "JSON nested too deeply") from None
    except ValueError as exc:  # Python's limit on the digits of an int, say
        raise EventLogError(path, line, f"unreadable JSON value ({exc})") from None
    if not isinstance(obj, dict):
        raise EventLogError(path, line, f"expected a JSON object, got {type(obj).__name__}")
    if "v" not in obj:
        raise EventLogError(path, line, "no schema version ('v'); not an eventhooks event log?")
    version = obj["v"]
    if version != VERSION or isinstance(version, bool):
        raise EventLogError(
            path, line, f"unknown schema version {version!r} (this eventhooks reads {VERSION})"
        )
    if not _KEYS.issuperset(obj):
        raise EventLogError(path, line, f"unexpected keys {sorted(set(obj) - _KEYS)}")
    name = obj.get("event")
    if not isinstance(name, str):
        raise EventLogError(path, line, f"'event' must be an event name, got {name!r}")
    if name not in reg:
        raise EventLogError(path, line, f"unknown event {name!r}")
    event = reg.resolve(name)
    time = obj.get("time")
    if time is not None and (isinstance(time, bool) or not isinstance(time, (int, float))):
        raise EventLogError(path, line, f"'time' must be a number, got {time!r}")
    fields = obj.get("payload", {})
    if not isinstance(fields, dict):
        raise EventLogError(path, line, f"{name}: 'payload' must be a JSON object")
    allowed = _serialized_fields(event.payload)
    if not allowed.issuperset(fields):
        foreign = sorted(set(fields) - allowed)[0]
        raise EventLogError(
            path, line, f"{name}: payload field {foreign!r} is not one an event log holds"
        )
    try:
        event.payload.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise EventLogError(path, line, f"{name}: field {where!r}: {first['msg']}") from None
    return Record(line, event, fields, time)


def read(
    path: str | os.PathLike[str], registry: _registry.Registry | None = None
) -> Iterator[Record]:
    """The records of a log file in order; blank lines are skipped, anything else must parse."""
    where = os.fspath(path)
    with open(where, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise EventLogError(where, number, "not UTF-8 text") from None
            if text.strip():
                yield parse(text, number, where, registry)
