"""One subscription: a subscriber, its :class:`Options`, and how it is held.

The options are defined here once: ``subscribe``, ``on`` and ``attach`` take them as keywords
(typed by :class:`OptionArgs`) or bundled as an :class:`Options`, and pickling a bus carries
each subscription's :class:`Options` whole.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import numbers
import operator
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Generic, Literal, Protocol, TypedDict, TypeVar

from .events import Event

ErrorPolicy = Literal["raise", "warn", "disable"]
"""What a failing subscriber does: ``raise`` delivers the event to everyone else, then raises
a :class:`SubscriberError`; ``warn`` logs and delivery goes on; ``disable`` logs and
disconnects the subscriber after ``max_failures`` failures."""

Overflow = Literal["wait", "drop"]
"""What a background subscription does when its bus's queue is full: ``wait`` (the emitting
thread waits; nothing is lost) or ``drop`` (the event is not delivered to it, and counted)."""

Handler = Callable[[Any], object]

#: One sequence for every connection of every bus: "connection order" across all styles.
connection_seq = itertools.count()


def _positive(option: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{option}= must be a positive int, got {value!r}")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """How a subscriber is called: order, filters, error policy, how it is held.

    ``priority``: higher first, then connection order. ``every=N`` delivers every N-th
    occurrence and ``once=N`` only the N-th (counted by epoch on epoch events, by batch on
    batch events, by this subscription's deliveries elsewhere). ``when`` is a predicate on the
    payload; ``rank`` delivers only on that distributed rank. ``weak=True`` holds the
    subscriber by weak reference. ``errors``/``max_failures`` override the bus's policy.

    ``background=True`` runs the subscriber on the bus's worker thread (see
    :mod:`eventhooks._background`); ``None``, the default, lets an attached object choose by
    its ``background`` class attribute (the trackers say ``True``), else it is False.
    ``overflow`` is what a background handoff does when the queue is full: ``"wait"`` (the
    emitting thread waits, nothing is lost) or ``"drop"`` (the event is dropped for this
    subscriber and counted in ``Subscription.dropped``).
    """

    priority: int | float = 0
    every: int | None = None
    once: int | None = None
    when: Callable[[Any], bool] | None = None
    rank: int | None = None
    weak: bool = False
    errors: ErrorPolicy | None = None
    max_failures: int | None = None
    background: bool | None = None
    overflow: Overflow = "wait"

    def __post_init__(self) -> None:
        priority = self.priority
        # A plain number, copied without calling the value's own methods: the bus sorts by
        # it under its lock, where no user code may run.
        if isinstance(priority, bool) or not isinstance(priority, numbers.Real):
            raise TypeError(f"priority= must be a number, got {priority!r}")
        # numpy's numbers too; operator.index and float return exactly int and float.
        integral = isinstance(priority, numbers.Integral)
        plain = operator.index(priority) if integral else float(priority)
        if isinstance(plain, float) and not math.isfinite(plain):
            raise ValueError(f"priority= must be finite, got {plain!r}")
        object.__setattr__(self, "priority", plain)
        _positive("every", self.every)
        _positive("once", self.once)
        _positive("max_failures", self.max_failures)
        rank = self.rank
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            raise ValueError(f"rank= must be an int >= 0, got {rank!r}")
        if self.when is not None and not callable(self.when):
            raise TypeError(f"when= must be a predicate on the payload, got {self.when!r}")
        if self.errors not in (None, "raise", "warn", "disable"):
            raise ValueError(
                f"errors= must be 'raise', 'warn' or 'disable', got {self.errors!r}"
            )
        if not isinstance(self.weak, bool):
            raise TypeError(f"weak= must be True or False, got {self.weak!r}")
        if self.background is not None and not isinstance(self.background, bool):
            raise TypeError(f"background= must be True or False, got {self.background!r}")
        if self.overflow not in ("wait", "drop"):
            raise ValueError(f"overflow= must be 'wait' or 'drop', got {self.overflow!r}")

    @property
    def filtered(self) -> bool:
        """Whether a filter (``every``, ``once``, ``when``, ``rank``) decides delivery."""
        return not (self.every is None and self.once is None and self.when is None
                    and self.rank is None)  # fmt: skip


PayloadT = TypeVar("PayloadT")


class OptionArgs(TypedDict, Generic[PayloadT], total=False):
    """:class:`Options` as keywords of ``subscribe``/``on``/``attach`` (kept equal by a test).

    Generic in the payload type, so that ``when=`` is checked against the event's payload.
    """

    priority: int | float
    every: int | None
    once: int | None
    when: Callable[[PayloadT], bool] | None
    rank: int | None
    weak: bool
    errors: ErrorPolicy | None
    max_failures: int | None
    background: bool | None
    overflow: Overflow


def make_options(options: Options | None, changes: OptionArgs[Any]) -> Options:
    """``options`` (or the defaults) with the keyword ``changes`` applied, validated."""
    if options is not None and not isinstance(options, Options):
        raise TypeError(f"options= must be an eventhooks Options, got {options!r}")
    if not changes:
        return options or _DEFAULTS
    return dataclasses.replace(options or _DEFAULTS, **changes)


_DEFAULTS = Options()


def describe(fn: object) -> str:
    """A subscriber's name for error messages: ``module.QualName`` where it has one."""
    if isinstance(fn, functools.partial):
        return f"partial({describe(fn.func)})"
    target = getattr(fn, "__func__", fn)
    qualname = getattr(target, "__qualname__", None) or type(fn).__qualname__
    module = getattr(target, "__module__", None)
    return f"{module}.{qualname}" if module and module != "builtins" else qualname


