"""One subscription: a subscriber, its filters, its error policy, and how it is held."""

from __future__ import annotations

import functools
import itertools
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from .events import Event

if TYPE_CHECKING:
    from .bus import EventBus

ErrorPolicy = Literal["raise", "warn", "disable"]
"""What a failing subscriber does: ``raise`` stops the emit with a :class:`SubscriberError`;
``warn`` logs and delivery goes on; ``disable`` logs and disconnects the subscriber after
``max_failures`` failures."""

Handler = Callable[[Any], object]

#: One sequence for every connection of every bus: "connection order" across all styles.
connection_seq = itertools.count()


def _not_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def describe(fn: object) -> str:
    """A subscriber's name for error messages: ``module.QualName`` where it has one."""
    if isinstance(fn, functools.partial):
        return f"partial({describe(fn.func)})"
    target = getattr(fn, "__func__", fn)
    qualname = getattr(target, "__qualname__", None) or type(fn).__qualname__
    module = getattr(target, "__module__", None)
    return f"{module}.{qualname}" if module and module != "builtins" else qualname


class Subscription:
    """A connected subscriber. Keep it to undo the subscription: ``sub.disconnect()``.

    Delivery order on an event is higher ``priority`` first, then connection order.
    """

    __slots__ = (
        "__weakref__", "_bus", "_fired", "_fn", "_ref", "count", "errors", "event",
        "every", "failures", "label", "max_failures", "once", "owner", "priority", "rank",
        "seq", "when",
    )  # fmt: skip

    def __init__(
        self,
        bus: EventBus,
        event: Event[Any],
        fn: Handler,
        *,
        priority: int = 0,
        every: int | None = None,
        once: int | None = None,
        when: Callable[[Any], bool] | None = None,
        rank: int | None = None,
        weak: bool = False,
        errors: ErrorPolicy | None = None,
        max_failures: int | None = None,
        owner: object = None,
        label: str | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"subscriber for {event.name!r} must be callable, got {fn!r}")
        for option, value in (("every", every), ("once", once), ("max_failures", max_failures)):
            if value is not None and (_not_int(value) or value < 1):
                raise ValueError(f"{option}= must be a positive int, got {value!r}")
        if rank is not None and (_not_int(rank) or rank < 0):
            raise ValueError(f"rank= must be an int >= 0, got {rank!r}")
        if when is not None and not callable(when):
            raise TypeError(f"when= must be a predicate on the payload, got {when!r}")
        if isinstance(priority, bool) or not isinstance(priority, (int, float)):
            raise TypeError(f"priority= must be a number, got {priority!r}")
        if errors not in (None, "raise", "warn", "disable"):
            raise ValueError(f"errors= must be 'raise', 'warn' or 'disable', got {errors!r}")
        self._bus = bus
        self.event = event
        self.priority = priority
        self.every = every
        self.once = once
        self.when = when
        self.rank = rank
        self.errors = errors
        self.max_failures = max_failures
        self.owner = owner
        self.label = label or describe(fn)
        self.seq = next(connection_seq)
        self.count = 0
        self.failures = 0
        self._fired = False
        self._fn: Handler | None
        self._ref: Callable[[], Handler | None] | None
        if weak:
            self._fn = None
            self._ref = _weak(fn, self._target_died)
        else:
            self._fn, self._ref = fn, None

    @property
    def filtered(self) -> bool:
        """Whether a filter (``every``, ``once``, ``when``, ``rank``) decides delivery."""
        return not (self.every is None and self.once is None and self.when is None
                    and self.rank is None)  # fmt: skip

    @property
    def weak(self) -> bool:
        return self._ref is not None

    @property
    def target(self) -> Handler | None:
        """The subscriber, or None when it was held weakly and is gone."""
        return self._fn if self._ref is None else self._ref()

    def __call__(self, payload: Any) -> object:
        """Deliver ``payload`` through the filters."""
        fn = self._fn if self._ref is None else self._ref()
        if fn is None or not self._passes(payload):
            return None
        return fn(payload)

    def _passes(self, payload: Any) -> bool:
        self.count += 1
        if self.rank is not None and getattr(payload, "rank", 0) != self.rank:
            return False
        if self.every is not None or self.once is not None:
            index = getattr(payload, self.event.counter, None) if self.event.counter else None
            nth = self.count if index is None else index + 1
            if self.every is not None and nth % self.every:
                return False
            if self.once is not None and (self._fired or nth != self.once):
                return False
        if self.when is not None and not self.when(payload):
            return False
        if self.once is not None:
            self._fired = True
        return True

    def receive(self, sender: object, payload: Any = None, **_: object) -> object:
        """The blinker-style entry point, for a raw ``signal.send(sender, payload=...)``."""
        return self(payload)

    def disconnect(self) -> None:
        """Undo this subscription (no error if it is already undone)."""
        self._bus.disconnect(self)

    @property
    def connected(self) -> bool:
        return self._bus.is_connected(self)

    def _target_died(self, _ref: object) -> None:
        self._bus.disconnect(self)

    def __repr__(self) -> str:
        return f"<Subscription {self.label} to {self.event.name} priority={self.priority}>"


def _weak(fn: Handler, callback: Callable[[Any], None]) -> Callable[[], Handler | None]:
    if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
        return weakref.WeakMethod(fn, callback)
    return weakref.ref(fn, callback)


class Attachment:
    """The subscriptions made by ``bus.attach(obj)``; ``disconnect()`` undoes them all."""

    def __init__(self, bus: EventBus, obj: object, subscriptions: tuple[Subscription, ...]):
        self._bus = bus
        self.obj = obj
        self.subscriptions = subscriptions

    def disconnect(self) -> None:
        for sub in self.subscriptions:
            sub.disconnect()

    def __repr__(self) -> str:
        names = ", ".join(s.event.name for s in self.subscriptions)
        return f"<Attachment {type(self.obj).__qualname__}: {names}>"
