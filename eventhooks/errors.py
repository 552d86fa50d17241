"""The errors eventhooks raises: each names the event, and the field or subscriber at fault."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class EventhooksError(Exception):
    """Base class of every error raised by eventhooks."""


class UnknownEventError(EventhooksError, KeyError):
    """A name that no event carries (Ultralytics accepts typos silently; eventhooks does not)."""

    def __init__(self, name: object, known: Iterable[str]) -> None:
        self.name = name
        self.suggestions = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.6)
        close = ", ".join(map(repr, self.suggestions))
        hint = f"; did you mean {close}?" if close else ""
        super().__init__(f"unknown event {name!r}{hint}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class RegistryError(EventhooksError, ValueError):
    """A custom event that cannot be registered (a name clash, a missing prefix)."""


class PayloadError(EventhooksError, TypeError):
    """Fields given to ``emit`` that do not validate into the event's payload.

    ``errors`` keeps pydantic's structured errors; the message names the event, each field,
    what was expected and what was given.
    """

    def __init__(self, event: str, errors: list[dict[str, Any]]) -> None:
        self.event = event
        self.errors = errors
        lines = []
        for err in errors:
            field = ".".join(str(part) for part in err.get("loc", ())) or "<payload>"
            given = err.get("input")
            shown = repr(given) if len(repr(given)) <= 60 else repr(given)[:57] + "..."
            lines.append(f"  field {field!r}: {err.get('msg')} (got {shown})")
        super().__init__(f"invalid payload for event {event!r}:\n" + "\n".join(lines))

    @classmethod
    def from_validation(cls, spelled: object, canonical: str, exc: Exception) -> PayloadError:
        """The error for an emit of ``spelled`` (canonical name ``canonical``) whose fields
        failed validation: a pydantic ``ValidationError``, or any exception that a value
        raised while being validated (a ``__float__`` or ``__fspath__`` that raises)."""
        errors = [dict(err) for err in exc.errors(include_url=False)] if hasattr(
            exc, "errors"
        ) else [{"loc": (), "msg": f"{type(exc).__name__}: {exc}", "input": None}]
        return cls(str(spelled), errors)

    @property
    def fields(self) -> list[str]:
        """The names of the fields at fault."""
        return [str(err["loc"][0]) for err in self.errors if err.get("loc")]


class SubscriberError(EventhooksError):
    """A subscriber raised while handling an event (error policy ``"raise"``).

    The original exception is chained as ``__cause__`` and kept in ``original``.
    """

    def __init__(self, event: str, subscriber: str, original: BaseException) -> None:
        self.event = event
        self.subscriber = subscriber
        self.original = original
        super().__init__(
            f"subscriber {subscriber} failed on event {event!r}: "
            f"{type(original).__name__}: {original}"
        )
