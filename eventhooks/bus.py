"""The bus: subscribe, emit, order, filters, stop requests and the error policy.

**One record.** Who is subscribed to an event lives in one place: the event's :class:`_Route`,
an immutable snapshot holding the subscriptions in delivery order and the callables an emit
calls. Writers (``subscribe``, ``disconnect``, ``muted``...) build a new route under the bus's
lock and swap it in; ``emit`` takes no lock, it reads the current route and calls down it.
So a subscription made before an emit starts hears it, one undone before is not called, and
one undone while an emit is running is skipped by the rest of that emit.

**blinker.** Every event has a :class:`blinker.Signal` (``bus.signal(name)``): receivers
connected to it with plain blinker hear each event after the bus's own subscribers, called
blinker-style as ``receiver(bus, payload=payload)``. The bus uses blinker's public API only.

**Nothing lost.** A failing subscriber does not keep the event from the ones after it; the
error policy (``raise``, ``warn``, ``disable``) is applied once everyone has been called.

**Background.** A ``background=True`` subscription stands in its route as a handoff to the
bus's worker thread (:mod:`eventhooks._background`); ``teardown``'s route ends with a wait
for that worker, so a run's teardown returns once its background subscribers are done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, Unpack, overload

import blinker
from pydantic import BaseModel, ValidationError

from . import events as ev
from . import registry as _registry
from ._background import DEFAULT_QUEUE_SIZE, Worker, snapshot
from ._grammar import FULL, NOWHERE, SESSION_STARTS, Automaton
from ._subscription import (
    Attachment,
    ErrorPolicy,
    OptionArgs,
    Options,
    Subscription,
    _weak_owner,
    describe,
    hook_names,
    is_default_hook,
    is_not_a_hook,
    make_options,
)
from .errors import OrderError, PayloadError, SubscriberError, UnknownEventError
from .events import Event
from .payloads import (
    CONTEXT_FIELDS,
    NO_CONTEXT,
    BatchPayload,
    CheckpointPayload,
    EpochPayload,
    ExportPayload,
    ParamsUpdatePayload,
    PredictBatchPayload,
    RunContext,
    RunPayload,
    StepPayload,
    TeardownPayload,
)

if TYPE_CHECKING:
    from . import _names

log = logging.getLogger("eventhooks")

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R")

#: What an event nobody listens to delivers to (CPython's empty-tuple singleton).
_NOBODY: tuple[()] = ()


class _Unset:
    """``emit``'s default for its named fields: the field was not given."""

    def __repr__(self) -> str:
        return "<not given>"


_UNSET: Any = _Unset()
_DONE: Any = object()  # an emit's loop went through every call
#: Background failures raised on an emitting side: met by a nested emit inside a foreground
#: subscriber, they are not that subscriber's failure (any bus's, hence module-wide).
_BACKGROUND_RAISED: weakref.WeakSet[SubscriberError] = weakref.WeakSet()
_CONTEXT_KEYS = frozenset(CONTEXT_FIELDS)


class _Route:
    """An event's subscriptions and what an emit calls, immutable once published.

    ``entries[i]`` is behind ``calls[i]``: the subscriber itself when nothing stands between
    (no filter, held strongly), else its :class:`Subscription`. ``stale`` turns true when a
    newer route replaces this one, so an emit still walking it checks who is still live.
    """

    __slots__ = ("calls", "entries", "event", "stale", "validate")

    def __init__(
        self, event: Event[Any], entries: tuple[Any, ...], silent: bool, bus: EventBus
    ) -> None:
        if event is ev.teardown and bus._drains:  # the run ends once its background work is done
            entries = (*entries, _Drain(bus))
        self.event = event
        self.validate = event._validate
        self.entries = entries
        self.stale = False
        calls: list[Any] = []
        direct: set[int] = set()
        for entry in entries:
            if isinstance(entry, Subscription) and entry.background:
                calls.append(_Handoff(bus, entry))
                continue
            fn = entry.target if isinstance(entry, Subscription) and entry.direct else None
            # Each callable appears once, so a failure is traced to its subscription.
            if fn is not None and id(fn) not in direct:
                direct.add(id(fn))
                calls.append(fn)
            else:
                calls.append(entry)
        self.calls: tuple[Any, ...] = () if silent else tuple(calls)


class _PlainFailures(Exception):
    """Receivers connected with plain blinker that failed during one delivery."""

    def __init__(self, relay: _Relay, failures: list[tuple[Any, Exception]]) -> None:
        super().__init__(failures)
        self.relay, self.failures = relay, failures


class _Relay:
    """Stands in a route for the receivers connected with plain blinker to an event's signal.

    It asks blinker for the receivers at each emit (``receivers_for``): blinker keeps that
    record, the bus keeps none of its own.
    """

    __slots__ = ("bus", "failures", "signal")
    live = True  # as a Subscription that stays connected

    def would_deliver(self, batch: int | None, epoch: int | None) -> bool:
        return True

    def __init__(self, bus: EventBus, signal: blinker.Signal) -> None:
        self.bus, self.signal = bus, signal
        self.failures: dict[tuple[int, int], int] = {}  # for errors="disable"

    def __call__(self, payload: Any) -> None:
        if self.signal.is_muted:  # `with bus.signal(name).muted():`, blinker's own mute
            return
        failed: list[tuple[Any, Exception]] = []
        for receiver in self.signal.receivers_for(self.bus):
            try:
                receiver(self.bus, payload=payload)
            except Exception as exc:
                failed.append((receiver, exc))
        if failed:
            raise _PlainFailures(self, failed)


