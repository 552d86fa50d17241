"""The registry: every name an event answers to, built-in or registered by another library.

``resolve("on_epoch_end")`` and ``resolve("on_fit_epoch_end")`` return the same
:class:`~eventhooks.events.Event`. Other libraries add their own events under their own
prefix (``"mylib.on_sample"``); a clash with a known name is a :class:`RegistryError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, TypeVar

from . import events as _events
from .errors import RegistryError, UnknownEventError
from .events import Event
from .payloads import Payload

P = TypeVar("P", bound=Payload)

_CUSTOM_NAME = re.compile(r"^[A-Za-z_][\w-]*\.[A-Za-z_][\w.-]*$")


class Registry:
    """A mapping from names to events. Buses look names up here when first used."""

    def __init__(self, builtin: tuple[Event[Any], ...] = _events.BUILTIN) -> None:
        self._by_name: dict[str, Event[Any]] = {}
        self._events: list[Event[Any]] = []
        for event in builtin:
            self._add(event)

    def _add(self, event: Event[Any]) -> None:
        for name in event.names:
            if name in self._by_name:
                raise RegistryError(f"event name {name!r} is already registered")
        self._events.append(event)
        for name in event.names:
            self._by_name[name] = event

    def register(
        self,
        name: str,
        payload: type[P],
        *,
        aliases: tuple[str, ...] = (),
        doc: str = "",
        counter: _events.Counter | None = None,
    ) -> Event[P]:
        """Add a library's own event; ``name`` and aliases need a prefix: ``"mylib.on_x"``.

        ``payload`` must subclass :class:`eventhooks.payloads.Payload`, so that it carries
        what every event carries (``source``, ``rank``...) and dumps to JSON as built-in
        payloads do. ``counter`` names the payload field that ``every=``/``once=`` count by.
        """
        if len({name, *aliases}) != 1 + len(aliases):
            raise RegistryError(f"event {name!r}: its names repeat: {(name, *aliases)}")
        if counter is not None and counter not in getattr(payload, "model_fields", {}):
            raise RegistryError(
                f"event {name!r}: counter={counter!r} needs a {counter!r} field in "
                f"{getattr(payload, '__name__', payload)!r}"
            )
        for candidate in (name, *aliases):
            if not _CUSTOM_NAME.match(candidate):
                raise RegistryError(
                    f"custom event name {candidate!r} needs the library's prefix, "
                    "as in 'mylib.on_sample_logged'"
                )
            if candidate in self._by_name:
                raise RegistryError(
                    f"cannot register {candidate!r}: the name is already taken by "
                    f"{self._by_name[candidate].name!r}"
                )
        if not (isinstance(payload, type) and issubclass(payload, Payload)):
            raise RegistryError(
                f"payload of {name!r} must be a subclass of eventhooks.Payload, got {payload!r}"
            )
        event = Event(name, payload, doc, aliases, counter)
        self._add(event)
        return event

    def resolve(self, name: str | Event[Any]) -> Event[Any]:
        """The event for a name (any of its names), or for an Event registered here."""
        if isinstance(name, Event):
            if self._by_name.get(name.name) is not name:
                error = UnknownEventError(name.name, ())
                error.add_note("an Event registered in another registry than this bus's")
                raise error
            return name
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            raise UnknownEventError(name, self._by_name) from None

    def names(self) -> list[str]:
        """Every known name: canonical names and aliases, built-in first, in canonical order."""
        return list(self._by_name)

    def events(self) -> list[Event[Any]]:
        """Every event once, built-in first, in canonical order."""
        return list(self._events)

    def schema(self, name: str | None = None) -> dict[str, Any]:
        """JSON Schema of one event's payload, or of all of them keyed by canonical name."""
        if name is not None:
            return self.resolve(name).json_schema()
        return {event.name: event.json_schema() for event in self._events}

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Event[Any]]:
        return iter(self._events)


#: The process-wide registry that buses use unless given another.
default = Registry()

names = default.names
resolve = default.resolve
register = default.register
schema = default.schema
events = default.events
