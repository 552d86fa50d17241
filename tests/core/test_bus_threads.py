"""One bus shared by threads: subscribe, disconnect, mute and emit at once (#10).

The deterministic tests pause a *writer* thread inside the bus while it recomputes an event's
delivery list: one subscriber's ``priority`` is an ``int`` whose ``__neg__`` (what the
delivery order's sort calls) blocks, once, in that thread. Another thread subscribes,
disconnects or mutes meanwhile, then the writer goes on and the final state is checked. A bus
that turns priorities into plain numbers before it takes its lock never pauses there: the same
steps then run one after the other, and the final state must be the same. So no test waits on
the pause for long, nor requires it.

The stress tests switch threads every microsecond and count every delivery. Nothing here
measures time: every wait is bounded only so that a deadlock fails instead of hanging.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

from eventhooks import BatchPayload, Callback, Event, EventBus, Subscription, events

E = events.on_train_batch_end
JOIN = 60.0  # seconds a thread gets before the test fails as hung (a deadlock, never speed)
PAUSE = 2.0  # how long to wait for a writer to pause mid-rebuild before going on without it

STYLES = ("subscribe", "on", "attach")
SCOPES = ("event", "bus")


# -- threads ------------------------------------------------------------------------------------


class Worker(threading.Thread):
    """A daemon thread that keeps its exception for the test to raise."""

    def __init__(self, fn: Callable[[], object], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = fn
        self.error: BaseException | None = None
        self.barrier: threading.Barrier | None = None

    def run(self) -> None:
        try:
            if self.barrier is not None:
                self.barrier.wait(JOIN)
            self._fn()
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float = JOIN) -> None:
        self.join(timeout)
        if self.is_alive():
            pytest.fail(f"thread {self.name!r} did not finish within {timeout:g}s (deadlock?)")
        if self.error is not None:
            raise AssertionError(f"thread {self.name!r} failed: {self.error!r}") from self.error


def run_all(*workers: Worker) -> None:
    """Start the workers together (none gets a head start), then wait for them all."""
    barrier = threading.Barrier(len(workers))
    for worker in workers:
        worker.barrier = barrier
        worker.start()
    for worker in workers:
        worker.finish()


@contextmanager
def fast_switching() -> Iterator[None]:
    """Let the interpreter switch threads every microsecond (as often as it can)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class Pacer:
    """Keeps churn threads busy all through the emits, whatever the scheduler favours.

    Each churn thread goes round at least ``at_least`` times, and on until every emitter is
    done; an emitter waits, at every ``every``-th emit, until each churn thread has gone round
    as many times as that emitter has reached multiples of ``every``. A fixed amount of work.
    """

    def __init__(self, churners: int, emitters: int, at_least: int, every: int = 25) -> None:
        self.at_least, self.every = at_least, every
        self._rounds = [0] * churners
        self._emitting = emitters
        self._cond = threading.Condition()

    def rounds(self, churner: int) -> Iterator[int]:
        """0, 1, 2... for churn thread number ``churner``."""
        try:
            for i in itertools.count():
                with self._cond:
                    if i >= self.at_least and not self._emitting:
                        return
                yield i
                with self._cond:
                    self._rounds[churner] = i + 1
                    self._cond.notify_all()
        finally:  # also when the churn failed: nobody waits for it any more
            with self._cond:
                self._rounds[churner] = sys.maxsize
                self._cond.notify_all()

    def before_emit(self, seq: int) -> None:
        if seq % self.every:
            return
        with self._cond:
            ok = self._cond.wait_for(lambda: min(self._rounds) >= seq // self.every, JOIN)
        assert ok, "the churn threads stopped going round"

    def emitter_done(self) -> None:
        with self._cond:
            self._emitting -= 1
            self._cond.notify_all()


class Tickets:
    """A lock-protected counter: which of two things in two threads came first."""

    def __init__(self) -> None:
        self._next = itertools.count()
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            return next(self._next)


# -- a writer paused mid-rebuild ----------------------------------------------------------------


class Gate:
    """Pauses one thread, the one that armed it, the next time it reaches ``checkpoint``."""

    def __init__(self) -> None:
        self.paused = threading.Event()
        self.released = threading.Event()
        self.settled = threading.Event()  # the writer paused or finished
        self._armed: threading.Thread | None = None
        self._lock = threading.Lock()

    def arm(self) -> None:
        with self._lock:
            self._armed = threading.current_thread()

    def checkpoint(self) -> None:
        with self._lock:
            if self._armed is not threading.current_thread():
                return
            self._armed = None
        self.paused.set()
        self.settled.set()
        self.released.wait(JOIN)


class PausingPriority(int):
    """A priority (an ``int``) that pauses the thread its gate armed, once, when sorted."""

    gate: Gate

    def __new__(cls, value: int, gate: Gate) -> PausingPriority:
        self = super().__new__(cls, value)
        self.gate = gate
        return self

    def __neg__(self) -> int:
        self.gate.checkpoint()
        return -int(self)

    def __lt__(self, other: int, /) -> bool:
        self.gate.checkpoint()
        return int(self) < other

    def __gt__(self, other: int, /) -> bool:
        self.gate.checkpoint()
        return int(self) > other


def interleave(gate: Gate, writer: Callable[[], object], meanwhile: Callable[[], object]) -> bool:
    """Run ``writer`` in a thread until it pauses (it arms ``gate`` itself), run ``meanwhile``
    in another thread, then let the writer go on. Returns whether the writer paused.

    If it never pauses (within ``PAUSE`` seconds, or it finished), ``meanwhile`` runs anyway.
    If the writer pauses holding a lock that ``meanwhile`` needs, ``meanwhile`` waits
    ``PAUSE`` seconds, then the writer goes on and both finish in the order the lock allows.
    """

    def write() -> None:
        try:
            writer()
        finally:
            gate.settled.set()

    first = Worker(write, "writer")
    second = Worker(meanwhile, "meanwhile")
    first.start()
    try:
        gate.settled.wait(PAUSE)
        second.start()
        second.join(PAUSE)
    finally:
        gate.released.set()
    first.finish()
    second.finish()
    return gate.paused.is_set()


# -- subscribers --------------------------------------------------------------------------------


class Tagged(Callback):
    """A Keras-style subscriber that writes its tag down."""

    def __init__(self, heard: list[str], tag: str) -> None:
        self.heard, self.tag = heard, tag

    def on_train_batch_end(self, payload: BatchPayload) -> None:
        self.heard.append(self.tag)


def connect(bus: EventBus, style: str, heard: list[str], tag: str) -> object:
    """Subscribe to ``E`` a subscriber that writes ``tag`` down; returns its handle: the
    Subscription, the decorated function or the attached object."""
    if style == "attach":
        callback = Tagged(heard, tag)
        bus.attach(callback)
        return callback

    def fn(payload: BatchPayload) -> None:
        heard.append(tag)

    if style == "on":
        return bus.on(E)(fn)
    return bus.subscribe(E, fn)


def undo(bus: EventBus, handle: object) -> None:
    """Disconnect what ``connect`` made, the way its style does."""
    if isinstance(handle, Subscription):
        handle.disconnect()
    else:
        assert bus.disconnect(handle) == 1


def listed(bus: EventBus, handle: object) -> bool:
    return any(
        sub is handle or sub.target is handle or sub.owner is handle for sub in bus.subscriptions(E)
    )


def pausing_writer(bus: EventBus, gate: Gate, heard: list[str]) -> Callable[[], None]:
    """A writer that subscribes ``"writer"`` and pauses while the bus sorts the subscribers."""

    def write() -> None:
        gate.arm()
        bus.subscribe(E, lambda payload: heard.append("writer"), priority=PausingPriority(0, gate))

    return write


def muting(bus: EventBus, scope: str) -> AbstractContextManager[None]:
    return bus.muted(E) if scope == "event" else bus.muted()


# -- deterministic interleavings: a writer paused mid-rebuild ------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_a_subscription_made_while_a_writer_is_paused_hears_the_next_emit(style: str) -> None:
    bus = EventBus()
    gate = Gate()
    heard: list[str] = []
    bus.subscribe(E, lambda payload: heard.append("before"))
    handles: list[object] = []

    interleave(
        gate,
        pausing_writer(bus, gate, heard),
        lambda: handles.append(connect(bus, style, heard, "late")),
    )
    bus.emit(E, batch=0)
    assert sorted(heard) == ["before", "late", "writer"]
    assert listed(bus, handles[0])


@pytest.mark.parametrize("style", STYLES)
def test_a_subscription_undone_while_a_writer_is_paused_is_not_called_nor_listed(
    style: str,
) -> None:
    bus = EventBus()
    gate = Gate()
    heard: list[str] = []
    handle = connect(bus, style, heard, "gone")

    interleave(gate, pausing_writer(bus, gate, heard), lambda: undo(bus, handle))
    bus.emit(E, batch=0)
    assert heard == ["writer"]
    assert not listed(bus, handle)
    assert len(bus.subscriptions(E)) == 1


@pytest.mark.parametrize("scope", SCOPES)
def test_every_emit_is_heard_once_a_mute_ended_while_another_thread_subscribed(
    scope: str,
) -> None:
    """The writer is the thread whose mute ends: it pauses rebuilding the list, unmuted."""
    bus = EventBus()
    gate = Gate()
    heard: list[str] = []
    bus.subscribe(E, lambda payload: heard.append("before"), priority=PausingPriority(0, gate))

    def leave_a_mute() -> None:
        with muting(bus, scope):
            gate.arm()  # pause while leaving the mute, not while entering it

    interleave(gate, leave_a_mute, lambda: connect(bus, "subscribe", heard, "late"))
    bus.emit(E, batch=0)
    bus.emit(E, batch=1)
    assert sorted(heard) == ["before", "before", "late", "late"]


@pytest.mark.parametrize("scope", SCOPES)
def test_every_emit_is_heard_after_a_mute_another_thread_subscribed_in(scope: str) -> None:
    """The writer subscribes; meanwhile another thread mutes, subscribes and unmutes."""
    bus = EventBus()
    gate = Gate()
    heard: list[str] = []
    bus.subscribe(E, lambda payload: heard.append("before"))

    def mute_and_subscribe() -> None:
        with muting(bus, scope):
            connect(bus, "on", heard, "joined muted")
            bus.emit(E, batch=0)

    interleave(gate, pausing_writer(bus, gate, heard), mute_and_subscribe)
    assert heard == []
    bus.emit(E, batch=1)
    assert sorted(heard) == ["before", "joined muted", "writer"]


@pytest.mark.parametrize("writer_role", ["subscribes", "leaves its own mute"])
def test_nothing_is_delivered_while_another_thread_mutes_the_whole_bus(
    writer_role: str,
) -> None:
    """A mute of the whole bus begins while the writer is paused mid-rebuild.

    Passes on the bus before #10 too: it reads the mute after the point where the writer
    pauses, so the race this guards against (a list built before the mute began, written
    after) needs a thread switch between two lines, which no subscriber can hold open.
    """
    bus = EventBus()
    gate = Gate()
    heard: list[str] = []
    bus.subscribe(E, lambda payload: heard.append("before"), priority=PausingPriority(0, gate))
    bus.subscribe(events.on_val_end, lambda payload: heard.append("val"))
    entered, leave = threading.Event(), threading.Event()

    def write() -> None:
        if writer_role == "subscribes":
            gate.arm()
            bus.subscribe(E, lambda payload: heard.append("writer"), priority=1)
        else:
            with bus.muted():
                gate.arm()

    def mute_the_bus() -> None:
        with bus.muted():
            entered.set()
            leave.wait(JOIN)

    muter = Worker(mute_the_bus, "muter")

    def begin_the_mute() -> None:
        muter.start()
        entered.wait(JOIN)

    try:
        interleave(gate, write, begin_the_mute)
        assert entered.is_set()
        bus.emit(E, batch=0)
        bus.emit(events.on_val_end)
        assert heard == []
    finally:
        leave.set()
    muter.finish()
    bus.emit(E, batch=1)
    bus.emit(events.on_val_end)
    expected = ["before", "val"] + (["writer"] if writer_role == "subscribes" else [])
    assert sorted(heard) == expected


# -- stress ---------------------------------------------------------------------------------------

EMITTERS = 8
PER_THREAD = 300
CHURN = 150


class Tally:
    """A subscriber connected for the whole test: per emitting thread, the numbers it heard."""

    def __init__(self, threads: int) -> None:
        self.seen: dict[int, list[int]] = {thread: [] for thread in range(threads)}

    def __call__(self, payload: BatchPayload) -> None:
        # Each list grows in one thread only: the emitting thread it is for.
        self.seen[int(payload.logs["thread"])].append(int(payload.logs["seq"]))


class TallyCallback(Callback):
    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def on_train_batch_end(self, payload: BatchPayload) -> None:
        self.tally(payload)


class Churn(Callback):
    """Attached and detached over and over: hears the counted event and a muted one."""

    def on_train_batch_end(self, payload: BatchPayload) -> None:
        pass

    def on_val_end(self, payload: Any) -> None:
        pass


def emitter(bus: EventBus, thread: int, count: int, pacer: Pacer) -> Callable[[], None]:
    def emit_all() -> None:
        try:
            for seq in range(count):
                pacer.before_emit(seq)
                bus.emit(E, batch=seq, logs={"thread": thread, "seq": seq})
        finally:
            pacer.emitter_done()

    return emit_all


def noop(payload: Any) -> None:
    pass


def test_stress_every_connected_subscriber_hears_every_event_once_in_order() -> None:
    bus = EventBus()
    tallies = [Tally(EMITTERS) for _ in range(4)]
    kept = [
        bus.subscribe(E, tallies[0]),
        bus.subscribe(E, tallies[1], priority=5, when=lambda payload: True),  # filtered
        *bus.attach(TallyCallback(tallies[2]), priority=-3).subscriptions,
    ]
    bus.on(E, priority=2)(tallies[3])
    kept += [sub for sub in bus.subscriptions(E) if sub.target is tallies[3]]
    assert len(kept) == 4
    muted_heard: list[str] = []
    pacer = Pacer(churners=4, emitters=EMITTERS, at_least=CHURN)
    bus.subscribe(events.on_val_end, lambda payload: muted_heard.append("val end"))
    bus.subscribe(events.on_val_start, lambda payload: muted_heard.append("val start"))

    def subscribe_and_disconnect() -> None:
        for i in pacer.rounds(0):
            sub = bus.subscribe(E, noop, priority=i % 5 - 2)
            fn = bus.on(E, priority=i % 3)(lambda payload: None)
            weak = bus.subscribe(E, lambda payload: None, weak=True)  # its function is gone
            sub.disconnect()
            assert bus.disconnect(fn) == 1
            weak.disconnect()

    def mute(event: Event[Any], churner: int) -> Callable[[], None]:
        def mute_and_unmute() -> None:
            for _ in pacer.rounds(churner):
                with bus.muted(event):
                    bus.emit(event)
                    bus.subscribe(event, noop).disconnect()

        return mute_and_unmute

    def attach_and_detach() -> None:
        for i in pacer.rounds(3):
            churn = Churn()
            attachment = bus.attach(churn, priority=i % 4 - 1)
            if i % 2:
                attachment.disconnect()
            else:
                assert bus.disconnect(churn) == len(attachment.subscriptions)

    workers = [Worker(emitter(bus, t, PER_THREAD, pacer), f"emitter {t}") for t in range(EMITTERS)]
    workers += [
        Worker(subscribe_and_disconnect, "subscribe/disconnect"),
        Worker(mute(events.on_val_end, 1), "mute on_val_end"),
        Worker(mute(events.on_val_start, 2), "mute on_val_start"),
        Worker(attach_and_detach, "attach/detach"),
    ]
    with fast_switching():
        run_all(*workers)

    expected = {t: list(range(PER_THREAD)) for t in range(EMITTERS)}
    for tally in tallies:
        assert tally.seen == expected
    assert muted_heard == []
    assert {id(sub) for sub in bus.subscriptions(E)} == {id(sub) for sub in kept}
    bus.emit(events.on_val_end)
    bus.emit(events.on_val_start)
    assert muted_heard == ["val end", "val start"]


def test_nested_emits_from_several_threads_are_each_delivered_once() -> None:
    threads, count = 4, 200
    bus = EventBus()
    outer, middle, inner = Tally(threads), Tally(threads), Tally(threads)
    pacer = Pacer(churners=1, emitters=threads, at_least=CHURN)

    def relay(tally: Tally, event: Event[Any]) -> Callable[[BatchPayload], None]:
        def hear_and_emit(payload: BatchPayload) -> None:
            tally(payload)
            bus.emit(event, batch=payload.batch, logs=payload.logs)

        return hear_and_emit

    bus.subscribe(E, relay(outer, events.on_val_batch_end))
    bus.subscribe(events.on_val_batch_end, relay(middle, events.on_predict_batch_end))
    bus.subscribe(events.on_predict_batch_end, inner)

    def churn() -> None:
        for i in pacer.rounds(0):
            for event in (E, events.on_val_batch_end, events.on_predict_batch_end):
                bus.subscribe(event, noop, priority=i % 3 - 1).disconnect()

    workers = [Worker(emitter(bus, t, count, pacer), f"emitter {t}") for t in range(threads)]
    with fast_switching():
        run_all(*workers, Worker(churn, "churn"))

    expected = {t: list(range(count)) for t in range(threads)}
    assert outer.seen == expected
    assert middle.seen == expected
    assert inner.seen == expected


@pytest.mark.parametrize("style", STYLES)
def test_a_subscriber_disconnected_while_threads_call_it_is_not_called_by_later_emits(
    style: str,
) -> None:
    threads, count, calls_before = 4, 300, 50
    bus = EventBus()
    tickets = Tickets()
    victim_heard: list[int] = []  # the ticket of each emit that reached the victim
    bystander_heard: list[int] = []
    in_call, disconnected = threading.Event(), threading.Event()
    first_lock = threading.Lock()

    def victim(payload: BatchPayload) -> None:
        victim_heard.append(int(payload.logs["ticket"]))
        if len(victim_heard) >= calls_before and not in_call.is_set():
            with first_lock:
                first = not in_call.is_set()
                in_call.set()
            if first:  # stay in the call while another thread disconnects this subscriber
                disconnected.wait(JOIN)

    class Victim(Callback):
        def on_train_batch_end(self, payload: BatchPayload) -> None:
            victim(payload)

    handle: object
    if style == "attach":
        handle = Victim()
        bus.attach(handle)
    elif style == "on":
        handle = bus.on(E)(victim)
    else:
        handle = bus.subscribe(E, victim)
    bus.subscribe(E, lambda payload: bystander_heard.append(int(payload.logs["ticket"])))

    def emit_all() -> None:
        for _ in range(count):
            ticket = tickets.take()  # before the emit starts
            bus.emit(E, batch=0, logs={"ticket": ticket})

    cut: list[int] = []

    def disconnect_mid_call() -> None:
        try:
            assert in_call.wait(JOIN), "the victim was never called"
            undo(bus, handle)
            cut.append(tickets.take())  # after disconnect() returned
        finally:
            disconnected.set()

    workers = [Worker(emit_all, f"emitter {t}") for t in range(threads)]
    with fast_switching():
        run_all(*workers, Worker(disconnect_mid_call, "disconnect"))

    late = [ticket for ticket in victim_heard if ticket > cut[0]]
    assert late == [], f"called by {len(late)} emits that started after disconnect() returned"
    assert len(victim_heard) >= calls_before
    assert sorted(bystander_heard) == [t for t in range(threads * count + 1) if t != cut[0]]
    assert not listed(bus, handle)
