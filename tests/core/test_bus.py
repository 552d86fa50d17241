"""The bus: every subscription style, delivery order, filters, muting, errors and stops."""

from __future__ import annotations

import functools
import gc
import logging
from contextlib import ExitStack
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventhooks import (
    BatchPayload,
    Callback,
    EpochPayload,
    Event,
    EventBus,
    Payload,
    RunPayload,
    SubscriberError,
    UnknownEventError,
    events,
)
from eventhooks.registry import Registry

STYLES = ("on", "subscribe", "add_callback", "attach", "blinker")


class EpochEnd(Callback):
    def __init__(self, log: list[int], tag: int) -> None:
        self.log, self.tag = log, tag

    def on_epoch_end(self, payload: EpochPayload) -> None:
        self.log.append(self.tag)


def connect(bus: EventBus, style: str, priority: int, log: list[int], tag: int) -> Any:
    """Connect a subscriber that appends ``tag`` to on_fit_epoch_end, in one of five styles."""

    def fn(payload: Any) -> None:
        log.append(tag)

    if style == "on":
        bus.on("on_fit_epoch_end", priority=priority)(fn)
        return fn
    if style == "subscribe":
        return bus.subscribe(events.on_fit_epoch_end, fn, priority=priority)
    if style == "add_callback":
        assert priority == 0
        return bus.add_callback("on_epoch_end", fn)
    if style == "attach":
        return bus.attach(EpochEnd(log, tag), priority=priority)

    def receiver(sender: Any, payload: Any = None) -> None:
        assert sender is bus and isinstance(payload, EpochPayload)
        log.append(tag)

    bus.signal("on_epoch_end").connect(receiver, weak=False)
    return receiver


@st.composite
def subscriptions(draw: st.DrawFn) -> list[tuple[str, int]]:
    items = []
    for _ in range(draw(st.integers(0, 12))):
        style = draw(st.sampled_from(STYLES))
        fixed = style in ("add_callback", "blinker")
        items.append((style, 0 if fixed else draw(st.integers(-2, 2))))
    return items


@settings(max_examples=200)
@given(subscriptions())
def test_delivery_order_is_priority_then_connection(subs: list[tuple[str, int]]) -> None:
    bus = EventBus()
    log: list[int] = []
    for tag, (style, priority) in enumerate(subs):
        connect(bus, style, priority, log, tag)
    bus.emit("on_fit_epoch_end", epoch=0)
    # Priority, then connection order; plain blinker receivers after the bus's subscribers,
    # in blinker's own order (a set: any order).
    ours = [tag for tag, (style, _) in enumerate(subs) if style != "blinker"]
    expected = sorted(ours, key=lambda tag: -subs[tag][1])  # stable sort
    assert log[: len(ours)] == expected
    plain = [tag for tag, (style, _) in enumerate(subs) if style == "blinker"]
    assert sorted(log[len(ours) :]) == plain


def test_keras_and_ultralytics_twin_methods_both_run() -> None:
    log: list[str] = []

    class Both(Callback):
        def on_epoch_end(self, payload: EpochPayload) -> None:
            log.append("keras")

        def on_fit_epoch_end(self, payload: EpochPayload) -> None:
            log.append("ultralytics")

        def on_train_begin(self, payload: RunPayload) -> None:
            log.append("begin")

    bus = EventBus()
    attachment = bus.attach(Both())
    assert {s.event.name for s in attachment.subscriptions} == {
        "on_fit_epoch_end",
        "on_train_start",
    }
    bus.emit("on_train_start")
    bus.emit("on_fit_epoch_end", epoch=0)
    assert log == ["begin", "ultralytics", "keras"]
    attachment.disconnect()
    bus.emit("on_fit_epoch_end", epoch=1)
    assert len(log) == 3 and not bus.listening("on_epoch_end")


def test_attach_plain_object_and_callback_gets_the_bus() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def on_train_batch_end(self, payload: BatchPayload) -> None:
            self.seen.append(payload.batch)

    class Stopper(Callback):
        def on_train_batch_end(self, payload: BatchPayload) -> None:
            self.request_stop("enough")

    bus = EventBus()
    plain, stopper = Plain(), Stopper()
    bus.attach(plain)
    bus.attach(stopper)
    bus.emit("on_train_batch_end", batch=4)
    assert plain.seen == [4] and stopper.bus is bus
    assert bus.stop_requested and bus.stop_reason == "enough"
    with pytest.raises(RuntimeError, match="not attached"):
        Stopper().request_stop()