class _Handoff:
    """Stands in a route for a background subscription: queues a snapshot for the worker.

    The ``every=``/``once=`` filters are asked first, so a skipped batch costs no copy.
    """

    __slots__ = ("bus", "sub")

    def __init__(self, bus: EventBus, sub: Subscription) -> None:
        self.bus, self.sub = bus, sub

    def __call__(self, payload: Any) -> None:
        sub = self.sub
        if sub._lock is not None and not sub.would_deliver(
            getattr(payload, "batch", None), getattr(payload, "epoch", None)
        ):
            return
        self.bus._worker_of().put(sub, snapshot(payload))


class _Drain:
    """Last in ``teardown``'s route once the bus has had a background subscriber: the
    teardown returns when the worker has delivered everything before it."""

    __slots__ = ("bus",)
    live = True
    label = "eventhooks background drain"

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    def would_deliver(self, batch: int | None, epoch: int | None) -> bool:
        return True

    def __call__(self, payload: Any) -> None:
        worker = self.bus._worker
        if worker is not None:
            worker.drain()


class _EventSignal(blinker.Signal):
    """An event's blinker signal: tells its bus when a receiver connects or disconnects."""

    def __init__(self, bus: EventBus, event: Event[Any]) -> None:
        super().__init__(doc=event.doc)
        self._bus, self._event = bus, event
        self.relay = _Relay(bus, self)  # one per signal: it keeps the receivers' failure counts

    def connect(self, receiver: Any, sender: Any = blinker.ANY, weak: bool = True) -> Any:
        result = super().connect(receiver, sender, weak)
        self._bus._publish_changed(self._event)
        return result

    def disconnect(self, receiver: Any, sender: Any = blinker.ANY) -> None:
        super().disconnect(receiver, sender)
        self._bus._publish_changed(self._event)