class _Owner(Protocol):
    """What a subscription needs of its bus."""

    def disconnect(self, target: object, event: Any = None) -> int: ...
    def _forget(self, sub: Subscription) -> None: ...


class Subscription:
    """A connected subscriber. Keep it to undo the subscription: ``sub.disconnect()``.

    Delivery order on an event is higher ``priority`` first, then connection order.
    """

    __slots__ = (
        "__weakref__", "_bus", "_fired", "_fn", "_lock", "_owner", "_ref", "count", "dropped",
        "event", "failures", "label", "live", "marks", "options", "seq",
    )  # fmt: skip

    def __init__(
        self,
        bus: _Owner,
        event: Event[Any],
        fn: Handler,
        options: Options,
        *,
        owner: object = None,
        label: str | None = None,
        marks: bool = False,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"subscriber for {event.name!r} must be callable, got {fn!r}")
        self._bus = bus
        self.event = event
        self.options = options
        # An attached object held weakly stays weak here too (weakref.ref when it can be).
        self._owner: Any = _weak_owner(owner) if options.weak else owner  # or given weak
        self.label = label or describe(fn)
        self.marks = marks  # a Callback's method: its request_stop() reaches this bus
        self.seq = next(connection_seq)
        self.count = 0
        self.failures = 0
        self.dropped = 0  # background, overflow="drop": events not delivered for a full queue
        self.live = True  # False once disconnected: an emit in progress skips it
        self._fired = False
        self._lock = threading.Lock() if options.filtered else None
        self._fn: Handler | None
        self._ref: Callable[[], Handler | None] | None
        if options.weak:
            self._fn = None
            self._ref = _weak(fn, self._target_died)
        else:
            self._fn, self._ref = fn, None

    # The options, read where a reader of a subscription would look for them.
    priority = property(lambda self: self.options.priority)
    every = property(lambda self: self.options.every)
    once = property(lambda self: self.options.once)
    when = property(lambda self: self.options.when)
    rank = property(lambda self: self.options.rank)
    errors = property(lambda self: self.options.errors)
    max_failures = property(lambda self: self.options.max_failures)

    @property
    def weak(self) -> bool:
        return self._ref is not None

    @property
    def owner(self) -> object:
        """The object ``attach`` subscribed this for (None once a weakly held one is gone)."""
        owner = self._owner
        return owner() if isinstance(owner, weakref.ref) else owner

    @property
    def direct(self) -> bool:
        """Whether the bus may call the subscriber itself, skipping this wrapper."""
        return self._ref is None and not self.marks and self._lock is None and not (
            self.options.background
        )

    @property
    def background(self) -> bool:
        """Whether the subscriber runs on the bus's worker thread."""
        return self.options.background is True

    @property
    def target(self) -> Handler | None:
        """The subscriber, or None when it was held weakly and is gone."""
        return self._fn if self._ref is None else self._ref()

    def __call__(self, payload: Any) -> object:
        """Deliver ``payload`` through the filters."""
        fn = self._fn if self._ref is None else self._ref()
        if fn is None or (self._lock is not None and not self._passes(payload)):
            return None
        if self.marks:  # a Callback's method: while it runs, its bus is this one
            try:
                stack = _local.stack
            except AttributeError:
                stack = _local.stack = []
            stack.append(self)
            try:
                return fn(payload)
            finally:
                stack.pop()
        return fn(payload)

    def would_deliver(self, batch: int | None, epoch: int | None) -> bool:
        """Whether an emit with these counters would pass ``every``/``once`` (``when`` and
        ``rank`` need the payload: they count as passing)."""
        if self._ref is not None and self._ref() is None:
            return False
        options = self.options
        if options.every is None and options.once is None:
            return True
        counter = self.event.counter
        if counter == "batch" and batch is not None:
            nth = batch + 1
        elif counter == "epoch" and epoch is not None:
            nth = epoch + 1
        else:  # counted by deliveries (an emit skipped would never count) or by a field not
            return True  # given here: only the payload can tell
        if options.every is not None and nth % options.every:
            return False
        return options.once is None or (not self._fired and nth == options.once)

    def _passes(self, payload: Any) -> bool:
        """The filters. Counting and firing ``once`` hold the lock; ``when`` (user code)
        runs outside it, so it may take locks of its own."""
        options = self.options
        lock: threading.Lock = self._lock  # type: ignore[assignment]  # filtered: it has one
        with lock:
            self.count += 1
            count = self.count
        if options.rank is not None and getattr(payload, "rank", 0) != options.rank:
            return False
        if options.every is not None or options.once is not None:
            counter = self.event.counter
            index = getattr(payload, counter, None) if counter else None
            nth = count if index is None else index + 1
            if options.every is not None and nth % options.every:
                return False
            if options.once is not None and (self._fired or nth != options.once):
                return False
        if options.when is not None and not options.when(payload):
            return False
        if options.once is not None:
            with lock:
                if self._fired:  # another thread fired it meanwhile
                    return False
                self._fired = True
        return True

    def disconnect(self) -> None:
        """Undo this subscription (no error if it is already undone)."""
        self._bus.disconnect(self)

    @property
    def connected(self) -> bool:
        return self.live

    def _target_died(self, _ref: object) -> None:
        self._bus._forget(self)

    def __repr__(self) -> str:
        return f"<Subscription {self.label} to {self.event.name} priority={self.priority}>"


