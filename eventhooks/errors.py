"""The errors eventhooks raises: each names the event, and the field or subscriber at fault.

Their messages are built from whatever the caller passed, so building them never fails: a
value is described by its type and a short repr that is bounded in depth and length, taken
under a guard (a ``__repr__`` that raises or recurses shows as ``<unprintable TypeName>``).
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from pydantic import BaseModel

#: How long a value's description may be, in characters.
VALUE_LIMIT = 60
#: How long a field's name, a pydantic message or an exception's text may be in a message.
NAME_LIMIT = 60
MSG_LIMIT = 160
#: How many fields a PayloadError lists before it says how many more there are.
MAX_LINES = 10

_ITEMS = 4  # items of a list, dict... shown
_DEPTH = 2  # containers inside containers shown
_BIG_INT_BITS = 256  # a larger int is described by its size (its repr is slow, or refused)
# Types whose repr says what they are: shown without their type name.
_LITERALS: frozenset[type] = frozenset(
    {type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset}
)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def _one_line(text: str) -> str:
    """Text on one line: a message has one line per field."""
    return " ".join(part.strip() for part in text.splitlines()) if text else text


def _plain(text: str) -> str:
    """A ``str`` (or subclass) as a plain ``str``: its own methods are not called."""
    return str.__str__(text)


def _type_name(value: object) -> str:
    """The name of ``value``'s type; a metaclass' ``__name__`` may raise, or not be a str."""
    try:
        name = type(value).__name__
        if issubclass(type(name), str):
            return _shorten(_plain(name), 40)
    except Exception:
        pass
    return "object"


def _text(value: object, limit: int | None = MSG_LIMIT, fallback: str | None = None) -> str:
    """``str(value)``, bounded, or ``fallback`` when ``__str__`` raises (or recurses)."""
    try:
        text = _plain(str(value))
    except Exception:
        return fallback if fallback is not None else f"<unprintable {_type_name(value)}>"
    return text if limit is None else _shorten(text, limit)


def _quote(text: str, limit: int = NAME_LIMIT) -> str:
    """``repr`` of a str (or subclass, whose methods are not called), bounded."""
    plain = _plain(text)
    if len(plain) <= limit:
        return repr(plain)
    return repr(plain[: max(limit - 5, 1)]) + "..."


def _repr(value: object, depth: int) -> str:
    """A bounded repr: exact built-in types are walked here, others asked under a guard."""
    if type(value) is int:
        bits = value.bit_length()
        if bits > _BIG_INT_BITS:  # repr() of a huge int is slow, or refused past 4300 digits
            sign = "-" if value < 0 else ""
            return f"<{sign}int of about {int(bits * 0.30103) + 1} digits>"
        return repr(value)
    if value is None or type(value) is bool or type(value) is float or type(value) is complex:
        return repr(value)
    if type(value) is str or type(value) is bytes or type(value) is bytearray:
        return repr(value[:VALUE_LIMIT]) + ("..." if len(value) > VALUE_LIMIT else "")
    if type(value) is dict:
        return _items(
            "{",
            "}",
            len(value),
            depth,
            (f"{_repr(k, depth + 1)}: {_repr(v, depth + 1)}" for k, v in value.items()),
        )
    if type(value) is list or type(value) is tuple:
        opening, closing = (
            ("[", "]") if type(value) is list else ("(", ",)" if len(value) == 1 else ")")
        )
        return _items(opening, closing, len(value), depth, (_repr(v, depth + 1) for v in value))
    if type(value) is set or type(value) is frozenset:
        if not value:
            return f"{type(value).__name__}()"
        opening, closing = ("{", "}") if type(value) is set else ("frozenset({", "})")
        return _items(opening, closing, len(value), depth, (_repr(v, depth + 1) for v in value))
    try:
        return _shorten(_one_line(_plain(repr(value))[: 4 * VALUE_LIMIT]), VALUE_LIMIT)
    except Exception:  # a __repr__ that raises, recurses, or returns no str
        return f"<unprintable {_type_name(value)}>"


def _items(opening: str, closing: str, size: int, depth: int, items: Iterator[str]) -> str:
    """A container's first few items, or ``...`` once deep enough."""
    if size and depth >= _DEPTH:
        return f"{opening}...{closing}"
    shown = list(islice(items, _ITEMS))
    if size > _ITEMS:
        shown.append(f"...{size - _ITEMS} more")
    return opening + ", ".join(shown) + closing


def _describe(value: object, limit: int = VALUE_LIMIT) -> str:
    """A short, safe description of any value: its repr, bounded in depth and length, after
    its type's name unless the repr says it. Never raises (bar ``KeyboardInterrupt``...)."""
    try:
        shown = _repr(value, 0)
        if not any(type(value) is kind for kind in _LITERALS):
            name = _type_name(value)
            if not shown.startswith("<unprintable ") and name not in shown:
                shown = f"{name} {shown}"
        return _shorten(shown, limit)
    except Exception:  # a metaclass' __eq__, memory...
        return f"<unprintable {_type_name(value)}>"