class EventBus:
    """Delivers typed lifecycle events to subscribers; safe to share between threads.

    ``errors`` is the bus-wide error policy (``"raise"``, ``"warn"`` or ``"disable"``, the
    last disconnecting a subscriber after ``max_failures`` failures); each subscription can
    override it.
    """

    def __init__(
        self,
        *,
        errors: ErrorPolicy = "raise",
        max_failures: int = 3,
        registry: _registry.Registry | None = None,
        check_order: bool | Iterable[str] = False,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        if errors not in ("raise", "warn", "disable"):
            raise ValueError(f"errors= must be 'raise', 'warn' or 'disable', got {errors!r}")
        make_options(None, {"max_failures": max_failures})  # the same check as a subscription's
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size= must be a positive int, got {queue_size!r}")
        self.queue_size = queue_size
        self._worker: Worker | None = None  # started by the first background handoff
        self._pending: list[SubscriberError] = []  # background failures not yet raised
        self._drains = False  # whether teardown waits for the worker: once a background sub came
        self.errors: ErrorPolicy = errors
        self.max_failures = max_failures
        self.registry = registry or _registry.default
        # Reentrant: a __del__ or weakref callback that runs while a change allocates (a
        # garbage collection) may change the bus again on the same thread (see _write).
        self._lock = threading.RLock()
        self._writing = False
        self._queued: list[Callable[[], object]] = []
        self._routes: dict[Event[Any], _Route] = {}  # the one record of who is subscribed
        self._fast: dict[object, Any] = {}  # name or Event -> its route, or () if silent
        self._signals: dict[Event[Any], _EventSignal] = {}
        self._muted: dict[Event[Any] | None, int] = {}
        self._stop_reason: str | None = None
        self._stop = False
        self._write(self._publish_all)
        self.check_order = check_order
        if check_order is not False:  # the plain methods stay as they are: nothing on the hot path
            checker = _OrderCheck(self, None if check_order is True else check_order)
            setattr(self, "emit", checker.emit)  # noqa: B010
            setattr(self, "listening", checker.listening)  # noqa: B010

    # -- events -----------------------------------------------------------------------------

    def _learn(self, key: object) -> Event[Any]:
        """The event for a name or an Event, publishing its route on first use.

        A ``str`` subclass is read as the plain string it holds (its own ``__eq__`` or
        ``__hash__`` never runs); anything else that names no event is an
        :class:`UnknownEventError`.
        """
        if isinstance(key, str) and type(key) is not str:
            key = str.__getitem__(key, slice(None))  # the plain str inside
        if not isinstance(key, (str, Event)):
            raise UnknownEventError(key, self.registry.names())
        event = self.registry.resolve(key)
        if event not in self._routes:
            self._write(lambda: self._publish_new(event))
        return event

    def signal(self, event: str | Event[Any]) -> blinker.Signal:
        """The blinker signal of an event: ``connect`` to it with plain blinker if you like."""
        target = self._learn(event)
        if target not in self._signals:
            made = _EventSignal(self, target)
            self._write(lambda: self._signals.setdefault(target, made))
        return self._signals[target]

    def listening(
        self, event: str | Event[Any], *, batch: int | None = None, epoch: int | None = None
    ) -> bool:
        """Whether an emit of ``event`` would do anything: adapters skip the work if not.

        True when a subscriber would hear it. Given the emit's ``batch`` or ``epoch``, it also
        asks the ``every=``/``once=`` filters, so an adapter converts nothing on a batch that
        only an ``every=50`` subscriber would skip (``when=`` and ``rank=`` are judged on the
        payload: they count as listening).
        """
        try:
            route = self._fast[event]
        except Exception:  # unknown yet, unhashable, or a str subclass that misbehaves
            route = self._fast[self._learn(event)]
        if route is _NOBODY:
            return False
        if batch is None and epoch is None:
            return True
        return any(entry.would_deliver(batch, epoch) for entry in route.entries)

    # -- subscribing ------------------------------------------------------------------------

    # -- typed names (subscribe): generated by tests/core/test_typed_names.py --
    @overload
    def subscribe(
        self, event: _names.RunNames,
        fn: Callable[[RunPayload], object], /, options: Options | None = ..., *,
        label: str | None = ..., **changes: Unpack[OptionArgs[RunPayload]],
    ) -> Subscription: ...
    @overload
    def subscribe(
        self, event: _names.EpochNames,
        fn: Callable[[EpochPayload], object], /, options: Options | None = ..., *,
        label: str | None = ..., **changes: Unpack[OptionArgs[EpochPayload]],
    ) -> Subscription: ...
    @overload
    def subscribe(
        self, event: _names.BatchNames,
        fn: Callable[[BatchPayload], object], /, options: Options | None = ..., *,
        label: str | None = ..., **changes: Unpack[OptionArgs[BatchPayload]],
    ) -> Subscription: ...
    @overload
    def subscribe(
        self, event: _names.StepNames,
        fn: Callable[[StepPayload], object], /, options: Options | None = ..., *,
        label: str | None = ..., **changes: Unpack[OptionArgs[StepPayload]],
    ) -> Subscription: ...
    @overload
    def subscribe(
        self, event: _names.ParamsUpdateNames,
        fn: Callable[[ParamsUpdatePayload], object], /, options: Options | None = ..., *,
        label: str | None = ..., **changes: Unpack[OptionArgs[ParamsUpdatePayload]],
    ) -> Subscription: ...
    @overload
    def subscribe(
        self, event: _names.CheckpointNames,
        fn: Callable[[CheckpointPayload], object], /, options: Options | None = ..., *,
        label: str | None = ..., **changes: Unpack[OptionArgs[CheckpointPayload]],
    ) -> Subscription: ...
    @overload
    def subscribe(
        self, event: _names.TeardownNames,
        fn: Callable[[TeardownPayload], object], /, options: Options | None = ..., *,
        label: str | None = ..., **changes: Unpack[OptionArgs[TeardownPayload]],
    ) -> Subscription: ...
    @overload
    def subscribe(
        self, event: _names.PredictBatchNames,
        fn: Callable[[PredictBatchPayload], object], /, options: Options | None = ..., *,
        label: str | None = ..., **changes: Unpack[OptionArgs[PredictBatchPayload]],
    ) -> Subscription: ...
    @overload
    def subscribe(
        self, event: _names.ExportNames,
        fn: Callable[[ExportPayload], object], /, options: Options | None = ..., *,
        label: str | None = ..., **changes: Unpack[OptionArgs[ExportPayload]],
    ) -> Subscription: ...
    # -- end of typed names (subscribe) --
    @overload
    def subscribe(
        self, event: Event[P], fn: Callable[[P], object], /, options: Options | None = ...,
        *, label: str | None = ..., **changes: Unpack[OptionArgs[P]],
    ) -> Subscription: ...
    @overload
    def subscribe(
        self, event: str, fn: Callable[[Any], object], /, options: Options | None = ...,
        *, label: str | None = ..., **changes: Unpack[OptionArgs[Any]],
    ) -> Subscription: ...
    def subscribe(
        self,
        event: str | Event[Any],
        fn: Callable[[Any], object],
        /,
        options: Options | None = None,
        *,
        label: str | None = None,
        **changes: Unpack[OptionArgs[Any]],
    ) -> Subscription:
        """Connect ``fn(payload)`` to ``event`` and return the subscription (its undo handle).

        Options (:class:`Options`: ``priority``, ``every``, ``once``, ``when``, ``rank``,
        ``weak``, ``errors``, ``max_failures``, ``background``, ``overflow``) are given as
        keywords or bundled in ``options``; keywords override the bundle. ``label`` names the
        subscriber in errors.
        """
        return self._connect(self._learn(event), fn, make_options(options, changes), label=label)

    def _connect(
        self, event: Event[Any], fn: Callable[[Any], object], options: Options, *,
        owner: object = None, label: str | None = None, marks: bool = False,
    ) -> Subscription:  # fmt: skip
        sub = Subscription(self, event, fn, options, owner=owner, label=label, marks=marks)
        self._write(lambda: self._add(sub))
        return sub

    def _add(self, sub: Subscription) -> None:
        if sub.background and not self._drains:
            self._drains = True
            self._publish(ev.teardown)
        if sub.live:  # not undone meanwhile (a change queued behind another)
            subs = [e for e in self._routes[sub.event].entries if isinstance(e, Subscription)]
            self._publish(sub.event, tuple(sorted((*subs, sub), key=_delivery_order)))

    # -- typed names (on): generated by tests/core/test_typed_names.py --
    @overload
    def on(
        self, event: _names.RunNames, /,
        options: Options | None = ..., **changes: Unpack[OptionArgs[RunPayload]],
    ) -> Callable[[Callable[[RunPayload], R]], Callable[[RunPayload], R]]: ...
    @overload
    def on(
        self, event: _names.EpochNames, /,
        options: Options | None = ..., **changes: Unpack[OptionArgs[EpochPayload]],
    ) -> Callable[[Callable[[EpochPayload], R]], Callable[[EpochPayload], R]]: ...
    @overload
    def on(
        self, event: _names.BatchNames, /,
        options: Options | None = ..., **changes: Unpack[OptionArgs[BatchPayload]],
    ) -> Callable[[Callable[[BatchPayload], R]], Callable[[BatchPayload], R]]: ...
    @overload
    def on(
        self, event: _names.StepNames, /,
        options: Options | None = ..., **changes: Unpack[OptionArgs[StepPayload]],
    ) -> Callable[[Callable[[StepPayload], R]], Callable[[StepPayload], R]]: ...
    @overload
    def on(
        self, event: _names.ParamsUpdateNames, /,
        options: Options | None = ..., **changes: Unpack[OptionArgs[ParamsUpdatePayload]],
    ) -> Callable[[Callable[[ParamsUpdatePayload], R]], Callable[[ParamsUpdatePayload], R]]: ...
    @overload
    def on(
        self, event: _names.CheckpointNames, /,
        options: Options | None = ..., **changes: Unpack[OptionArgs[CheckpointPayload]],
    ) -> Callable[[Callable[[CheckpointPayload], R]], Callable[[CheckpointPayload], R]]: ...
    @overload
    def on(
        self, event: _names.TeardownNames, /,
        options: Options | None = ..., **changes: Unpack[OptionArgs[TeardownPayload]],
    ) -> Callable[[Callable[[TeardownPayload], R]], Callable[[TeardownPayload], R]]: ...
    @overload
    def on(
        self, event: _names.PredictBatchNames, /,
        options: Options | None = ..., **changes: Unpack[OptionArgs[PredictBatchPayload]],
    ) -> Callable[[Callable[[PredictBatchPayload], R]], Callable[[PredictBatchPayload], R]]: ...
    @overload
    def on(
        self, event: _names.ExportNames, /,
        options: Options | None = ..., **changes: Unpack[OptionArgs[ExportPayload]],
    ) -> Callable[[Callable[[ExportPayload], R]], Callable[[ExportPayload], R]]: ...
    # -- end of typed names (on) --
    @overload
    def on(
        self, event: Event[P], /, options: Options | None = ...,
        **changes: Unpack[OptionArgs[P]],
    ) -> Callable[[Callable[[P], R]], Callable[[P], R]]: ...
    @overload
    def on(
        self, event: str, /, options: Options | None = ..., **changes: Unpack[OptionArgs[Any]]
    ) -> Callable[[Callable[[Any], R]], Callable[[Any], R]]: ...
    def on(
        self, event: str | Event[Any], /, options: Options | None = None,
        **changes: Unpack[OptionArgs[Any]],
    ) -> Callable[[Callable[[Any], R]], Callable[[Any], R]]:  # fmt: skip
        """Decorator form of :meth:`subscribe`; returns the function unchanged.

        Undo with ``bus.disconnect(fn)``. Pass an ``events.*`` constant instead of a string
        and type checkers know the payload type.
        """
        target = self._learn(event)  # a misspelt name fails here, at decoration time
        bundle = make_options(options, changes)  # and so do bad options

        def decorate(fn: Callable[[Any], R]) -> Callable[[Any], R]:
            self._connect(target, fn, bundle)
            return fn

        return decorate

    def add_callback(self, event: str | Event[Any], fn: Callable[[Any], object]) -> Subscription:
        """Ultralytics-style ``add_callback(name, fn)``; a misspelt name is an error."""
        return self.subscribe(event, fn)

    def attach(
        self, obj: object, /, options: Options | None = None, **changes: Unpack[OptionArgs[Any]]
    ) -> Attachment:
        """Subscribe an object's ``on_*`` methods, Keras-style, under any of the 35 names.

        For an :class:`eventhooks.Callback` only overridden methods are subscribed, an
        overridden ``on_event(event, payload)`` hears every event the registry knows now,
        and an ``on_*`` method that names no event is an :class:`UnknownEventError` (mark a
        helper with :func:`eventhooks.not_a_hook`). For any other object, every callable
        attribute named like an event. A method under a Keras name and one under its
        Ultralytics twin both run, the Ultralytics one first. ``background`` left unset
        follows the object's own ``background`` class attribute (True for the trackers).
        """
        bundle = make_options(options, changes)
        if bundle.background is None and getattr(type(obj), "background", None) is True:
            bundle = dataclasses.replace(bundle, background=True)
        is_callback = getattr(obj, "__eventhooks_callback__", False) is True
        if is_callback:
            self._refuse_misspelt_hooks(obj)
        found: list[tuple[Event[Any], Callable[[Any], object], str]] = []
        for event in self.registry.events():
            for name in event.names:
                method = getattr(obj, name, None) if name.isidentifier() else None
                if callable(method) and not is_default_hook(method):
                    found.append((event, method, name))
        label = type(obj).__qualname__
        subs = tuple(
            self._connect(event, fn, bundle, owner=obj, marks=is_callback, label=f"{label}.{name}")
            for event, fn, name in found
        )
        on_event = getattr(obj, "on_event", None) if is_callback else None
        if callable(on_event) and not is_default_hook(on_event):
            # One handler per event, held as strongly as the object: weakly, it holds the
            # method weakly and the subscriptions go when the object does.
            strong = dataclasses.replace(bundle, weak=False)
            hook: Any = weakref.WeakMethod(on_event) if bundle.weak else on_event
            owner = _weak_owner(obj) if bundle.weak else obj
            handlers = tuple(
                self._connect(event, EventHandler(hook, event), strong, owner=owner,
                              marks=True, label=f"{label}.on_event")
                for event in self.registry.events()
            )  # fmt: skip
            if bundle.weak:
                weakref.finalize(obj, _drop_handlers, weakref.ref(self), handlers)
            subs += handlers
        if is_callback:
            obj.bus = self  # type: ignore[attr-defined]  # outside a delivery: the last attached
        return Attachment(self, obj, subs, weak=bundle.weak)

    def _refuse_misspelt_hooks(self, obj: object) -> None:
        base = next(c for c in type(obj).__mro__ if "__eventhooks_callback__" in vars(c))
        for name in hook_names(obj, base):
            if name == "on_event" or name in self.registry:
                continue
            if not is_not_a_hook(getattr(obj, name)):
                error = UnknownEventError(name, self.registry.names())
                error.add_note(
                    f"{type(obj).__qualname__}.{name} names no event: rename it, or mark it "
                    "@eventhooks.not_a_hook if it is a helper, not a hook"
                )
                raise error

    def disconnect(self, target: object, event: str | Event[Any] | None = None) -> int:
        """Undo subscriptions: a Subscription, an Attachment, a function or an attached object.

        With ``event``, only on that event. Returns how many connections were removed.
        """
        if isinstance(target, Attachment):
            return sum(self.disconnect(sub) for sub in target.subscriptions)
        if isinstance(target, Subscription):
            with self._lock:
                if not target.live or target._bus is not self:  # undone, or another bus's
                    return 0
                target.live = False  # from now on, no emit calls it
            self._write(lambda: self._drop(target))
            return 1
        only = None if event is None else self._learn(event)
        removed = 0
        for evt, route in list(self._routes.items()):  # matching runs user __eq__: no lock
            if only is not None and evt is not only:
                continue
            for entry in route.entries:
                if isinstance(entry, Subscription) and _owned_by(entry, target):
                    removed += self.disconnect(entry)
            signal = self._signals.get(evt)
            if signal is not None:
                for receiver in list(signal.receivers_for(self)):
                    if _same(receiver, target):
                        signal.disconnect(receiver)
                        removed += 1
        return removed

    def _drop(self, sub: Subscription) -> None:
        entries = self._routes[sub.event].entries
        if any(e is sub for e in entries):
            self._publish(sub.event, tuple(e for e in entries if e is not sub))

    def _forget(self, sub: Subscription) -> None:
        """A weakly held subscriber is gone (a weakref callback): disconnect it."""
        self.disconnect(sub)

    def _write(self, change: Callable[[], object]) -> None:
        """Make a change under the lock. A change asked for while another runs on this
        thread (by a __del__ or weakref callback that a garbage collection ran inside it) is
        queued and made right after, before the lock is released: changes never interleave,
        and none waits for a lock its own thread holds."""
        with self._lock:
            if self._writing:
                self._queued.append(change)
                return
            self._writing = True
            try:
                change()
                while self._queued:
                    self._queued.pop(0)()
            finally:
                self._writing = False

    def is_connected(self, sub: Subscription) -> bool:
        return sub.live

    def subscriptions(self, event: str | Event[Any] | None = None) -> list[Subscription]:
        """The live subscriptions, in delivery order per event."""
        routes = list(self._routes.values())
        if event is not None:
            routes = [self._routes[self._learn(event)]]
        return [
            entry
            for route in routes
            for entry in route.entries
            if isinstance(entry, Subscription) and entry.live and entry.target is not None
        ]

    @contextlib.contextmanager
    def muted(self, *events: str | Event[Any]) -> Iterator[None]:
        """Silence the bus (or only the given events) for the ``with`` block.

        A mute is the bus's, not the thread's: other threads' emits are silenced too.
        """
        keys: list[Event[Any] | None] = [self._learn(e) for e in events] or [None]
        self._mute(keys, +1)
        try:
            yield
        finally:
            self._mute(keys, -1)

    def _mute(self, keys: list[Event[Any] | None], step: int) -> None:
        self._write(lambda: self._mute_now(keys, step))

    def _mute_now(self, keys: list[Event[Any] | None], step: int) -> None:
        for key in keys:
            count = self._muted.get(key, 0) + step
            if count:
                self._muted[key] = count
            else:
                del self._muted[key]
        for event in list(self._routes) if None in keys else keys:
            self._publish(event)  # type: ignore[arg-type]

    # -- publishing routes (always under the lock) ------------------------------------------

    def _publish_all(self) -> None:
        for event in self.registry.events():
            self._publish(event)

    def _publish_new(self, event: Event[Any]) -> None:
        if event not in self._routes:  # another thread may have been first
            self._publish(event)

    def _publish_changed(self, event: Event[Any]) -> None:
        """A plain blinker receiver connected or disconnected: publish the route again."""
        self._write(lambda: self._publish(event))

    def _publish(self, event: Event[Any], entries: tuple[Any, ...] | None = None) -> None:
        """Swap in a new route for ``event``: ``entries`` if given, else the current ones.

        Runs no user code: entries are sorted by plain numbers, and a signal's receivers are
        only counted.
        """
        old = self._routes.get(event)
        if entries is None:
            entries = old.entries if old is not None else ()
        subs: tuple[Any, ...] = tuple(e for e in entries if isinstance(e, Subscription))
        signal = self._signals.get(event)
        if signal is not None and signal.receivers:
            subs = (*subs, signal.relay)
        silent = None in self._muted or event in self._muted
        route = self._routes[event] = _Route(event, subs, silent, self)
        fast = route if route.calls else _NOBODY
        for key in (event, *event.names):
            self._fast[key] = fast
        if old is not None:
            old.stale = True

    # -- dispatch ---------------------------------------------------------------------------

    def emit(
        self,
        event: str | Event[Any],
        /,
        *,
        batch: Any = _UNSET,
        epoch: Any = _UNSET,
        logs: Any = _UNSET,
        context: RunContext | None = None,
        **fields: Any,
    ) -> Any:
        """Validate ``fields`` into the event's payload and deliver it; returns the payload.

        When nobody listens, nothing is built or validated and ``None`` is returned. Wrong
        fields raise :class:`~eventhooks.errors.PayloadError` naming the event and the field.
        Every subscriber hears the event even when one before it fails; then the error
        policy applies (under ``raise``, the first failure is raised as
        :class:`~eventhooks.errors.SubscriberError`).

        ``batch``, ``epoch`` and ``logs`` (what every batch event carries) are named
        parameters only for speed: Python builds no keyword dict for them, which is most of
        what an emit nobody listens to would cost. The run's facts come as ``context`` (a
        :class:`~eventhooks.payloads.RunContext`, checked once per run: the lifecycle passes
        it) or as the keywords ``source``, ``params``, ``rank``, ``world_size``, checked here.
        """
        try:
            route = self._fast[event]
        except Exception:  # unknown yet, unhashable, or a str subclass that misbehaves
            route = self._fast[self._learn(event)]
        if route is _NOBODY:
            return None
        facts = None
        if fields and not _CONTEXT_KEYS.isdisjoint(fields):
            facts = {name: fields.pop(name) for name in CONTEXT_FIELDS if name in fields}
        if batch is not _UNSET:
            fields["batch"] = batch
        if epoch is not _UNSET:
            fields["epoch"] = epoch
        if logs is not _UNSET:
            fields["logs"] = logs
        try:
            payload = route.validate(fields)
        except ValidationError as exc:
            raise PayloadError.from_validation(event, route.event.name, exc) from None
        except Exception as exc:  # a custom payload's validator that raised
            raise PayloadError.from_validation(
                event, route.event.name, exc, payload=route.event.payload, fields=fields
            ) from exc
        if context is not None or facts is not None:  # the lifecycle's, as is: checked once
            payload.__dict__["_context"] = context if (
                facts is None and type(context) is RunContext
            ) else self._context_of(event, route.event, context, facts)
        try:
            for call in route.calls:
                call(payload)
                if route.stale:  # a change during this emit: check who is still live
                    break
            else:
                call = _DONE
        except Exception as exc:
            self._deliver_rest(route, call, payload, exc)
        else:
            if call is not _DONE:
                self._deliver_rest(route, call, payload, None)
        if self._pending:  # a background subscriber failed under "raise": its error, not ours
            self._raise_pending()
        return payload

    def _context_of(
        self, spelled: object, event: Event[Any], base: object, facts: dict[str, Any] | None
    ) -> RunContext:
        """The run's facts of one emit: the lifecycle's (checked once per run), or given as
        keywords and checked here."""
        if type(base) is RunContext and facts is None:
            return base
        if base is not None and type(base) is not RunContext:
            problem = {"loc": ("context",), "msg": "expected an eventhooks RunContext",
                       "input": base}  # fmt: skip
            raise PayloadError(spelled, [problem], canonical=event.name)  # type: ignore[arg-type]
        current = base or NO_CONTEXT
        try:
            return current.changed(**(facts or {}))
        except PayloadError as exc:
            errors = [{**err, "loc": err.get("loc", ())} for err in exc.errors]
            raise PayloadError(spelled, errors, canonical=event.name) from None  # type: ignore[arg-type]

    def _deliver_rest(
        self, route: _Route, done: object, payload: Any, failure: Exception | None
    ) -> None:
        """Deliver to the live subscribers after ``done``, then apply the error policies."""
        calls = route.calls
        index = next(i for i, call in enumerate(calls) if call is done)
        failures: list[tuple[Any, Exception]] = []
        if failure is not None:
            failures.append((route.entries[index], failure))
        try:
            for later in range(index + 1, len(calls)):
                entry = route.entries[later]
                if not entry.live:
                    continue
                try:
                    calls[later](payload)
                except Exception as exc:
                    failures.append((entry, exc))
        except BaseException:  # Ctrl-C stops delivery at once: say what failed before it
            for entry, earlier, _ in _expand(failures):
                if isinstance(earlier, SubscriberError) and earlier in _BACKGROUND_RAISED:
                    log.warning("%s", earlier, exc_info=earlier)
                    continue
                log.warning("subscriber %s failed on event %r", _label(entry),
                            route.event.name, exc_info=earlier)  # fmt: skip
            raise
        if failures:
            self._apply_policies(route.event, failures)

    def _apply_policies(self, event: Event[Any], failures: list[tuple[Any, Exception]]) -> None:
        """Log, count and disable as each failed subscriber's policy says; then raise the
        first failure whose policy is ``raise`` (later ones are logged)."""
        first: SubscriberError | None = None
        for entry, exc, relay in _expand(failures):
            label = _label(entry)
            policy = (entry.options.errors if isinstance(entry, Subscription) else None) or (
                self.errors
            )
            if isinstance(exc, SubscriberError) and exc in _BACKGROUND_RAISED:
                # A background failure raised by a nested emit inside this subscriber (on
                # this bus or another): the background subscriber's, under its own policy;
                # this one did not fail.
                if first is None:
                    first = exc
                else:
                    log.warning("%s (after an earlier failure)", exc, exc_info=exc.original)
                continue
            if policy == "raise":
                # An error from a nested emit already names its subscriber and event.
                error = exc if isinstance(exc, SubscriberError) else SubscriberError(
                    event.name, label, exc
                )
                if error is not exc:
                    error.__cause__ = exc
                if first is None:
                    first = error
                else:
                    log.warning("%s (after an earlier failure)", error, exc_info=exc)
                continue
            log.warning("subscriber %s failed on event %r", label, event.name, exc_info=exc)
            if policy == "disable":
                self._count_failure(event, entry, label, relay)
        if first is not None:
            raise first

    def _count_failure(
        self, event: Event[Any], entry: Any, label: str, relay: _Relay | None
    ) -> None:
        if relay is None:
            with self._lock:
                entry.failures = failures = entry.failures + 1
            if failures >= (entry.options.max_failures or self.max_failures):
                log.warning("subscriber %s disabled after %d failures", label, failures)
                self.disconnect(entry)
            return
        key = (id(getattr(entry, "__self__", None)), id(getattr(entry, "__func__", entry)))
        with self._lock:
            relay.failures[key] = failures = relay.failures.get(key, 0) + 1
        if failures >= self.max_failures:
            log.warning("subscriber %s disabled after %d failures", label, failures)
            self._signals[event].disconnect(entry)

    def emit_teardown(self, error: BaseException | None = None, /, **fields: Any) -> Any:
        """Emit ``teardown`` for a run that ends, failed (``error``) or not.

        For adapters, in their ``finally``/``except``: a subscriber failing at teardown must
        not hide the run's own error. With ``error`` given, such a failure is logged and
        added to ``error`` as a note, and ``error`` stays the one to re-raise; without it,
        the subscriber's :class:`SubscriberError` is raised as from any emit.
        """
        if error is None:
            try:
                return self.emit(ev.teardown, **fields)
            except PayloadError:  # bad fields: teardown still goes out, then the error
                self.emit(ev.teardown, **_facts_of(fields))
                raise
        try:
            return self.emit(ev.teardown, exception=error, **fields)
        except SubscriberError as failed:
            log.warning("%s (while the run was failing)", failed, exc_info=failed.original)
            error.add_note(f"eventhooks: {failed}")
            return None
        except PayloadError as bad:  # the adapter's fields: the run's error still goes out
            log.warning("%s (while the run was failing; teardown sent without them)", bad)
            error.add_note(f"eventhooks: {bad}")
            return self.emit_teardown(error, **_facts_of(fields))

    # -- background delivery ----------------------------------------------------------------

    def _worker_of(self) -> Worker:
        worker = self._worker
        if worker is None:
            with self._lock:
                worker = self._worker
                if worker is None:
                    worker = self._worker = Worker(self, self.queue_size)
        return worker

    def _background_failed(self, sub: Subscription, exc: BaseException) -> None:
        """On the worker: a background subscriber failed. Its policy applies there; a
        ``raise`` is kept for the emitting side's next emit (or ``flush``)."""
        if not isinstance(exc, Exception):  # SystemExit and the like, on a worker thread
            error = RuntimeError(f"{type(exc).__name__}: {exc}")
            error.__cause__ = exc
            exc = error
        try:
            self._apply_policies(sub.event, [(sub, exc)])
        except SubscriberError as failed:
            with self._lock:
                self._pending.append(failed)

    def _raise_pending(self) -> None:
        """Raise the first background failure kept for the emitting side; log the others."""
        worker = self._worker
        if worker is not None and worker.on_worker:  # the worker's own nested emits: not here
            return
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        _BACKGROUND_RAISED.add(pending[0])
        repeats: dict[str, int] = {}  # a failing sink fails again on each queued event
        for later in pending[1:]:
            repeats[str(later)] = repeats.get(str(later), 0) + 1
        for text, times in repeats.items():
            log.warning("%s (%d time%s in the background after the one raised)",
                        text, times, "" if times == 1 else "s")  # fmt: skip
        raise pending[0]

    def flush(self) -> None:
        """Wait until every background subscriber has handled every event emitted so far;
        then raise a background failure not yet raised (its policy being ``raise``)."""
        worker = self._worker
        if worker is not None:
            worker.drain()
        if self._pending:
            self._raise_pending()

    def close(self) -> None:
        """:meth:`flush`, then end the worker thread (a later background emit starts one)."""
        worker = self._worker
        if worker is not None:
            worker.close()
        if self._pending:
            self._raise_pending()

    # -- flow control -----------------------------------------------------------------------

    def request_stop(self, reason: str | None = None) -> None:
        """Ask the run in progress to stop after the current batch or epoch. A request is the
        run's: the next run forgets it when it opens (:class:`eventhooks.lifecycle.Run`)."""
        self._stop = True
        self._stop_reason = reason

    def _forget_stop_request(self) -> None:
        """A new run opens: an earlier run's stop request ends here (the lifecycle calls it)."""
        self._stop = False
        self._stop_reason = None

    @property
    def stop_requested(self) -> bool:
        """True once a subscriber asked to stop; forgotten when the next run starts."""
        return self._stop

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    # -- pickling ---------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """A bus crosses process boundaries (DDP workers) with its subscriptions.

        Subscribers must be picklable (module-level functions, callback objects); weakly held
        ones and plain blinker receivers stay behind, as do mutes.
        """
        if self.registry is not _registry.default:
            raise TypeError("only buses on the default registry can be pickled")
        subscriptions = [
            (sub.event.name, sub.target, sub.options, sub.owner, sub.label, sub.marks,
             sub.count, sub._fired)
            for sub in self.subscriptions()
            if not sub.weak and sub.target is not None
            and not isinstance(getattr(sub.target, "method", None), weakref.WeakMethod)
        ]  # fmt: skip
        return {
            "errors": self.errors,
            "max_failures": self.max_failures,
            "check_order": self.check_order,
            "queue_size": self.queue_size,
            "stop": (self._stop, self._stop_reason),
            "subscriptions": subscriptions,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            errors=state["errors"], max_failures=state["max_failures"],
            check_order=state.get("check_order", False),
            queue_size=state.get("queue_size", DEFAULT_QUEUE_SIZE),
        )
        self._stop, self._stop_reason = state["stop"]
        for name, fn, options, owner, label, marks, count, fired in state["subscriptions"]:
            sub = self._connect(
                self._learn(name), fn, options, owner=owner, label=label, marks=marks
            )
            sub.count, sub._fired = count, fired  # every=/once= go on where they were
            if marks:
                owner.bus = self

    def __repr__(self) -> str:
        live = sum(len(r.entries) for r in self._routes.values())
        return f"<EventBus {live} receivers, errors={self.errors!r}>"


class EventHandler:
    """``Callback.on_event`` bound to one event, called with the payload like any subscriber.

    Picklable (buses cross to DDP workers, and pickling needs the default registry anyway):
    the event travels by name.
    """

    __slots__ = ("event", "method")

    def __init__(self, method: Callable[[Event[Any], Any], object], event: Event[Any]) -> None:
        self.method, self.event = method, event

    def __call__(self, payload: Any) -> object:
        method = self.method
        if isinstance(method, weakref.WeakMethod):
            method = method()
            if method is None:  # the object is gone; its finalizer disconnects this
                return None
        return method(self.event, payload)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_event_handler, (self.method, self.event.name))


def _event_handler(method: Callable[[Event[Any], Any], object], name: str) -> EventHandler:
    return EventHandler(method, _registry.default.resolve(name))


def _drop_handlers(bus: weakref.ref[EventBus], subs: tuple[Subscription, ...]) -> None:
    """A weakly attached object is gone: its on_event handlers go too."""
    alive = bus()
    if alive is not None:
        for sub in subs:
            alive.disconnect(sub)


def _facts_of(fields: dict[str, Any]) -> dict[str, Any]:
    """Of an emit's fields, the run's facts alone (what a teardown keeps when the rest is bad)."""
    return {k: v for k, v in fields.items() if k == "context" or k in CONTEXT_FIELDS}


def _label(entry: Any) -> str:
    return entry.label if isinstance(entry, Subscription) else describe(entry)


def _delivery_order(entry: Any) -> tuple[float, int]:
    return (-entry.priority, entry.seq)


def _expand(
    failures: list[tuple[Any, Exception]],
) -> Iterator[tuple[Any, Exception, _Relay | None]]:
    """Each failure once, plain blinker receivers' failures one by one (with their relay)."""
    for entry, exc in failures:
        if isinstance(exc, _PlainFailures):
            yield from ((receiver, error, exc.relay) for receiver, error in exc.failures)
        else:
            yield entry, exc, None


def _owned_by(sub: Subscription, target: object) -> bool:
    """Whether ``bus.disconnect(target)`` means ``sub``: its function or its owner."""
    fn: object = sub.target
    if isinstance(fn, EventHandler):  # on_event, subscribed once per event
        fn = fn.method
    return sub.owner is target or _same(fn, target)


def _same(a: object, b: object) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b) and hasattr(a, "__self__")  # bound methods compare by (self, func)
    except Exception:
        return False