def _weak(fn: Handler, callback: Callable[[Any], None]) -> Callable[[], Handler | None]:
    if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
        return weakref.WeakMethod(fn, callback)
    return weakref.ref(fn, callback)


def _weak_owner(owner: object) -> object:
    if owner is None:
        return None
    try:
        return weakref.ref(owner)
    except TypeError:  # not weakly referable: its methods cannot be held weakly either
        return owner


class Attachment:
    """The subscriptions made by ``bus.attach(obj)``; ``disconnect()`` undoes them all."""

    def __init__(
        self, bus: _Owner, obj: object, subscriptions: tuple[Subscription, ...],
        weak: bool = False,
    ) -> None:  # fmt: skip
        self._bus = bus
        self._obj = _weak_owner(obj) if weak else obj
        self.subscriptions = subscriptions

    @property
    def obj(self) -> Any:
        """The attached object (None once a weakly attached one is gone)."""
        obj = self._obj
        return obj() if isinstance(obj, weakref.ref) else obj

    def disconnect(self) -> None:
        for sub in self.subscriptions:
            sub.disconnect()

    def __repr__(self) -> str:
        names = ", ".join(s.event.name for s in self.subscriptions)
        return f"<Attachment {type(self.obj).__qualname__}: {names}>"


# -- which bus is delivering to a callback, per thread ------------------------------------------

_local = threading.local()


def delivering_bus(owner: object) -> Any:
    """The bus delivering an event to ``owner`` on this thread (innermost), or None."""
    stack: list[Subscription] = getattr(_local, "stack", [])
    return next((sub._bus for sub in reversed(stack) if sub.owner is owner), None)


# -- marking methods of Callback: default no-ops, and helpers that are not hooks ---------------

_DEFAULT = "__eventhooks_default_hook__"
_NOT_A_HOOK = "__eventhooks_not_a_hook__"

F = Any


def default_hook(fn: F) -> F:
    """Marks ``Callback``'s own no-op hooks: a subclass that does not override one is not
    subscribed to that event."""
    setattr(fn, _DEFAULT, True)
    return fn


def not_a_hook(fn: F) -> F:
    """Mark a method named ``on_...`` that is not an event hook, so ``attach`` accepts it.

    ``attach`` refuses a :class:`~eventhooks.Callback` whose ``on_*`` method names no event
    (a misspelt hook would otherwise never run)::

        class Plotter(Callback):
            @not_a_hook
            def on_disk(self) -> bool: ...
    """
    setattr(fn, _NOT_A_HOOK, True)
    return fn


def is_default_hook(method: object) -> bool:
    return getattr(getattr(method, "__func__", method), _DEFAULT, False) is True


def is_not_a_hook(method: object) -> bool:
    return getattr(getattr(method, "__func__", method), _NOT_A_HOOK, False) is True


def hook_names(obj: object, base: type) -> Iterator[str]:
    """Methods named ``on_...`` that the classes of ``obj`` derived from ``base`` define
    (another base's methods, say Keras', are that library's business; so are attributes
    set on the instance)."""
    names: set[str] = set()
    for cls in type(obj).__mro__:
        if cls is not base and isinstance(cls, type) and issubclass(cls, base):
            names.update(n for n, v in vars(cls).items()
                         if n.startswith("on_") and callable(v))  # fmt: skip
    yield from sorted(names)
