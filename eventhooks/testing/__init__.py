"""A testing kit for adapters, ours and other libraries': record a run, check its order.

>>> from eventhooks import EventBus
>>> from eventhooks.testing import Recorder, assert_canonical_order
>>> bus = EventBus()
>>> rec = Recorder(bus)
>>> _ = bus.emit("on_train_begin", logs={})
>>> _ = bus.emit("on_train_end")
>>> rec.names
['on_train_start', 'on_train_end']
>>> assert_canonical_order(rec.names)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import registry as _registry
from ..bus import EventBus
from ..events import BUILTIN, Event
from ._grammar import check

__all__ = ["CanonicalOrderError", "CountingBus", "Recorder", "assert_canonical_order"]

#: Recorders listen before every other subscriber, so a failing subscriber cannot hide an event.
RECORDER_PRIORITY = 1_000_000


class Recorder:
    """Records every event a bus delivers: canonical names and payloads, in order.

    ``events`` limits recording to some events (any of their names); by default every event
    the bus's registry knows, custom ones included.
    """

    def __init__(
        self,
        bus: EventBus,
        events: Iterable[str | Event[Any]] | None = None,
        *,
        priority: int = RECORDER_PRIORITY,
    ) -> None:
        self.bus = bus
        self.records: list[tuple[str, Any]] = []
        registry = bus.registry
        chosen = registry.events() if events is None else [registry.resolve(e) for e in events]
        self._subs = [
            bus.subscribe(event, self._recorder(event.name), priority=priority, label="Recorder")
            for event in chosen
        ]

    def _recorder(self, name: str) -> Any:
        append = self.records.append
        return lambda payload: append((name, payload))

    @property
    def names(self) -> list[str]:
        """The canonical names recorded, in order."""
        return [name for name, _ in self.records]

    def payloads(self, event: str | Event[Any]) -> list[Any]:
        """The payloads recorded for one event (any of its names)."""
        name = _registry.default.resolve(event).name if isinstance(event, str) else event.name
        return [payload for recorded, payload in self.records if recorded == name]

    def clear(self) -> None:
        self.records.clear()

    def close(self) -> None:
        """Stop recording."""
        for sub in self._subs:
            sub.disconnect()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class CountingBus(EventBus):
    """A real bus that also notes every ``emit`` call, heard or not.

    For checking an adapter's hot path: with nobody listening to batch moments, an adapter
    should not even call ``emit`` for them (``bus.listening(name)`` first).
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.emitted: list[str] = []

    def emit(self, event: str | Event[Any], /, **fields: Any) -> Any:
        self.emitted.append(event if isinstance(event, str) else event.name)
        return super().emit(event, **fields)


class CanonicalOrderError(AssertionError):
    """A trace that breaks the canonical order; ``index`` is the first event at fault."""

    def __init__(self, message: str, index: int, expected: set[str]) -> None:
        super().__init__(message)
        self.index = index
        self.expected = expected


def assert_canonical_order(
    names: Iterable[str], *, emitted: Iterable[str] | None = None
) -> None:
    """Check a trace of event names against the canonical order (PRODUCT.md §1).

    Names may be Keras or Ultralytics spellings. ``emitted`` is the set of events the adapter
    under test emits (default: those present in the trace); the grammar is projected onto
    it, so an adapter that cannot emit, say, ``optimizer_step`` is checked on the rest.
    Raises :class:`CanonicalOrderError` naming the first event that breaks the order.
    """
    builtin = {name: event.name for event in BUILTIN for name in event.names}
    trace: list[str] = []
    for name in names:
        if name not in builtin:
            message = f"{name!r} is not a built-in lifecycle event"
            raise CanonicalOrderError(message, len(trace), set())
        trace.append(builtin[name])
    subset = frozenset(trace if emitted is None else (builtin[n] for n in emitted))
    stray = [n for n in trace if n not in subset]
    if stray:
        message = f"{stray[0]!r} is in the trace but not in emitted="
        raise CanonicalOrderError(message, trace.index(stray[0]), set())
    ok, index, expected = check(trace, subset)
    if ok:
        return
    got = trace[index] if index < len(trace) else "the end of the trace"
    before = ", ".join(trace[max(0, index - 3) : index]) or "the start"
    wanted = " or ".join(sorted(expected)) or "the end of the trace"
    raise CanonicalOrderError(
        f"event #{index} ({got}) breaks the canonical order after [{before}]: "
        f"expected {wanted}",
        index,
        expected,
    )
