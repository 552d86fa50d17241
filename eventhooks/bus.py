"""The bus: subscribe, emit, order, filters, stop requests and the error policy.

Every event is a :class:`blinker.Signal` of this bus (``bus.signal(name)``), and blinker is
the connection layer: receivers connected with plain blinker hear the bus too, called as
``receiver(bus, payload=payload)``. Dispatch does not go through ``Signal.send`` (about 50x
a bare call): each event keeps a list of callables, rebuilt only when its signal connects or
disconnects a receiver (blinker's weak-reference cleanup included), so an emit with nobody
listening is one dict lookup, and one with listeners is one pydantic validation and a loop.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar, overload

import blinker
from blinker._utilities import make_id
from pydantic import BaseModel, ValidationError

from . import events as ev
from . import registry as _registry
from ._subscription import (
    Attachment,
    ErrorPolicy,
    Subscription,
    connection_seq,
    describe,
)
from .callback import Callback
from .errors import PayloadError, SubscriberError
from .events import Event

log = logging.getLogger("eventhooks")

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R")

#: Where a run begins or ends: a stop request from an earlier run is forgotten at the start.
_RUN_EDGE_EVENTS: tuple[Event[Any], ...] = (
    ev.on_pretrain_routine_start, ev.on_train_start, ev.on_train_end, ev.teardown,
)  # fmt: skip


#: What an event nobody listens to delivers to (CPython's empty-tuple singleton).
_NOBODY: tuple[()] = ()


class _Unset:
    """``emit``'s default for its named fields: the field was not given."""

    def __repr__(self) -> str:
        return "<not given>"


_UNSET: Any = _Unset()


class _Calls(list):  # type: ignore[type-arg]
    """An event's delivery list, with what ``emit`` needs beside it (no second lookup).

    A list, not a tuple: a subscriber disconnected during an emit is replaced in the list
    being iterated by a no-op, so it is not called, as blinker's ``send`` would not call it.
    An empty ``_Calls`` (a run-edge event nobody listens to) is not the ``()`` singleton.
    """

    __slots__ = ("__weakref__", "edge", "entries", "event", "validate")

    def __init__(self, event: Event[Any], calls: list[Any], entries: tuple[Any, ...]) -> None:
        super().__init__(calls)
        self.event = event
        self.validate = event._validate
        self.entries = entries
        self.edge = event in _RUN_EDGE_EVENTS


def _skip(payload: Any) -> None:
    """Stands in for a subscriber disconnected while an emit was delivering."""


class _EventSignal(blinker.Signal):
    """A blinker signal that tells its bus whenever its receivers change."""

    def __init__(self, event: Event[Any], changed: Callable[[Event[Any]], None]) -> None:
        super().__init__(doc=event.doc)
        self.event = event
        self.connected_at: dict[Hashable, int] = {}
        self.plain: dict[Hashable, _BlinkerReceiver] = {}  # failures survive rebuilds
        self._changed = changed

    def hears(self, receiver_id: Hashable, sender_id: Hashable) -> bool:
        """Whether a receiver is connected for any sender or for this one."""
        senders = self._by_receiver.get(receiver_id, ())
        return blinker.base.ANY_ID in senders or sender_id in senders

    def connect(self, receiver: Any, sender: Any = blinker.ANY, weak: bool = True) -> Any:
        self.connected_at.setdefault(make_id(receiver), next(connection_seq))
        result = super().connect(receiver, sender, weak)
        self._changed(self.event)
        return result

    def _disconnect(self, receiver_id: Hashable, sender_id: Hashable) -> None:
        super()._disconnect(receiver_id, sender_id)
        if receiver_id not in self.receivers:
            self.connected_at.pop(receiver_id, None)
            self.plain.pop(receiver_id, None)
        self._changed(self.event)