def _event_name(spelled: object) -> str:
    """The event as the caller named it: a str (or subclass) as a plain str, an Event by its
    name, anything else described."""
    try:
        if issubclass(type(spelled), str):
            return _plain(spelled)  # type: ignore[arg-type]
        # An Event, known by its module: importing events here would close a circle.
        if type(spelled).__module__ == f"{__package__}.events":
            name = spelled.name  # type: ignore[attr-defined]
            if issubclass(type(name), str):
                return _plain(name)
    except Exception:
        pass
    return _describe(spelled)


def _lookalike(text: str) -> str:
    """What makes a name that looks right unknown: a character that is not ASCII (a Cyrillic
    U+0435 for an 'e'), or whitespace around it."""
    notes = [
        " ".join(filter(None, (f"U+{ord(c):04X}", unicodedata.name(c, ""), f"at {i}")))
        for i, c in islice(((i, c) for i, c in enumerate(text) if ord(c) > 127), 3)
    ]
    said = f" (not ASCII: {', '.join(notes)})" if notes else ""
    if text != text.strip():
        said += " (note the whitespace around it)"
    return said


class EventhooksError(Exception):
    """Base class of every error raised by eventhooks."""


class UnknownEventError(EventhooksError, KeyError):
    """A name that no event carries (Ultralytics accepts typos silently; eventhooks does not).

    ``name`` is what was given, as given; ``suggestions`` are up to three close known names.
    """

    def __init__(self, name: object, known: Iterable[str]) -> None:
        self.name = name
        self.suggestions: list[str] = []
        try:
            message = self._message(name, known)
        except Exception:  # pragma: no cover - _message is guarded throughout
            message = f"unknown event of type {_type_name(name)}"
        super().__init__(message)

    def _message(self, name: object, known: Iterable[str]) -> str:
        kind = type(name)
        text: str | None = None
        if issubclass(kind, str):
            text = _plain(name)  # type: ignore[arg-type]
            shown = _quote(text) + _lookalike(text[:NAME_LIMIT])
        elif kind is bytes:
            text = name.decode("utf-8", "replace")  # type: ignore[attr-defined]
            shown = f"{_describe(name)} (event names are str, not bytes)"
        else:
            shown = f"{_describe(name)} (event names are str, not {_type_name(name)})"
        if text is not None and len(text) <= 4 * NAME_LIMIT:
            try:
                candidates = [_plain(k) for k in known if issubclass(type(k), str)]
                self.suggestions = difflib.get_close_matches(text, candidates, n=3, cutoff=0.6)
            except Exception:
                self.suggestions = []
        close = ", ".join(_quote(s) for s in self.suggestions)
        hint = f"; did you mean {close}?" if close else ""
        return f"unknown event {shown}{hint}"

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class RegistryError(EventhooksError, ValueError):
    """A custom event that cannot be registered (a name clash, a missing prefix)."""