class _OrderCheck:
    """``EventBus(check_order=...)``: every emit is checked against the canonical order.

    A session started by a subscriber (an ``evaluate`` inside a fit: its emits are nested
    inside another emit, on the same thread) is followed apart until that subscriber returns,
    so it does not disturb the fit; one it left unfinished (it failed, and the subscriber
    handled that) is over then. A standalone session that failed midway (a VAL, PREDICT or
    EXPORT has no teardown) is over when the next session starts. ``listening`` is always
    true, so that adapters emit everything they would and the whole trace is checked. Meant
    for one run at a time on the bus. Given a set of events, the grammar is projected onto
    it, as ``assert_canonical_order(emitted=...)`` does.
    """

    def __init__(self, bus: EventBus, events: Iterable[str] | None) -> None:
        self.bus = bus
        self.emit_plainly = EventBus.emit.__get__(bus)
        names = None if events is None else {bus._learn(e).name for e in events}
        self.grammar = FULL if names is None else Automaton(names)
        self.sessions: list[list[Any]] = [[self.grammar.start, "the start of the bus", 0]]
        self.depth = threading.local()

    def listening(self, event: str | Event[Any], **counters: Any) -> bool:
        self.bus._learn(event)  # an unknown name is still an error
        return True

    def emit(self, event: str | Event[Any], /, **fields: Any) -> Any:
        name = self.bus._learn(event).name
        grammar, depth, sessions = self.grammar, getattr(self.depth, "value", 0), self.sessions
        while sessions[-1][2] > depth:  # the subscriber that started a session returned
            sessions.pop()
        if sessions[-1][2] < depth and name in SESSION_STARTS:
            sessions.append([grammar.start, "the start of a nested session", depth])
        session = sessions[-1]
        following = grammar.step(session[0], name)
        if following == NOWHERE and name in SESSION_STARTS and grammar.step(
            session[0], "teardown"
        ) == NOWHERE:  # inside a standalone session that failed: a new one begins
            following = grammar.step(grammar.start, name)
        if following == NOWHERE:
            raise OrderError(name, session[1], grammar.expected(session[0]))
        session[0], session[1] = following, name
        self.depth.value = depth + 1
        try:
            return self.emit_plainly(event, **fields)
        finally:
            self.depth.value = depth
