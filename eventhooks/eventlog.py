"""The event-log file format: one JSON object per line, versioned, readable without trust.

A line is ``{"v": 1, "event": "<canonical name>", "time": <unix seconds>, "payload": {...}}``.
The payload is the pydantic payload's own JSON (``source``, ``params`` and other framework
objects are not serialized; NaN and infinities are written as ``NaN``/``Infinity``, which
Python's ``json`` reads back). Reading parses JSON only and validates every payload against
its event's type: nothing in a file is ever executed.

A killed process leaves a log that ends early: its last line cut off mid-write, or its last
training run without the ``teardown`` that always ends a run. :func:`read_log` reads such a
log all the same (the cut line left out) and describes what is missing as :class:`Incomplete`;
replay then warns with :class:`IncompleteLogWarning`. Any other bad line is an
:class:`EventLogError` naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from . import events as _events
from . import registry as _registry
from .errors import EventhooksError, PayloadError
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


@dataclass(frozen=True)
class Incomplete:
    """How a log ends early; every record before that is complete and valid.

    ``cut_line``: the number of the last line, when it was cut off mid-write (no newline, the
    start of a JSON object but not valid JSON: what a killed writer leaves); it is left out,
    the only line that may be. ``open_run``: the line where the log's last training run
    starts (``on_pretrain_routine_start`` or ``on_train_start``), when no ``teardown``
    follows it. At least one of the two is set.
    """

    path: str
    cut_line: int | None = None
    open_run: int | None = None

    @property
    def reason(self) -> str:
        """One line without the path: ``"log ends early: line 17 is cut off; ..."``."""
        parts = []
        if self.cut_line is not None:
            parts.append(f"line {self.cut_line} is cut off")
        if self.open_run is not None:
            parts.append(f"the run that starts at line {self.open_run} has no teardown")
        return f"log ends early: {'; '.join(parts)} (a killed run?)"

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class IncompleteLogWarning(UserWarning):
    """Replay or load of a log that ends early (:class:`Incomplete`, as ``incomplete``).

    Everything complete is still read, and replayed. The warning is issued before the first
    event is emitted, so ``warnings.simplefilter("error", IncompleteLogWarning)`` makes replay
    refuse such a log without emitting anything.
    """

    def __init__(self, incomplete: Incomplete) -> None:
        super().__init__(str(incomplete))
        self.incomplete = incomplete


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
        allowed |= frozenset(model.model_computed_fields)  # rank, world_size: the run's
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
        event.payload(**fields)  # the run's facts (rank, world_size) as keywords
    except (ValidationError, PayloadError) as exc:
        problems = exc.errors if isinstance(exc, PayloadError) else exc.errors(include_url=False)
        first = problems[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise EventLogError(path, line, f"{name}: field {where!r}: {first.get('msg')}") from None
    return Record(line, event, fields, time)


@dataclass(frozen=True)
class LogContents:
    """A whole log read by :func:`read_log`: its valid records, and how it ends early if it does."""

    records: list[Record]
    incomplete: Incomplete | None = None


def read(
    path: str | os.PathLike[str], registry: _registry.Registry | None = None
) -> Iterator[Record]:
    """The records of a log file in order; blank lines are skipped, anything else must parse.

    Strict and lazy: a last line cut off mid-write is an :class:`EventLogError` here too.
    :func:`read_log` reads a log that ends early and says so.
    """
    where = os.fspath(path)
    with open(where, "rb") as f:
        for number, raw in enumerate(f, start=1):
            text = _decode(raw, where, number)
            if text.strip():
                yield parse(text, number, where, registry)


def read_log(
    path: str | os.PathLike[str], registry: _registry.Registry | None = None
) -> LogContents:
    """Read and validate a whole log; one that ends early is read up to where it ends.

    A last line without its newline that is not valid JSON (a killed writer's half line) is
    left out and reported as ``incomplete.cut_line``; a training run left without its
    ``teardown`` is ``incomplete.open_run`` (the outermost, when runs nest). Any other bad
    line, the last one included, raises :class:`EventLogError` naming it. Warns about
    nothing: see :func:`eventhooks.replay.replay` for that.
    """
    where = os.fspath(path)
    records: list[Record] = []
    cut_line: int | None = None
    with open(where, "rb") as f:
        for number, raw in enumerate(f, start=1):
            # Only the file's last line can lack its newline.
            if not raw.endswith(b"\n") and _cut_off(raw):
                cut_line = number
                break
            text = _decode(raw, where, number)
            if text.strip():
                records.append(parse(text, number, where, registry))
    open_run = _open_run(records)
    if cut_line is None and open_run is None:
        return LogContents(records)
    return LogContents(records, Incomplete(where, cut_line, open_run))


def _decode(raw: bytes, path: str, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EventLogError(path, line, "not UTF-8 text") from None


def _cut_off(raw: bytes) -> bool:
    """Whether a line without its newline is the start of a log line, cut off mid-write.

    It must begin as a JSON object does and not be valid JSON; a multi-byte character cut in
    two at its end counts. Anything else (a pickle, a stray value) is judged as a line.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data" or exc.end != len(raw):
            return False
        text = raw[: exc.start].decode("utf-8")  # the first bad byte starts the cut character
    if not text.lstrip().startswith("{"):
        return False
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return True
    except (RecursionError, ValueError):
        return False
    return False


def _open_run(records: list[Record]) -> int | None:
    """The line where the outermost training run left without its ``teardown`` starts.

    A run starts at ``on_pretrain_routine_start``, or at an ``on_train_start`` no routine of
    its own came before; one that starts while another is open is nested in it (a subscriber
    that trains), and a ``teardown`` ends the innermost: an inner run's teardown is not its
    outer run's.
    """
    open_runs: list[list[Any]] = []  # [start line, on_train_start heard], innermost last
    for record in records:
        if record.event is _events.teardown:
            if open_runs:
                open_runs.pop()
        elif record.event is _events.on_pretrain_routine_start:
            open_runs.append([record.line, False])
        elif record.event is _events.on_train_start:
            if not open_runs or open_runs[-1][1]:  # a run without on_pretrain_routine_start
                open_runs.append([record.line, True])
            else:
                open_runs[-1][1] = True
    return open_runs[0][0] if open_runs else None