class Everything(Callback):
    """Hears every event through on_event, and one moment by name too."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, str]] = []

    def on_event(self, event: Event[Any], payload: Any) -> None:
        self.heard.append((event.name, type(payload).__name__))

    def on_epoch_end(self, payload: EpochPayload) -> None:
        self.heard.append(("named", type(payload).__name__))


def test_on_event_hears_every_event_custom_ones_included() -> None:
    class Sample(Payload):
        step: int

    reg = Registry()
    custom = reg.register("mylib.on_sample", Sample)
    bus = EventBus(registry=reg)
    everything = Everything()
    attachment = bus.attach(everything)
    assert {sub.event for sub in attachment.subscriptions} == set(reg.events())
    bus.emit("on_train_start")
    bus.emit("on_epoch_end", epoch=0)
    bus.emit(custom, step=1)
    assert everything.heard == [
        ("on_train_start", "RunPayload"),
        ("named", "EpochPayload"),  # the named method first: it was connected first
        ("on_fit_epoch_end", "EpochPayload"),
        ("mylib.on_sample", "Sample"),
    ]
    bus.disconnect(everything)
    bus.emit(custom, step=2)
    assert len(everything.heard) == 4 and not bus.listening(custom)


def test_disconnecting_on_event_by_method_undoes_all_its_subscriptions() -> None:
    bus = EventBus()
    everything = Everything()
    bus.attach(everything)
    assert bus.disconnect(everything.on_event) == len(bus.registry.events())
    bus.emit("on_epoch_end", epoch=0)
    assert everything.heard == [("named", "EpochPayload")]


def test_a_callback_without_on_event_is_not_subscribed_to_everything() -> None:
    bus = EventBus()
    attachment = bus.attach(Counter())
    assert [sub.event for sub in attachment.subscriptions] == [events.on_fit_epoch_end]


def test_on_event_survives_pickling() -> None:
    import pickle

    bus = EventBus()
    bus.attach(Everything())
    clone: EventBus = pickle.loads(pickle.dumps(bus))
    copied = clone.subscriptions("teardown")[0].owner
    assert isinstance(copied, Everything) and copied.bus is clone
    clone.emit("teardown")
    assert copied.heard == [("teardown", "TeardownPayload")]


def test_misspelt_names_are_errors_with_suggestions() -> None:
    bus = EventBus()
    with pytest.raises(UnknownEventError) as info:
        bus.add_callback("on_train_epoch_ned", lambda p: None)
    assert "on_train_epoch_end" in str(info.value)
    with pytest.raises(UnknownEventError):
        bus.on("on_fit_epoch_edn")
    with pytest.raises(UnknownEventError):
        bus.emit("on_epoch_ned", epoch=1)


def test_nobody_listening_builds_nothing() -> None:
    bus = EventBus()
    # Invalid fields, yet no error: with nobody listening nothing is validated or built.
    assert bus.emit("on_train_batch_end", batch="not a number") is None
    assert not bus.listening("on_train_batch_end")
    sub = bus.subscribe("on_train_batch_end", lambda p: None)
    assert bus.listening("on_train_batch_begin") is False
    assert bus.listening("on_train_batch_end")
    sub.disconnect()
    assert not bus.listening("on_train_batch_end")


# -- filters --------------------------------------------------------------------------------


def model_filter(ns: list[int], every: int | None, once: int | None, when: list[bool]) -> list[int]:
    """Which occurrences (1-based numbers ``ns``) a subscription must hear."""
    fired, heard = False, []
    for n, ok in zip(ns, when, strict=True):
        if every is not None and n % every:
            continue
        if once is not None and (fired or n != once):
            continue
        if not ok:
            continue
        fired = fired or once is not None
        heard.append(n)
    return heard


filter_args = st.tuples(
    st.none() | st.integers(1, 4),
    st.none() | st.integers(1, 6),
    st.booleans(),
)


@settings(max_examples=200)
@given(
    kind=st.sampled_from(["epoch", "batch", "plain"]),
    counters=st.lists(st.integers(0, 7), max_size=20),
    args=filter_args,
    data=st.data(),
)
def test_every_once_when_against_a_model(
    kind: str, counters: list[int], args: tuple[int | None, int | None, bool], data: st.DataObject
) -> None:
    every, once, use_when = args
    flags = data.draw(st.lists(st.booleans(), min_size=len(counters), max_size=len(counters)))
    event = {"epoch": "on_epoch_end", "batch": "on_train_batch_end", "plain": "on_val_end"}[kind]
    bus = EventBus()
    heard: list[int] = []
    when = (lambda p: p.logs["ok"] > 0) if use_when else None
    bus.on(event, every=every, once=once, when=when)(lambda p: heard.append(p.logs["n"]))
    numbers = []
    for i, (counter, flag) in enumerate(zip(counters, flags, strict=True)):
        # epoch/batch events count by their index; other events by occurrence
        n = counter + 1 if kind != "plain" else i + 1
        numbers.append(n)
        logs = {"ok": 1.0 if flag or not use_when else -1.0, "n": float(n)}
        fields: dict[str, Any] = (
            {"epoch": counter} if kind == "epoch" else {"batch": counter} if kind == "batch" else {}
        )
        bus.emit(event, logs=logs, **fields)
    expected = model_filter(numbers, every, once, [f or not use_when for f in flags])
    assert heard == expected


def test_invalid_filter_values() -> None:
    bus = EventBus()
    bad_values: list[dict[str, Any]] = [
        {"every": 0}, {"once": -1}, {"every": 1.5}, {"every": True}, {"once": False},
        {"errors": "ignore"}, {"rank": "0"}, {"rank": -1}, {"rank": True}, {"max_failures": 0},
    ]  # fmt: skip
    for bad in bad_values:
        with pytest.raises(ValueError, match=f"{next(iter(bad))}="):
            bus.subscribe("on_epoch_end", lambda p: None, **bad)
    with pytest.raises(TypeError, match="callable"):
        bus.subscribe("on_epoch_end", 42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="when= must be a predicate"):
        bus.subscribe("on_epoch_end", lambda p: None, when=3)  # type: ignore[call-overload]
    assert bus.subscriptions() == []


def test_a_partial_subscriber_is_named_after_its_function() -> None:
    bus = EventBus()
    bus.subscribe("on_epoch_end", functools.partial(broken))
    with pytest.raises(SubscriberError, match=r"partial\(\S*\bbroken\) failed"):
        bus.emit("on_epoch_end", epoch=0)


def test_rank_filter() -> None:
    bus = EventBus()
    heard: list[int] = []
    bus.on("on_epoch_end", rank=0)(lambda p: heard.append(p.rank))
    for rank in (1, 0, 2):
        bus.emit("on_epoch_end", epoch=0, rank=rank, world_size=3)
    assert heard == [0]


# -- connect / disconnect / mute / emit against a reference model --------------------------

EVENTS = ("on_train_batch_end", "on_fit_epoch_end", "on_val_end")
FIELDS: dict[str, dict[str, Any]] = {
    "on_train_batch_end": {"batch": 0},
    "on_fit_epoch_end": {"epoch": 0},
    "on_val_end": {},
}

op = st.one_of(
    st.tuples(
        st.just("connect"), st.sampled_from(EVENTS), st.sampled_from(["strong", "weak", "blinker"])
    ),
    st.tuples(st.just("disconnect"), st.integers(0, 30), st.just("")),
    st.tuples(st.just("mute"), st.sampled_from((None, *EVENTS)), st.just("")),
    st.tuples(st.just("unmute"), st.just(""), st.just("")),
    st.tuples(st.just("emit"), st.sampled_from(EVENTS), st.just("")),
)


def in_delivery_order(heard: list[tuple[int, str]], plain: set[int]) -> list[tuple[int, str]]:
    """What was heard in the model's order: the bus's subscribers in connection order as
    delivered, then plain blinker receivers (delivered last, in blinker's set order)."""
    ours = [h for h in heard if h[0] not in plain]
    assert heard[: len(ours)] == ours, "a plain blinker receiver ran before a subscriber"
    return sorted(heard)


@settings(max_examples=300)
@given(st.lists(op, max_size=40))
def test_random_sequences_match_reference_model(ops: list[tuple[str, Any, str]]) -> None:
    bus = EventBus()
    heard: list[tuple[int, str]] = []
    handles: list[Any] = []  # what to disconnect, by connection number
    keep: list[Any] = []  # keeps weak subscribers alive
    connected: dict[int, str] = {}  # the model: connection number -> event
    mutes: list[Any] = []
    plain: set[int] = set()  # connection numbers of plain blinker receivers
    state = [""]  # the event being emitted
    with ExitStack() as stack:
        for kind, arg, how in ops:
            if kind == "connect":
                tag = len(handles)

                def fn(payload: Any, tag: int = tag, *_: Any, **__: Any) -> None:
                    heard.append((tag, state[0]))

                if how == "blinker":

                    def receiver(sender: Any, payload: Any = None, tag: int = tag) -> None:
                        heard.append((tag, state[0]))

                    keep.append(receiver)
                    plain.add(tag)
                    bus.signal(arg).connect(receiver)  # blinker's default: weak
                    handles.append(receiver)
                else:
                    keep.append(fn)
                    handles.append(bus.subscribe(arg, fn, weak=how == "weak"))
                connected[tag] = arg
            elif kind == "disconnect" and arg < len(handles):
                removed = bus.disconnect(handles[arg])
                assert removed == (1 if arg in connected else 0)
                connected.pop(arg, None)
            elif kind == "mute":
                names = () if arg is None else (arg,)
                mutes.append((stack.enter_context(ExitStack()), names))
                mutes[-1][0].enter_context(bus.muted(*names))
            elif kind == "unmute" and mutes:
                mutes.pop()[0].close()
            elif kind == "emit":
                state[0] = arg
                heard.clear()
                bus.emit(arg, **FIELDS[arg])
                silenced = any(not names or arg in names for _, names in mutes)
                expected = [] if silenced else [(t, arg) for t, e in connected.items() if e == arg]
                assert in_delivery_order(heard, plain) == expected
    # every mute lifted: everyone still connected hears again
    for name in EVENTS:
        state[0] = name
        heard.clear()
        bus.emit(name, **FIELDS[name])
        expected = [(t, name) for t, e in connected.items() if e == name]
        assert in_delivery_order(heard, plain) == expected


# -- holding subscribers ---------------------------------------------------------------------


def test_strong_by_default_weak_on_request() -> None:
    bus = EventBus()
    heard: list[str] = []
    bus.on("on_val_end")(lambda p: heard.append("lambda"))
    bus.attach(EpochEnd([], 0))  # nothing else holds it

    def make() -> Any:
        def temporary(payload: Any) -> None:
            heard.append("weak")

        return temporary

    fn = make()
    bus.on("on_val_end", weak=True)(fn)

    class Owner:
        def method(self, payload: Any) -> None:
            heard.append("method")

    owner = Owner()
    bus.subscribe("on_val_end", owner.method, weak=True)
    gc.collect()
    bus.emit("on_val_end")
    assert heard == ["lambda", "weak", "method"]
    del fn, owner
    gc.collect()
    heard.clear()
    bus.emit("on_val_end")
    assert heard == ["lambda"]
    assert len(bus.subscriptions("on_val_end")) == 1
    assert bus.listening("on_epoch_end")  # the attached callback is still held


def test_disconnect_by_function_object_or_event() -> None:
    bus = EventBus()
    heard: list[str] = []

    def fn(payload: Any) -> None:
        heard.append(type(payload).__name__)

    bus.on("on_val_end")(fn)
    bus.on("on_fit_epoch_end")(fn)
    cb = EpochEnd([], 1)
    bus.attach(cb)
    assert bus.disconnect(fn, "on_val_end") == 1
    bus.emit("on_val_end")
    bus.emit("on_fit_epoch_end", epoch=0)
    assert heard == ["EpochPayload"] and cb.log == [1]
    assert bus.disconnect(fn) == 1
    assert bus.disconnect(cb) == 1
    assert bus.disconnect(cb) == 0
    assert not bus.listening("on_fit_epoch_end")


def test_muted_block_nests_and_restores() -> None:
    bus = EventBus()
    heard: list[str] = []
    bus.on("on_val_end")(lambda p: heard.append("val"))
    bus.on("on_train_end")(lambda p: heard.append("train"))
    with bus.muted():
        with bus.muted("on_val_end"):
            bus.emit("on_val_end")
        bus.emit("on_val_end")
        assert not bus.listening("on_val_end") and not bus.listening("on_train_end")
    with bus.muted("on_test_end"):
        bus.emit("on_val_end")
        bus.emit("on_train_end")
    bus.emit("on_val_end")
    assert heard == ["train", "val"]


def test_muting_inside_a_subscriber_changes_later_emits_only() -> None:
    bus = EventBus()
    heard: list[str] = []

    @bus.on("on_val_end", priority=1)
    def first(payload: Any) -> None:
        heard.append("first")
        with bus.muted():  # e.g. an evaluation the subscriber runs itself
            bus.emit("on_val_end")

    bus.on("on_val_end")(lambda p: heard.append("second"))
    bus.emit("on_val_end")
    bus.emit("on_val_end")
    assert heard == ["first", "second"] * 2


def test_a_function_subscribed_twice_and_disconnected_once_mid_emit_runs_once() -> None:
    bus = EventBus()
    calls: list[int] = []

    def fn(payload: Any) -> None:
        calls.append(1)

    @bus.on("on_val_end", priority=1)
    def drop_first(payload: Any) -> None:
        first.disconnect()

    first = bus.subscribe("on_val_end", fn)
    bus.subscribe("on_val_end", fn)
    bus.emit("on_val_end")
    assert len(calls) == 1
    bus.emit("on_val_end")
    assert len(calls) == 2


@pytest.mark.parametrize("before", ["another disconnect", "a subscribe", "a mute"])
def test_a_subscription_disconnected_after_another_change_mid_emit_is_not_called(
    before: str,
) -> None:
    """Each change rebuilds the delivery list; the emit still iterates the first one."""
    bus = EventBus()
    heard: list[str] = []

    @bus.on("on_val_end", priority=1)
    def first(payload: Any) -> None:
        heard.append("first")
        if before == "another disconnect":
            second.disconnect()
        elif before == "a subscribe":
            bus.subscribe("on_val_end", lambda p: heard.append("late"))
        with bus.muted() if before == "a mute" else ExitStack():
            third.disconnect()

    second = bus.subscribe("on_val_end", lambda p: heard.append("second"))
    third = bus.subscribe("on_val_end", lambda p: heard.append("third"))
    bus.emit("on_val_end")
    assert "third" not in heard and heard[0] == "first"
    assert heard == ["first"] + ([] if before == "another disconnect" else ["second"])


def test_the_bus_knows_nothing_of_runs() -> None:
    """Run edges are events like any other: nobody listening, nothing happens; a stop request
    is forgotten when a run opens (the lifecycle), not when some event is emitted."""
    bus = EventBus()
    edges = ["on_pretrain_routine_start", "on_train_start", "on_train_end", "teardown"]
    assert not any(bus.listening(name) for name in edges)
    bus.request_stop("previous run")
    for name in edges:
        bus.emit(name)
    assert bus.stop_requested and bus.stop_reason == "previous run"


def test_attach_takes_hooks_set_on_the_instance() -> None:
    class Hooks(Callback):  # Keras' LambdaCallback sets its hooks this way
        def __init__(self, **hooks: Any) -> None:
            for name, fn in hooks.items():
                setattr(self, name, fn)

    bus = EventBus()
    seen: list[int] = []
    attachment = bus.attach(Hooks(on_epoch_end=lambda p: seen.append(p.epoch)))
    assert [sub.event for sub in attachment.subscriptions] == [events.on_fit_epoch_end]
    bus.emit("on_epoch_end", epoch=2)
    assert seen == [2]


def test_an_unhashable_event_name_is_an_unknown_event() -> None:
    bus = EventBus()
    for call in (bus.emit, bus.listening, bus.signal):
        with pytest.raises(UnknownEventError):
            call(["on_epoch_end"])  # type: ignore[arg-type]


# -- errors in subscribers -------------------------------------------------------------------


def broken(payload: Any) -> None:
    raise ValueError("broken subscriber")


def test_raise_policy_names_subscriber_and_event() -> None:
    bus = EventBus()
    after: list[int] = []
    bus.on("on_fit_epoch_end", priority=1)(broken)
    bus.on("on_fit_epoch_end")(lambda p: after.append(p.epoch))
    with pytest.raises(SubscriberError) as info:
        bus.emit("on_fit_epoch_end", epoch=3)
    message = str(info.value)
    assert "test_bus.broken" in message and "'on_fit_epoch_end'" in message
    assert "broken subscriber" in message
    assert (
        isinstance(info.value.__cause__, ValueError) and info.value.original is info.value.__cause__
    )
    assert after == [3]  # nothing lost: the subscriber after the failing one heard the event


def test_warn_policy_logs_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(errors="warn")
    after: list[int] = []
    bus.on("on_val_end", priority=2)(broken)
    bus.on("on_val_end", priority=1)(broken)
    bus.on("on_val_end")(lambda p: after.append(1))
    with caplog.at_level(logging.WARNING, logger="eventhooks"):
        bus.emit("on_val_end")
        bus.emit("on_val_end")
    assert after == [1, 1]
    failures = [r for r in caplog.records if "failed on event 'on_val_end'" in r.getMessage()]
    assert len(failures) == 4 and "test_bus.broken" in failures[0].getMessage()
    assert failures[0].exc_info is not None


def test_disable_after_n_failures(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(errors="disable", max_failures=2)
    calls: list[int] = []

    def flaky(payload: Any) -> None:
        calls.append(1)
        raise RuntimeError("flaky")

    bus.on("on_val_end")(flaky)
    with caplog.at_level(logging.WARNING, logger="eventhooks"):
        for _ in range(4):
            bus.emit("on_val_end")
    assert len(calls) == 2
    assert any("disabled after 2 failures" in r.getMessage() for r in caplog.records)


def test_policy_per_subscription_overrides_bus() -> None:
    bus = EventBus(errors="warn")
    bus.on("on_val_end", errors="raise")(broken)
    with pytest.raises(SubscriberError):
        bus.emit("on_val_end")
    strict = EventBus()
    strict.on("on_val_end", errors="warn")(broken)
    heard: list[int] = []
    strict.on("on_val_end")(lambda p: heard.append(1))
    strict.emit("on_val_end")
    assert heard == [1]


def test_blinker_receiver_failure_is_named() -> None:
    bus = EventBus()

    def plain_receiver(sender: Any, payload: Any = None) -> None:
        raise KeyError("x")

    bus.signal("on_val_end").connect(plain_receiver, weak=False)
    with pytest.raises(SubscriberError, match="plain_receiver"):
        bus.emit("on_val_end")


# -- stop requests -------------------------------------------------------------------------


def test_stop_request_is_the_runs_and_the_next_run_forgets_it() -> None:
    from eventhooks.lifecycle import Run

    bus = EventBus()

    @bus.on("on_train_batch_end", once=2)
    def stop(payload: Any) -> None:
        bus.request_stop("two batches")

    with Run(bus) as run:
        run.epoch_start()
        run.batch_start()
        run.batch_end()
        assert not bus.stop_requested
        run.batch_start()
        run.batch_end()
        assert run.stop_requested and bus.stop_reason == "two batches"
        run.epoch_end()
    assert bus.stop_requested  # still visible after the run, until the next one opens
    with Run(bus) as run:
        assert not run.stop_requested and bus.stop_reason is None


def test_a_stop_requested_during_the_pretrain_routine_is_kept() -> None:
    from eventhooks.lifecycle import Run

    bus = EventBus()
    bus.on("on_pretrain_routine_end")(lambda p: bus.request_stop())
    with Run(bus) as run:
        run.ready()
        run.train_start()
        assert run.stop_requested
        assert list(run.epochs(3)) == []  # no epoch begins


# -- crossing process boundaries -------------------------------------------------------------


class Counter(Callback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_epoch_end(self, payload: EpochPayload) -> None:
        self.seen.append(payload.epoch)


def record_val(payload: RunPayload) -> None:
    RECORDED.append(payload.logs)


RECORDED: list[dict[str, float]] = []


def test_bus_pickles_with_its_subscriptions() -> None:
    import pickle

    bus = EventBus(errors="warn", max_failures=5)
    counter = Counter()
    bus.attach(counter, priority=3)
    bus.on("on_val_end", every=2)(record_val)
    bus.on("on_val_end", weak=True)(record_val)  # weak: stays behind
    bus.request_stop("why")
    clone: EventBus = pickle.loads(pickle.dumps(bus))
    assert clone.errors == "warn" and clone.max_failures == 5
    assert clone.stop_requested and clone.stop_reason == "why"
    copied = clone.subscriptions("on_fit_epoch_end")[0].owner
    assert isinstance(copied, Counter) and copied is not counter and copied.bus is clone
    clone.emit("on_fit_epoch_end", epoch=7)
    assert copied.seen == [7] and counter.seen == []
    RECORDED.clear()
    for i in range(4):
        clone.emit("on_val_end", logs={"i": i})
    assert RECORDED == [{"i": 1.0}, {"i": 3.0}]  # every=2 survived, the weak one did not


def test_teardown_reaches_everyone_then_the_first_failure_is_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    heard: list[str | None] = []

    def first(payload: Any) -> None:
        raise ValueError("first")

    def second(payload: Any) -> None:
        raise KeyError("second")

    bus.on("teardown", priority=2)(first)
    bus.on("teardown", priority=1)(second)
    bus.on("teardown")(lambda p: heard.append(p.error))
    with (
        caplog.at_level(logging.WARNING, logger="eventhooks"),
        pytest.raises(SubscriberError) as info,
    ):
        bus.emit("teardown", exception=RuntimeError("run failed"))
    assert heard == ["RuntimeError: run failed"]
    assert isinstance(info.value.original, ValueError)
    assert any("second" in r.getMessage() for r in caplog.records)


def test_emit_teardown_never_hides_the_runs_error(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    heard: list[str | None] = []
    bus.on("teardown", priority=1)(broken)
    bus.on("teardown")(lambda p: heard.append(p.error))
    run_error = RuntimeError("data broke")
    with caplog.at_level(logging.WARNING, logger="eventhooks"):
        bus.emit_teardown(run_error, epoch=2)
    assert heard == ["RuntimeError: data broke"]
    assert any("broken subscriber" in note for note in run_error.__notes__)
    assert any("while the run was failing" in r.getMessage() for r in caplog.records)
    with pytest.raises(SubscriberError):  # a run that ended well: the failure is the news
        bus.emit_teardown()


# -- changes during an emit, and plain blinker receivers ------------------------------------


def test_a_subscriber_disconnected_during_an_emit_is_not_called() -> None:
    bus = EventBus()
    heard: list[str] = []

    def b(payload: Any) -> None:
        heard.append("b")

    def a(payload: Any) -> None:
        heard.append("a")
        bus.disconnect(b)
        bus.subscribe("on_val_end", lambda p: heard.append("late"))  # next emit only

    bus.on("on_val_end", priority=1)(a)
    bus.on("on_val_end")(b)
    bus.emit("on_val_end")
    assert heard == ["a"]  # as blinker's own send would do
    heard.clear()
    bus.emit("on_val_end")
    assert heard == ["a", "late"]  # the one connected during this emit hears the next one


def test_a_failing_subscriber_that_disconnected_itself_keeps_its_policy() -> None:
    bus = EventBus()  # bus default: raise
    after: list[int] = []

    def quitter(payload: Any) -> None:
        bus.disconnect(quitter)
        raise ValueError("bye")

    bus.on("on_val_end", priority=1, errors="warn")(quitter)
    bus.on("on_val_end")(lambda p: after.append(1))
    bus.emit("on_val_end")  # warned, not raised
    assert after == [1] and not bus.disconnect(quitter)


def test_plain_blinker_receivers_keep_failures_and_respect_their_sender() -> None:
    bus = EventBus(errors="disable", max_failures=2)
    calls: list[str] = []

    def flaky(sender: Any, payload: Any = None) -> None:
        calls.append("flaky")
        raise RuntimeError("x")

    def elsewhere(sender: Any, payload: Any = None) -> None:
        calls.append("elsewhere")

    def for_bus(sender: Any, payload: Any = None) -> None:
        calls.append("for_bus")

    signal = bus.signal("on_val_end")
    signal.connect(flaky, weak=False)
    signal.connect(elsewhere, sender=object(), weak=False)
    signal.connect(for_bus, sender=bus, weak=False)
    for _ in range(4):
        bus.emit("on_val_end")
        with bus.muted():  # rebuilds every event: failures must survive it
            pass
        bus.subscribe("on_val_end", lambda p: None)
    assert calls.count("flaky") == 2 and calls.count("for_bus") == 4
    assert "elsewhere" not in calls


def test_a_bad_priority_is_refused_and_leaves_the_bus_intact() -> None:
    bus = EventBus()
    for bad in (None, "high", True):
        with pytest.raises(TypeError, match="priority"):
            bus.subscribe("on_val_end", lambda p: None, priority=bad)  # type: ignore[arg-type]
    assert not bus.listening("on_val_end")
    bus.subscribe("on_val_end", lambda p: None, priority=2.5)
    assert bus.listening("on_val_end")


def test_a_nested_emit_failure_reaches_the_caller_unwrapped() -> None:
    bus = EventBus()
    bus.on("on_model_save")(lambda p: 1 / 0)
    bus.on("on_fit_epoch_end")(lambda p: bus.emit("on_model_save", path="m.npz"))
    with pytest.raises(SubscriberError) as info:
        bus.emit("on_fit_epoch_end", epoch=0)
    assert info.value.event == "on_model_save"
    assert isinstance(info.value.original, ZeroDivisionError)


# -- core hardening (#10): nothing lost, options once, callbacks on two buses ----------------


def test_a_csv_logger_after_a_failing_subscriber_still_writes_its_row(tmp_path: Any) -> None:
    from eventhooks.callbacks import CSVLogger

    path = tmp_path / "log.csv"
    bus = EventBus()
    bus.on("on_fit_epoch_end", priority=1)(broken)
    bus.attach(CSVLogger(path))
    bus.emit("on_train_start")
    with pytest.raises(SubscriberError, match="broken subscriber"):
        bus.emit("on_fit_epoch_end", epoch=0, logs={"loss": 0.5})
    bus.emit("teardown")
    assert path.read_text().splitlines() == ["epoch,loss,val_loss", "0,0.5,NA"]


def test_the_first_failure_is_raised_and_later_ones_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    heard: list[str] = []

    def second(payload: Any) -> None:
        heard.append("second")
        raise KeyError("second failure")

    bus.on("on_val_end")(broken)
    bus.on("on_val_end")(second)
    bus.on("on_val_end", errors="warn")(lambda p: 1 / 0)
    bus.on("on_val_end")(lambda p: heard.append("last"))
    with caplog.at_level(logging.WARNING, logger="eventhooks"):
        with pytest.raises(SubscriberError) as info:
            bus.emit("on_val_end")
    assert isinstance(info.value.original, ValueError)  # the first one
    assert heard == ["second", "last"]
    logged = caplog.text
    assert "second failure" in logged and "ZeroDivisionError" in logged


def test_a_failing_plain_blinker_receiver_does_not_stop_the_others() -> None:
    bus = EventBus()
    heard: list[str] = []

    def bad(sender: Any, payload: Any = None) -> None:
        raise RuntimeError("plain")

    def good(sender: Any, payload: Any = None) -> None:
        heard.append("good")

    bus.signal("on_val_end").connect(bad, weak=False)
    bus.signal("on_val_end").connect(good, weak=False)
    with pytest.raises(SubscriberError, match="bad"):
        bus.emit("on_val_end")
    assert heard == ["good"]


def test_options_are_one_object_for_every_style() -> None:
    import dataclasses

    from eventhooks import OptionArgs, Options

    assert set(OptionArgs.__annotations__) == {f.name for f in dataclasses.fields(Options)}
    bus = EventBus()
    heard: list[int] = []
    bundle = Options(every=2, priority=5)
    sub = bus.subscribe("on_fit_epoch_end", lambda p: heard.append(p.epoch), bundle, once=4)
    assert sub.options == Options(every=2, once=4, priority=5)
    bus.on("on_fit_epoch_end", bundle)(lambda p: heard.append(-p.epoch))
    for epoch in range(6):
        bus.emit("on_fit_epoch_end", epoch=epoch)
    assert heard == [-1, 3, -3, -5]  # equal priority: connection order
    with pytest.raises(ValueError, match="every"):
        Options(every=0)
    with pytest.raises(TypeError, match="options"):
        bus.subscribe("on_val_end", lambda p: None, {"every": 2})  # type: ignore[call-overload]


class EveryOption(Callback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_end(self, payload: BatchPayload) -> None:
        self.seen.append(payload.batch)


def test_attach_takes_the_same_options_and_pickling_keeps_them_all() -> None:
    import pickle

    from eventhooks import Options

    bus = EventBus()
    bus.attach(EveryOption(), every=2, rank=0, errors="warn", max_failures=7, priority=-1)
    (sub,) = bus.subscriptions("on_train_batch_end")
    wanted = Options(every=2, rank=0, errors="warn", max_failures=7, priority=-1)
    assert sub.options == wanted
    clone: EventBus = pickle.loads(pickle.dumps(bus))
    (copied,) = clone.subscriptions("on_train_batch_end")
    assert copied.options == wanted and copied.label == sub.label
    for batch in range(4):
        clone.emit("on_train_batch_end", batch=batch)
    assert isinstance(copied.owner, EveryOption) and copied.owner.seen == [1, 3]


class TwoBuses(Callback):
    def on_train_batch_end(self, payload: BatchPayload) -> None:
        if payload.batch == 1:
            self.request_stop(f"batch 1 of {payload.epoch}")


def test_a_callback_on_two_buses_stops_the_bus_that_delivered_the_event() -> None:
    first, second = EventBus(), EventBus()
    callback = TwoBuses()
    first.attach(callback)
    second.attach(callback)  # attached last
    first.emit("on_train_batch_end", batch=1, epoch=0)
    assert first.stop_requested and not second.stop_requested
    assert first.stop_reason == "batch 1 of 0"
    second.emit("on_train_batch_end", batch=1, epoch=5)
    assert second.stop_reason == "batch 1 of 5"


def test_a_callback_handling_a_nested_emit_of_another_bus_stops_the_right_one() -> None:
    outer, inner = EventBus(), EventBus()

    class Relay(Callback):
        def on_val_end(self, payload: RunPayload) -> None:
            inner.emit("on_train_batch_end", batch=1, epoch=2)
            self.request_stop("outer, after the nested emit")

    stopper = TwoBuses()
    outer.attach(Relay())
    inner.attach(stopper)
    outer.attach(stopper)
    outer.emit("on_val_end")
    assert inner.stop_reason == "batch 1 of 2"
    assert outer.stop_reason == "outer, after the nested emit"


class Misspelt(Callback):
    def on_epoch_ned(self, payload: EpochPayload) -> None: ...


def test_a_callback_method_naming_no_event_is_refused_with_suggestions() -> None:
    bus = EventBus()
    with pytest.raises(UnknownEventError, match="on_epoch_ned") as info:
        bus.attach(Misspelt())
    assert "on_epoch_end" in info.value.suggestions
    assert any("not_a_hook" in note for note in getattr(info.value, "__notes__", []))
    assert bus.subscriptions() == []  # nothing half-attached


def test_a_helper_named_on_something_is_kept_when_marked() -> None:
    from eventhooks import not_a_hook

    class Helper(Callback):
        def __init__(self) -> None:
            self.seen: list[int] = []

        @not_a_hook
        def on_disk(self) -> bool:
            return True

        def on_epoch_end(self, payload: EpochPayload) -> None:
            self.seen.append(payload.epoch)

    class Plain:  # not a Callback: its other on_* attributes are its own business
        def on_something(self) -> None: ...

    bus = EventBus()
    helper = Helper()
    bus.attach(helper)
    bus.attach(Plain())
    bus.emit("on_epoch_end", epoch=2)
    assert helper.seen == [2] and helper.on_disk()


def test_a_disconnect_during_an_emit_skips_the_rest_only_for_that_subscriber() -> None:
    bus = EventBus()
    heard: list[str] = []
    later = bus.subscribe("on_val_end", lambda p: heard.append("later"), priority=-1)
    last = bus.subscribe("on_val_end", lambda p: heard.append("last"), priority=-2)
    bus.on("on_val_end", priority=1)(lambda p: later.disconnect())
    bus.emit("on_val_end")
    assert heard == ["last"] and not later.connected and last.connected


# -- review findings (#10): each of these failed before its fix ------------------------------

GC_DEADLOCK = """
import gc, sys
from eventhooks import EventBus
gc.set_threshold(5)
bus = EventBus()
class Watcher:
    def __init__(self):
        self.me = self  # a cycle: only the collector frees it, at any allocation
        self.sub = bus.subscribe("on_epoch_end", print)
    def __del__(self):
        self.sub.disconnect()
for _ in range(3000):
    Watcher()
    bus.subscribe("on_train_end", print).disconnect()
gc.collect()
assert bus.subscriptions() == [], bus.subscriptions()
print("done")
"""


def test_a_del_that_disconnects_during_a_change_does_not_deadlock() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", GC_DEADLOCK], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-2000:]


def test_a_when_predicate_runs_outside_the_subscriptions_lock() -> None:
    import threading
    import time

    bus = EventBus()
    state = threading.RLock()
    in_when = threading.Event()

    def should(payload: Any) -> bool:
        if payload.batch == 1:
            in_when.set()
            time.sleep(0.2)
        with state:
            return True

    bus.subscribe("on_train_batch_end", lambda p: None, when=should)

    def holder() -> None:
        in_when.wait(5)
        with state:
            bus.emit("on_train_batch_end", batch=0)

    first = threading.Thread(target=holder)
    second = threading.Thread(target=lambda: bus.emit("on_train_batch_end", batch=1))
    first.start()
    second.start()
    first.join(10)
    second.join(10)
    assert not first.is_alive() and not second.is_alive(), "deadlocked"


def test_a_weak_subscriber_that_dies_while_another_thread_changes_the_bus_is_gone() -> None:
    import threading

    bus = EventBus()

    def target(payload: Any) -> None: ...

    bus.subscribe("on_train_batch_end", target, weak=True)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with bus._lock:  # another thread in the middle of a change
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(5)
    threading.Timer(0.2, release.set).start()
    del target  # its weakref callback waits for the change to end
    gc.collect()
    thread.join(10)
    assert not bus.listening("on_train_batch_end") and bus.subscriptions() == []
    assert bus.emit("on_train_batch_end", batch=0) is None


def test_a_subscription_of_another_bus_is_not_undone_here() -> None:
    one, other = EventBus(), EventBus()
    heard: list[int] = []
    sub = other.subscribe("on_train_end", lambda p: heard.append(1))
    assert one.disconnect(sub) == 0 and sub.connected
    other.emit("on_train_end")
    assert heard == [1] and other.disconnect(sub) == 1


def test_attach_weak_holds_the_object_weakly_on_event_included() -> None:
    import weakref

    class Both(Callback):
        def __init__(self) -> None:
            self.seen: list[str] = []

        def on_epoch_end(self, payload: EpochPayload) -> None:
            self.seen.append("epoch")

        def on_event(self, event: Event[Any], payload: Any) -> None:
            self.seen.append(event.name)

    bus = EventBus()
    obj = Both()
    attachment = bus.attach(obj, weak=True)
    bus.emit("on_epoch_end", epoch=0)
    assert obj.seen == ["epoch", "on_fit_epoch_end"]
    gone = weakref.ref(obj)
    del obj
    gc.collect()
    assert gone() is None and attachment.obj is None
    assert bus.subscriptions() == [] and not bus.listening("on_epoch_end")


def test_ctrl_c_after_a_failure_still_reports_the_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(errors="warn")
    bus.on("on_val_end", priority=1)(broken)

    def interrupt(payload: Any) -> None:
        raise KeyboardInterrupt

    bus.on("on_val_end")(interrupt)
    with caplog.at_level(logging.WARNING, logger="eventhooks"):
        with pytest.raises(KeyboardInterrupt):
            bus.emit("on_val_end")
    assert "broken subscriber" in caplog.text


def test_emit_teardown_with_bad_fields_still_tears_down_with_the_runs_error() -> None:
    bus = EventBus()
    heard: list[str | None] = []
    bus.on("teardown")(lambda p: heard.append(p.error))
    error = ValueError("the run failed")
    bus.emit_teardown(error, epoch=-1)
    assert heard == ["ValueError: the run failed"]
    assert any("epoch" in note for note in getattr(error, "__notes__", []))


def test_blinkers_own_mute_silences_plain_receivers() -> None:
    bus = EventBus()
    heard: list[str] = []

    def receiver(sender: Any, payload: Any = None) -> None:
        heard.append("plain")

    signal = bus.signal("on_val_end")
    signal.connect(receiver, weak=False)
    with signal.muted():
        bus.emit("on_val_end")
    bus.emit("on_val_end")
    assert heard == ["plain"]


def test_once_survives_pickling_as_fired() -> None:
    import pickle

    bus = EventBus()
    bus.on("on_val_end", once=1)(record_val)
    bus.emit("on_val_end", logs={"i": 0})
    clone: EventBus = pickle.loads(pickle.dumps(bus))
    RECORDED.clear()
    clone.emit("on_val_end", logs={"i": 1})
    assert RECORDED == []


def test_only_a_callbacks_own_on_methods_are_checked() -> None:
    class KerasLike:  # another library's base with its own on_* methods
        def on_batch_begin(self, batch: int) -> None: ...

    class Mixed(Callback, KerasLike):
        def __init__(self) -> None:
            self.on_done = print  # an attribute, not a method of the class

    bus = EventBus()
    bus.attach(Mixed())  # neither is refused
    with pytest.raises(UnknownEventError):
        bus.attach(Misspelt())


def test_numpy_like_priorities_are_numbers() -> None:
    from fractions import Fraction

    bus = EventBus()
    sub = bus.subscribe("on_val_end", lambda p: None, priority=Fraction(3, 2))  # type: ignore[call-overload]
    assert sub.priority == 1.5 and type(sub.priority) is float


def test_once_fires_once_under_threads() -> None:
    import threading

    bus = EventBus()
    fired: list[int] = []
    bus.subscribe("on_fit_epoch_end", lambda p: fired.append(p.epoch), once=3)
    start = threading.Barrier(8)

    def emit() -> None:
        start.wait(10)
        for _ in range(50):
            bus.emit("on_fit_epoch_end", epoch=2)  # the 3rd epoch, from every thread at once

    threads = [threading.Thread(target=emit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert fired == [2]


def test_ctrl_c_in_a_subscriber_stops_delivery_at_once() -> None:
    bus = EventBus()
    heard: list[str] = []

    def interrupt(payload: Any) -> None:
        raise KeyboardInterrupt

    bus.on("on_val_end", priority=1)(interrupt)
    bus.on("on_val_end")(lambda p: heard.append("later"))
    with pytest.raises(KeyboardInterrupt):
        bus.emit("on_val_end")
    assert heard == []