class PayloadError(EventhooksError, TypeError):
    """Fields given to ``emit`` that do not validate into the event's payload.

    ``event`` is the event as the caller named it, ``canonical`` its canonical name;
    ``errors`` keeps pydantic's structured errors (``loc``, ``msg``, ``input``...), and
    ``fields`` the names of the fields at fault. The message names the event, each field,
    what was expected and a short description of what was given::

        invalid payload for event 'on_epoch_end' (on_fit_epoch_end):
          field 'logs.loss': Input should be a valid number, ... (got 'high')
    """

    def __init__(
        self, event: str, errors: list[dict[str, Any]], canonical: str | None = None
    ) -> None:
        self.event = _event_name(event)
        self.canonical = self.event if canonical is None else _event_name(canonical)
        self.errors = errors
        try:
            message = self._message()
        except Exception:  # pragma: no cover - every part of _message is guarded
            message = f"invalid payload for event {_quote(self.event)}"
        super().__init__(message)

    def _message(self) -> str:
        head = f"invalid payload for event {_quote(self.event)}"
        if self.canonical != self.event:
            head += f" ({_shorten(self.canonical, NAME_LIMIT)})"
        lines = [_line(err) for err in self.errors[:MAX_LINES]]
        if len(self.errors) > MAX_LINES:
            lines.append(f"  ... and {len(self.errors) - MAX_LINES} more")
        return head + ":\n" + "\n".join(lines)

    @classmethod
    def from_validation(
        cls,
        spelled: object,
        canonical: str,
        exc: BaseException,
        *,
        payload: type[BaseModel] | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> PayloadError:
        """The error for an emit of ``spelled`` (canonical name ``canonical``) whose fields
        failed validation: a pydantic ``ValidationError``, or any exception that a value
        raised while being validated (a validator of a custom payload that raises).

        For the latter, given the ``payload`` type and the ``fields`` emitted, the field at
        fault is found by validating the fields one by one; otherwise the error is reported
        for ``<payload>``. Never raises.
        """
        try:
            errors = _errors_of(exc, payload, fields)
        except Exception:  # pragma: no cover - _errors_of is guarded throughout
            errors = [{"type": "unknown", "loc": (), "msg": "the fields did not validate"}]
        return cls(spelled, errors, canonical=canonical)  # type: ignore[arg-type]

    @property
    def fields(self) -> list[str]:
        """The names of the fields at fault."""
        names = []
        for err in self.errors:
            try:
                loc = err.get("loc")
                if loc:
                    names.append(_loc_part(loc[0]))
            except Exception:
                continue
        return names


def _loc_part(part: object) -> str:
    if issubclass(type(part), str):
        return _plain(part)  # type: ignore[arg-type]
    if type(part) is int:
        return str(part)
    return _describe(part, NAME_LIMIT)


def _line(err: Mapping[str, Any]) -> str:
    """One field's line of a PayloadError: its name, pydantic's message, what was given."""
    try:
        loc = err.get("loc") or ()
        field = _quote(".".join(_loc_part(p) for p in loc)) if loc else "<payload>"
    except Exception:
        field = "<unknown field>"
    try:
        msg = err.get("msg")
        said = _plain(msg) if isinstance(msg, str) else _text(msg, None)
        said = _shorten(_one_line(said[: 4 * MSG_LIMIT]), MSG_LIMIT)
    except Exception:
        said = "invalid"
    try:
        given = ""
        if "input" in err and err.get("type") != "missing":
            given = f" (got {_describe(err['input'])})"
    except Exception:
        given = ""
    return f"  field {field}: {said}{given}"


def _errors_of(
    exc: BaseException, payload: type[BaseModel] | None, fields: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """pydantic's errors, or one error describing another exception, naming its field."""
    if isinstance(exc, ValidationError):
        # errors() may raise itself: it reprs dict keys for their ``loc``, and the input.
        for options in (
            {},
            {"include_input": False},
            {"include_input": False, "include_context": False},
        ):
            try:
                return [dict(err) for err in exc.errors(include_url=False, **options)]
            except Exception:
                continue
        try:
            count = exc.error_count()
        except Exception:
            count = 0
        return [{"type": "unknown", "loc": (),
                 "msg": f"{count} validation error(s) that cannot be described"}]  # fmt: skip
    error: dict[str, Any] = {
        "type": "exception",
        "loc": (),
        "msg": f"{_type_name(exc)} raised while validating: {_text(exc)}",
        "ctx": {"error": exc},
    }
    field = _culprit(payload, fields)
    if field is not None and fields is not None:
        error["loc"] = (field,)
        try:
            error["input"] = fields[field]
        except Exception:
            pass
    return [error]


def _culprit(payload: type[BaseModel] | None, fields: Mapping[str, Any] | None) -> str | None:
    """The field whose validation alone raises something other than a ValidationError."""
    if payload is None or fields is None:
        return None
    try:
        validate = payload.__pydantic_validator__.validate_python
        for name in list(fields):
            try:
                validate({name: fields[name]})
            except ValidationError:
                continue
            except Exception:
                return _plain(name) if issubclass(type(name), str) else None
    except Exception:
        pass
    return None


class SubscriberError(EventhooksError):
    """A subscriber raised while handling an event (error policy ``"raise"``).

    The original exception is chained as ``__cause__`` and kept in ``original``.
    """

    def __init__(self, event: str, subscriber: str, original: BaseException) -> None:
        self.event = event
        self.subscriber = subscriber
        self.original = original
        said = _text(original, limit=2000, fallback="<unprintable message>")
        super().__init__(
            f"subscriber {_text(subscriber, 300)} failed on event {_quote(_text(event))}: "
            f"{_type_name(original)}: {said}"
        )


class OrderError(EventhooksError, RuntimeError):
    """A moment emitted where the canonical order does not allow it (PRODUCT.md §1).

    Raised by the lifecycle, and by ``EventBus(check_order=True)`` at the first emit that breaks
    the order. ``event`` is the moment, ``previous`` the one before it, ``expected`` what was
    allowed there.
    """

    def __init__(
        self, event: str, previous: str, expected: Iterable[str], note: str | None = None
    ) -> None:
        self.event, self.previous = event, previous
        self.expected = sorted(expected)
        allowed = ", ".join(self.expected) or "nothing more"
        why = f" ({note})" if note else ""
        super().__init__(
            f"{event} after {previous} breaks the canonical order{why}; allowed there: {allowed}"
        )
