"""Recorders of what a bus delivers, and of what an adapter emits."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..bus import EventBus
from ..events import Event

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
        name = self.bus.registry.resolve(event).name if isinstance(event, str) else event.name
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