class _BlinkerReceiver:
    """A receiver connected with plain blinker, called blinker-style."""

    __slots__ = ("bus", "errors", "failures", "held", "label", "max_failures", "priority", "seq")

    def __init__(self, bus: EventBus, held: Any, seq: int) -> None:
        self.bus, self.held, self.seq = bus, held, seq
        self.priority = 0
        self.errors: ErrorPolicy | None = None
        self.max_failures: int | None = None
        self.failures = 0
        self.label = describe(self.target)

    @property
    def target(self) -> Any:
        return self.held() if isinstance(self.held, weakref.ref) else self.held

    def __call__(self, payload: Any) -> object:
        fn = self.target
        return None if fn is None else fn(self.bus, payload=payload)


class EventBus:
    """Delivers typed lifecycle events to subscribers.

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
    ) -> None:
        if errors not in ("raise", "warn", "disable"):
            raise ValueError(f"errors= must be 'raise', 'warn' or 'disable', got {errors!r}")
        self.errors: ErrorPolicy = errors
        self.max_failures = max_failures
        self.registry = registry or _registry.default
        self._signals: dict[Event[Any], _EventSignal] = {}
        self._calls: dict[object, Any] = {}  # name or Event -> _Calls, or () if nobody listens
        # Every delivery list of an event that an emit may still be iterating (nested emits
        # and rebuilds during an emit leave several): gone subscriptions are skipped in all.
        self._lists: dict[Event[Any], list[weakref.ref[_Calls]]] = {}
        self._entries: dict[Event[Any], tuple[Any, ...]] = {}
        self._event_of: dict[object, Event[Any]] = {}
        self._muted: dict[Event[Any] | None, int] = {}
        self._stop_reason: str | None = None
        self._stop = False
        self._pretrain_opened = False
        for event in self.registry.events():
            self._learn(event)

    # -- events -----------------------------------------------------------------------------

    def _learn(self, key: object) -> Event[Any]:
        """Find an event by name or object, creating its signal on first use."""
        try:
            event = self._event_of.get(key)
        except TypeError:  # unhashable: no name of any event
            event = None
        if event is not None:
            return event
        event = self.registry.resolve(key)  # type: ignore[arg-type]
        if event not in self._signals:
            self._signals[event] = _EventSignal(event, self._rebuild)
            for name in (event, *event.names):
                self._event_of[name] = event
            self._rebuild(event)
        self._event_of[key] = event
        return event

    def signal(self, event: str | Event[Any]) -> blinker.Signal:
        """The blinker signal of an event: ``connect`` to it with plain blinker if you like."""
        return self._signals[self._learn(event)]

    def listening(self, event: str | Event[Any]) -> bool:
        """Whether an emit of ``event`` would do anything: adapters skip the work if not.

        True when a subscriber would hear it, and always for the events where a run begins
        or ends (``on_pretrain_routine_start``, ``on_train_start``, ``on_train_end``,
        ``teardown``): emitting them forgets the previous run's stop request.
        """
        try:
            return self._calls[event] is not _NOBODY
        except (KeyError, TypeError):
            return self._calls[self._learn(event)] is not _NOBODY

    # -- subscribing ------------------------------------------------------------------------

    def subscribe(
        self,
        event: str | Event[Any],
        fn: Callable[[Any], object],
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
    ) -> Subscription:
        """Connect ``fn(payload)`` to ``event`` and return the subscription (its undo handle).

        ``every=N`` delivers every N-th occurrence and ``once=N`` only the N-th, counted by
        epoch on epoch events, by batch on batch events, and by this subscription's own count
        of deliveries elsewhere; ``once`` fires at most once. ``when`` is a predicate on the
        payload; ``rank`` delivers only on that distributed rank. ``weak=True`` holds ``fn``
        by weak reference: once it is gone it is no longer called.
        """
        target = self._learn(event)
        sub = Subscription(
            self, target, fn, priority=priority, every=every, once=once, when=when, rank=rank,
            weak=weak, errors=errors, max_failures=max_failures, owner=owner, label=label,
        )  # fmt: skip
        self._signals[target].connect(sub.receive, weak=False)
        return sub

    @overload
    def on(
        self, event: Event[P], *, priority: int = ..., every: int | None = ...,
        once: int | None = ..., when: Callable[[P], bool] | None = ..., rank: int | None = ...,
        weak: bool = ..., errors: ErrorPolicy | None = ..., max_failures: int | None = ...,
    ) -> Callable[[Callable[[P], R]], Callable[[P], R]]: ...
    @overload
    def on(
        self, event: str, *, priority: int = ..., every: int | None = ...,
        once: int | None = ..., when: Callable[[Any], bool] | None = ..., rank: int | None = ...,
        weak: bool = ..., errors: ErrorPolicy | None = ..., max_failures: int | None = ...,
    ) -> Callable[[Callable[[Any], R]], Callable[[Any], R]]: ...
    def on(
        self, event: str | Event[Any], *, priority: int = 0, every: int | None = None,
        once: int | None = None, when: Callable[[Any], bool] | None = None,
        rank: int | None = None, weak: bool = False, errors: ErrorPolicy | None = None,
        max_failures: int | None = None,
    ) -> Callable[[Callable[[Any], R]], Callable[[Any], R]]:
        """Decorator form of :meth:`subscribe`; returns the function unchanged.

        Undo with ``bus.disconnect(fn)``. Pass an ``events.*`` constant instead of a string
        and type checkers know the payload type.
        """
        self._learn(event)  # a misspelt name fails here, at decoration time

        def decorate(fn: Callable[[Any], R]) -> Callable[[Any], R]:
            self.subscribe(
                event, fn, priority=priority, every=every, once=once, when=when, rank=rank,
                weak=weak, errors=errors, max_failures=max_failures,
            )  # fmt: skip
            return fn

        return decorate

    def add_callback(self, event: str | Event[Any], fn: Callable[[Any], object]) -> Subscription:
        """Ultralytics-style ``add_callback(name, fn)``; a misspelt name is an error."""
        return self.subscribe(event, fn)

    def attach(
        self,
        obj: object,
        *,
        priority: int = 0,
        errors: ErrorPolicy | None = None,
        max_failures: int | None = None,
    ) -> Attachment:
        """Subscribe an object's ``on_*`` methods, Keras-style, under any of the 35 names.

        For an :class:`eventhooks.Callback` only overridden methods are subscribed, and an
        overridden ``on_event(event, payload)`` hears every event the registry knows now; for
        any other object, every callable attribute named like an event. A method under a
        Keras name and one under its Ultralytics twin both run, the Ultralytics one first.
        """
        subs: list[Subscription] = []
        for event in self.registry.events():
            for name in event.names:
                if not name.isidentifier():
                    continue
                method = getattr(obj, name, None)
                if not callable(method) or _inherited(method, name):
                    continue
                subs.append(
                    self.subscribe(
                        event, method, priority=priority, errors=errors,
                        max_failures=max_failures, owner=obj,
                        label=f"{type(obj).__qualname__}.{name}",
                    )
                )
        if isinstance(obj, Callback):
            if not _inherited(obj.on_event, "on_event"):
                label = f"{type(obj).__qualname__}.on_event"
                for event in self.registry.events():
                    subs.append(
                        self.subscribe(
                            event, EventHandler(obj.on_event, event), priority=priority,
                            errors=errors, max_failures=max_failures, owner=obj, label=label,
                        )
                    )  # fmt: skip
            obj.bus = self
        return Attachment(self, obj, tuple(subs))

    def disconnect(self, target: object, event: str | Event[Any] | None = None) -> int:
        """Undo subscriptions: a Subscription, an Attachment, a function or an attached object.

        With ``event``, only on that event. Returns how many connections were removed.
        """
        if isinstance(target, Attachment):
            return sum(self.disconnect(sub) for sub in target.subscriptions)
        if isinstance(target, Subscription):
            signal = self._signals.get(target.event)
            if signal is None or make_id(target.receive) not in signal.receivers:
                return 0
            signal.disconnect(target.receive)
            return 1
        only = None if event is None else self._learn(event)
        removed = 0
        for evt, entries in list(self._entries.items()):
            if only is not None and evt is not only:
                continue
            for entry in entries:
                if isinstance(entry, Subscription):
                    fn: object = entry.target
                    if isinstance(fn, EventHandler):  # on_event, subscribed once per event
                        fn = fn.method
                    if entry.owner is target or _same(fn, target):
                        removed += self.disconnect(entry)
                elif _same(entry.target, target):
                    self._signals[evt].disconnect(entry.target)
                    removed += 1
        return removed

    def is_connected(self, sub: Subscription) -> bool:
        signal = self._signals.get(sub.event)
        return signal is not None and make_id(sub.receive) in signal.receivers

    def subscriptions(self, event: str | Event[Any] | None = None) -> list[Subscription]:
        """The live subscriptions, in delivery order per event."""
        chosen = self._entries if event is None else {self._learn(event): None}
        return [
            entry
            for evt in chosen
            for entry in self._entries.get(evt, ())
            if isinstance(entry, Subscription)
        ]

    @contextlib.contextmanager
    def muted(self, *events: str | Event[Any]) -> Iterator[None]:
        """Silence the bus (or only the given events) for the ``with`` block."""
        keys: list[Event[Any] | None] = [self._learn(e) for e in events] or [None]
        touched = list(self._signals) if None in keys else keys
        for key in keys:
            self._muted[key] = self._muted.get(key, 0) + 1
        for event in touched:
            self._rebuild(event)  # type: ignore[arg-type]
        try:
            yield
        finally:
            for key in keys:
                self._muted[key] -= 1
                if not self._muted[key]:
                    del self._muted[key]
            for event in touched:
                self._rebuild(event)  # type: ignore[arg-type]

    # -- dispatch ---------------------------------------------------------------------------

    def _rebuild(self, event: Event[Any]) -> None:
        """Recompute an event's delivery list: priority first, then connection order."""
        signal = self._signals[event]
        me = make_id(self)
        entries: list[Any] = []
        for rid, held in list(signal.receivers.items()):
            strong = held() if isinstance(held, weakref.ref) else held
            if strong is None:
                continue
            owner = getattr(strong, "__self__", None)
            if isinstance(owner, Subscription) and getattr(strong, "__func__", None) is (
                Subscription.receive
            ):
                entries.append(owner)
            elif signal.hears(rid, me):
                plain = signal.plain.get(rid)
                if plain is None:
                    seq = signal.connected_at.get(rid, 0)
                    plain = signal.plain[rid] = _BlinkerReceiver(self, held, seq)
                entries.append(plain)
        entries.sort(key=lambda e: (-e.priority, e.seq))
        calls: list[Callable[[Any], object]] = []
        for entry in entries:
            # An unfiltered, strongly held function is called directly: no wrapper on the hot
            # path. Each callable appears once so a failure can be traced to its subscription.
            fn = entry.target if isinstance(entry, Subscription) else None
            direct = fn is not None and not entry.weak and not entry.filtered
            calls.append(fn if direct and not any(c is fn for c in calls) else entry)  # type: ignore[arg-type]
        self._entries[event] = snapshot = tuple(entries)
        silent = None in self._muted or event in self._muted
        delivered: list[Any] | tuple[()] = _Calls(event, [] if silent else calls, snapshot)
        if not delivered and not delivered.edge:  # type: ignore[union-attr]
            delivered = _NOBODY
        # An emit may be iterating an older list right now: a subscription that is gone is
        # not called later in that emit. Muting changes only later emits. Slot i: entry i.
        kept = {id(entry) for entry in snapshot}
        alive: list[weakref.ref[_Calls]] = []
        for ref in self._lists.get(event, ()):
            older = ref()
            if older is None:  # no emit holds it any more
                continue
            alive.append(ref)
            for index, entry in enumerate(older.entries[: len(older)]):
                if id(entry) not in kept:
                    older[index] = _skip
        if isinstance(delivered, _Calls):
            alive.append(weakref.ref(delivered))
        self._lists[event] = alive
        for key in (event, *event.names):
            self._calls[key] = delivered

    def emit(
        self,
        event: str | Event[Any],
        /,
        *,
        batch: Any = _UNSET,
        epoch: Any = _UNSET,
        logs: Any = _UNSET,
        **fields: Any,
    ) -> Any:
        """Validate ``fields`` into the event's payload and deliver it; returns the payload.

        When nobody listens, nothing is built or validated and ``None`` is returned. Wrong
        fields raise :class:`~eventhooks.errors.PayloadError` naming the event and the field.

        ``batch``, ``epoch`` and ``logs`` (what every batch event carries) are named
        parameters only for speed: Python builds no keyword dict for them, which is most of
        what an emit nobody listens to would cost.
        """
        try:
            calls = self._calls[event]
        except (KeyError, TypeError):
            calls = self._calls[self._learn(event)]
        if calls is _NOBODY:
            return None
        if not calls:  # a run-edge event nobody listens to still opens or closes a run
            self._run_edge(calls.event)
            return None
        if batch is not _UNSET:
            fields["batch"] = batch
        if epoch is not _UNSET:
            fields["epoch"] = epoch
        if logs is not _UNSET:
            fields["logs"] = logs
        try:
            payload = calls.validate(fields)
        except ValidationError as exc:
            raise PayloadError.from_validation(event, calls.event.name, exc) from None
        except Exception as exc:  # a value that raised while validated (its __float__...)
            raise PayloadError.from_validation(event, calls.event.name, exc) from exc
        if calls.edge:
            self._run_edge(calls.event)
        try:
            for call in calls:
                call(payload)
        except Exception as exc:
            self._recover(calls, call, payload, exc)
        return payload

    def _recover(self, calls: _Calls, failed: Callable[[Any], object], payload: Any,
                 exc: Exception) -> None:  # fmt: skip
        """Apply the failed subscriber's error policy, then deliver to the ones after it."""
        event = calls.event
        entry = _entry_for(calls.entries, failed)
        index = next((i for i, call in enumerate(calls) if call is failed), None)
        if index is None:  # it disconnected itself before failing: its slot is a no-op now
            index = next(i for i, e in enumerate(calls.entries) if e is entry)
        label = entry.label if entry is not None else describe(failed)
        policy = (entry.errors if entry is not None else None) or self.errors
        if policy == "raise":
            # An error from a nested emit already names its subscriber and event.
            error = exc if isinstance(exc, SubscriberError) else SubscriberError(
                event.name, label, exc
            )
            if event is ev.teardown:
                # teardown is the last word of a run: everyone hears it, then the first
                # failure is raised (later ones are logged).
                try:
                    self._deliver_rest(calls, index, payload)
                except SubscriberError as later:
                    log.warning("%s", later, exc_info=later.original)
            if error is exc:
                raise error
            raise error from exc
        log.warning("subscriber %s failed on event %r", label, event.name, exc_info=exc)
        if policy == "disable" and entry is not None:
            entry.failures += 1
            limit = entry.max_failures or self.max_failures
            if entry.failures >= limit:
                log.warning("subscriber %s disabled after %d failures", label, entry.failures)
                if isinstance(entry, Subscription):
                    self.disconnect(entry)
                elif entry.target is not None:
                    self._signals[event].disconnect(entry.target)
        self._deliver_rest(calls, index, payload)

    def _deliver_rest(self, calls: _Calls, index: int, payload: Any) -> None:
        """Deliver to the subscribers after ``calls[index]``."""
        try:
            for later in range(index + 1, len(calls)):  # by index: the list may change
                call = calls[later]
                call(payload)
        except Exception as again:
            self._recover(calls, call, payload, again)

    def emit_teardown(self, error: BaseException | None = None, /, **fields: Any) -> Any:
        """Emit ``teardown`` for a run that ends, failed (``error``) or not.

        For adapters, in their ``finally``/``except``: a subscriber failing at teardown must
        not hide the run's own error. With ``error`` given, such a failure is logged and
        added to ``error`` as a note, and ``error`` stays the one to re-raise; without it,
        the subscriber's :class:`SubscriberError` is raised as from any emit.
        """
        if error is None:
            return self.emit(ev.teardown, **fields)
        try:
            return self.emit(ev.teardown, exception=error, **fields)
        except SubscriberError as failed:
            log.warning("%s (while the run was failing)", failed, exc_info=failed.original)
            error.add_note(f"eventhooks: {failed}")
            return None

    # -- flow control -----------------------------------------------------------------------

    def request_stop(self, reason: str | None = None) -> None:
        """Ask the running loop to stop after the current batch or epoch."""
        self._stop = True
        self._stop_reason = reason

    @property
    def stop_requested(self) -> bool:
        """True once a subscriber asked to stop; forgotten when the next run starts."""
        return self._stop

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    def _run_edge(self, event: Event[Any]) -> None:
        # A run opens at on_pretrain_routine_start, or at on_train_start when the adapter
        # emits no pretrain routine (Keras). A stop request of the previous run ends there.
        if event is ev.on_pretrain_routine_start or (
            event is ev.on_train_start and not self._pretrain_opened
        ):
            self._stop = False
            self._stop_reason = None
        self._pretrain_opened = event is ev.on_pretrain_routine_start

    # -- pickling ---------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """A bus crosses process boundaries (DDP workers) with its subscriptions.

        Subscribers must be picklable (module-level functions, callback objects); weakly held
        ones and plain blinker receivers stay behind, as do mutes.
        """
        if self.registry is not _registry.default:
            raise TypeError("only buses on the default registry can be pickled")
        subscriptions = [
            (sub.event.name, sub.target, {
                "priority": sub.priority, "every": sub.every, "once": sub.once,
                "when": sub.when, "rank": sub.rank, "errors": sub.errors,
                "max_failures": sub.max_failures, "owner": sub.owner, "label": sub.label,
            })
            for sub in self.subscriptions()
            if not sub.weak and sub.target is not None
        ]  # fmt: skip
        return {
            "errors": self.errors,
            "max_failures": self.max_failures,
            "stop": (self._stop, self._stop_reason),
            "subscriptions": subscriptions,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(errors=state["errors"], max_failures=state["max_failures"])  # type: ignore[misc]
        self._stop, self._stop_reason = state["stop"]
        for name, fn, options in state["subscriptions"]:
            self.subscribe(name, fn, **options)

    def __repr__(self) -> str:
        live = sum(len(e) for e in self._entries.values())
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
        return self.method(self.event, payload)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_event_handler, (self.method, self.event.name))


def _event_handler(method: Callable[[Event[Any], Any], object], name: str) -> EventHandler:
    return EventHandler(method, _registry.default.resolve(name))


def _inherited(method: object, name: str) -> bool:
    """Whether ``method`` is :class:`Callback`'s own no-op: not overridden, not set on the
    object (Keras' ``LambdaCallback`` sets hooks as instance attributes)."""
    base = Callback.__dict__.get(name)
    return base is not None and getattr(method, "__func__", None) is base


def _entry_for(entries: tuple[Any, ...], call: object) -> Any:
    """The subscription (or blinker receiver) behind a delivered callable, as of the emit."""
    if isinstance(call, (Subscription, _BlinkerReceiver)):
        return call
    for entry in entries:
        if isinstance(entry, Subscription) and entry.target is call:
            return entry
    return None


def _same(a: object, b: object) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b) and hasattr(a, "__self__")  # bound methods compare by (self, func)
    except Exception:
        return False
