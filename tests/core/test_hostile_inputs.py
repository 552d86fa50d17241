"""Whatever is given to ``emit`` ends in delivery or in one of eventhooks' documented errors.

Values whose ``repr``, ``__float__``, ``__index__``, ``__eq__``, ``__str__`` or ``__fspath__``
raise, dicts nested thousands deep, huge ints, bytes, NaN, dicts with keys of every type, str
subclasses, and event names that are none of the names (with a Cyrillic e, a trailing space,
bytes, None, a str whose ``__hash__`` raises): ``emit`` either delivers the payload or raises
a :class:`PayloadError` or :class:`UnknownEventError` whose message works, is bounded, and
names the event as it was spelled (and, for a payload, its canonical name and the field).

No framework here: numpy values are in tests/adapters/numpy/test_numpy_hostile.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError, field_validator

from eventhooks import (
    Event,
    EventBus,
    Payload,
    PayloadError,
    SubscriberError,
    UnknownEventError,
    events,
)
from eventhooks.errors import MAX_LINES
from eventhooks.registry import Registry

# pydantic-core asks a value whether it is a Mapping; a __class__ that raises there is
# reported through sys.unraisablehook (and then refused, as it should be).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

#: No message, however hostile the input, is longer than this.
MESSAGE_LIMIT = 4000
LINE_LIMIT = 400


class Boom(Exception):
    """What the hostile objects raise: it must never come out of ``emit``."""


# -- hostile objects -------------------------------------------------------------------------


class RaisingRepr:
    def __repr__(self) -> str:
        raise Boom("repr")


class RecursiveRepr:
    def __repr__(self) -> str:
        return repr(self)  # RecursionError


class ReprNotStr:
    def __repr__(self) -> str:
        return 42  # type: ignore[return-value]


class RaisingNumber:
    """Looks like a number to anyone who asks, and raises when asked."""

    def __float__(self) -> float:
        raise Boom("float")

    def __index__(self) -> int:
        raise Boom("index")

    def __int__(self) -> int:
        raise Boom("int")

    def __repr__(self) -> str:
        raise Boom("repr")


class RaisingEq:
    def __eq__(self, other: object) -> bool:
        raise Boom("eq")

    def __hash__(self) -> int:
        return id(self) >> 4


class RaisingEverything:
    def __eq__(self, other: object) -> bool:
        raise Boom("eq")

    def __hash__(self) -> int:
        return id(self) >> 4

    def __repr__(self) -> str:
        raise Boom("repr")

    def __str__(self) -> str:
        raise Boom("str")

    def __bool__(self) -> bool:
        raise Boom("bool")

    def __len__(self) -> int:
        raise Boom("len")

    def __iter__(self) -> Iterator[Any]:
        raise Boom("iter")

    def __getattr__(self, name: str) -> Any:
        raise Boom(f"getattr {name}")


class RaisingClass:
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise Boom("__class__")

    # Its repr works: pydantic-core reports the __class__ failure to sys.unraisablehook,
    # and pytest's hook repr()s the object.


class RaisingStr(str):
    """A str whose every method of its own raises (its hash is str's)."""

    def __eq__(self, other: object) -> bool:
        raise Boom("eq")

    def __ne__(self, other: object) -> bool:
        raise Boom("ne")

    __hash__ = str.__hash__

    def __repr__(self) -> str:
        raise Boom("repr")

    def __str__(self) -> str:
        raise Boom("str")

    def __getitem__(self, key: Any) -> str:
        raise Boom("getitem")

    def __len__(self) -> int:
        raise Boom("len")


class EqRaisingStr(str):
    def __eq__(self, other: object) -> bool:
        raise Boom("eq")

    __hash__ = str.__hash__


class HashRaisingStr(str):
    def __hash__(self) -> int:
        raise Boom("hash")


class LyingStr(str):
    """Equal to everything."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


class RaisingFloat(float):
    def __float__(self) -> float:
        raise Boom("float")

    def __repr__(self) -> str:
        raise Boom("repr")


class RaisingInt(int):
    def __index__(self) -> int:
        raise Boom("index")

    def __int__(self) -> int:
        raise Boom("int")

    def __repr__(self) -> str:
        raise Boom("repr")


class RaisingDict(dict[str, float]):
    def __iter__(self) -> Iterator[str]:
        raise Boom("iter")

    def items(self) -> Any:
        raise Boom("items")

    def keys(self) -> Any:
        raise Boom("keys")

    def __repr__(self) -> str:
        raise Boom("repr")


class NonePath:
    def __fspath__(self) -> str:
        return None  # type: ignore[return-value]


class IntPath:
    def __fspath__(self) -> str:
        return 3  # type: ignore[return-value]


class RaisingPath:
    def __fspath__(self) -> str:
        raise Boom("fspath")


class BytesPath:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __fspath__(self) -> bytes:
        return self.raw


class StrSubclassPath:
    def __fspath__(self) -> str:
        return RaisingStr("/tmp/model.pt")


class RaisingStrError(Exception):
    def __str__(self) -> str:
        raise Boom("str")


class RecursiveStrError(Exception):
    def __str__(self) -> str:
        return str(self)


def nested_dict(depth: int) -> dict[str, Any]:
    top: dict[str, Any] = {}
    inner = top
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    return top


def nested_list(depth: int) -> list[Any]:
    top: list[Any] = []
    inner = top
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return top


def cyclic() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


#: Each makes a fresh hostile value.
FACTORIES: list[Callable[[], Any]] = [
    RaisingRepr,
    RecursiveRepr,
    ReprNotStr,
    RaisingNumber,
    RaisingEq,
    RaisingEverything,
    lambda: RaisingStr("1.5"),
    lambda: EqRaisingStr("0"),
    lambda: HashRaisingStr("x"),
    lambda: LyingStr("2"),
    lambda: RaisingFloat(1.5),
    lambda: RaisingInt(3),
    lambda: RaisingDict(loss=1.0),
    NonePath,
    IntPath,
    RaisingPath,
    lambda: BytesPath(b"/tmp/x.pt"),
    lambda: BytesPath(b"\xff\xfe"),
    StrSubclassPath,
    lambda: Path("/tmp/x.pt"),
    RaisingStrError,
    RecursiveStrError,
    lambda: ValueError(nested_dict(3000)),
    lambda: nested_dict(3000),
    lambda: nested_list(3000),
    lambda: {"loss": nested_dict(3000)},
    cyclic,
    lambda: 10**5000,
    lambda: -(10**5000),
    lambda: 10**400,
    lambda: 2**64,
    lambda: Decimal("sNaN"),
    lambda: Decimal("1e999999"),
    lambda: Fraction(10**400, 3),
    lambda: complex(1, 2),
    lambda: float("nan"),
    lambda: float("-inf"),
    lambda: "x" * 100_000,
    lambda: b"\xff" * 100_000,
    lambda: bytearray(b"1.5"),
    lambda: memoryview(b"1"),
    lambda: type,
    lambda: object(),
    lambda: ...,
]


def _make(factory: Callable[[], Any]) -> Any:
    return factory()


# hypothesis asks what map() made whether it is a strategy: builds() makes RaisingClass.
hostile_leaf = st.one_of(
    st.sampled_from(FACTORIES).map(_make),
    st.builds(RaisingClass),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=8),
    st.text(max_size=8),
    st.builds(RaisingStr, st.text(max_size=8)),
    st.builds(EqRaisingStr, st.text(max_size=8)),
    st.none(),
    st.booleans(),
)

hostile_key = st.one_of(
    st.text(max_size=8),
    st.builds(RaisingStr, st.text(max_size=8)),
    st.builds(LyingStr, st.text(max_size=8)),
    st.integers(),
    st.none(),
    st.binary(max_size=4),
    st.tuples(st.integers()),
    st.sampled_from([RaisingEq, RaisingEverything, RaisingRepr]).map(_make),
    st.builds(RaisingClass),
)


@st.composite
def hostile_dict(
    draw: st.DrawFn, values: st.SearchStrategy[Any], keys: st.SearchStrategy[Any] = hostile_key
) -> dict[Any, Any]:
    """A dict built by hand: equal keys whose __eq__ raises collide, and hypothesis' own
    dictionaries() does not take str subclasses for keys."""
    built: dict[Any, Any] = {}
    for key, value in draw(st.lists(st.tuples(keys, values), max_size=4)):
        try:
            built[key] = value
        except Boom:
            pass
    return built


hostile_value = st.recursive(
    hostile_leaf,
    lambda inner: st.lists(inner, max_size=3) | hostile_dict(inner),
    max_leaves=6,
)

#: Metrics, with numbers that validate among the hostile ones: emits are delivered too.
hostile_logs = st.one_of(
    hostile_dict(st.one_of(st.floats(allow_nan=True, allow_infinity=True), hostile_value)),
    hostile_dict(
        st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**60), 2**60),
        st.one_of(st.text(max_size=8), st.builds(EqRaisingStr, st.text(max_size=8))),
    ),
    hostile_value,
)

#: Every field of a built-in payload, and names no payload has.
FIELD_NAMES = [
    "logs",
    "epoch",
    "batch",
    "step",
    "path",
    "error",
    "exception",
    "hyperparams",
    "format",
    "rank",
    "world_size",
    "params",
    "source",
    "outputs",
    "",  # an empty field name
    "lgos",  # an unknown extra field
    "\u0435poch",  # with a Cyrillic e
    "epoch ",
    "x" * 200,
]
MAPPINGS = {"logs", "hyperparams", "params"}

#: The fields an event needs, valid: hostile fields are added to them.
REQUIRED = {"batch": 0, "epoch": 0, "path": "/tmp/model.pt"}


@st.composite
def hostile_emits(draw: st.DrawFn) -> tuple[Event[Any], Any, dict[str, Any]]:
    event = draw(st.sampled_from(events.BUILTIN))
    spelled = draw(st.sampled_from([*event.names, event]))
    fields = {
        name: REQUIRED[name]
        for name, info in event.payload.model_fields.items()
        if info.is_required()
    }
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), unique=True, max_size=3)):
        fields[name] = draw(hostile_logs if name in MAPPINGS else hostile_value)
    return event, spelled, fields


# -- what an outcome must be -----------------------------------------------------------------


def spelled_as(spelled: Any) -> str:
    """The event as the caller spelled it, as a PayloadError names it."""
    if isinstance(spelled, Event):
        return spelled.name
    return str.__str__(spelled)


def check_payload_error(err: PayloadError, spelled: Any, canonical: str) -> None:
    text = str(err)
    assert repr(err)
    assert len(text) <= MESSAGE_LIMIT
    head, *lines = text.split("\n")
    name = spelled_as(spelled)
    assert err.event == name
    assert err.canonical == canonical
    assert head.startswith(f"invalid payload for event {name!r}")
    assert canonical in head
    assert (f"({canonical})" in head) == (name != canonical)
    assert lines and len(lines) <= MAX_LINES + 1
    for line in lines:
        assert len(line) <= LINE_LIMIT
        assert line.startswith(("  field ", "  ... and "))
    # The fields at fault: each is named (a payload-level error would be a bug here).
    assert err.fields and all(isinstance(field, str) for field in err.fields)
    for field in err.fields[:MAX_LINES]:
        if field == "":
            assert "  field '':" in text or "  field '." in text
        elif len(field) <= 40:
            assert repr(field)[1:-1] in text
    assert "<payload>" not in text


def emit_checked(
    bus: EventBus, got: list[Any], event: Event[Any], spelled: Any, fields: dict[str, Any]
) -> Any:
    """Emit; return the payload delivered, or None after checking the PayloadError."""
    try:
        payload = bus.emit(spelled, **fields)
    except PayloadError as err:
        assert not got
        check_payload_error(err, spelled, event.name)
        return None
    assert got and got[-1] is payload and isinstance(payload, event.payload)
    return payload


def listening(event: Event[Any]) -> tuple[EventBus, list[Any]]:
    bus = EventBus()
    got: list[Any] = []
    bus.subscribe(event, got.append)
    return bus, got


# -- the property ----------------------------------------------------------------------------


@settings(max_examples=200)
@given(hostile_emits())
def test_hostile_fields_are_delivered_or_a_payload_error(
    emitted: tuple[Event[Any], Any, dict[str, Any]],
) -> None:
    event, spelled, fields = emitted
    bus, got = listening(event)
    emit_checked(bus, got, event, spelled, fields)


@settings(max_examples=200)
@given(
    event=st.sampled_from(
        [events.on_fit_epoch_end, events.on_train_batch_end, events.on_params_update]
    ),
    logs=hostile_logs,
)
def test_hostile_metrics_are_delivered_or_a_payload_error(event: Event[Any], logs: Any) -> None:
    bus, got = listening(event)
    field = "hyperparams" if event is events.on_params_update else "logs"
    fields = {"epoch": 0, "batch": 0, field: logs}
    fields = {k: v for k, v in fields.items() if k in event.payload.model_fields}
    payload = emit_checked(bus, got, event, event.name, fields)
    if payload is not None:  # what was delivered is plain: str keys, float values
        delivered = getattr(payload, field)
        assert all(type(k) is str and type(v) is float for k, v in delivered.items())


ALL_NAMES = sorted(events.CANONICAL)


def near_misses(name: str) -> list[str]:
    return [
        name.replace("e", "\u0435", 1),  # Cyrillic e
        name.replace("o", "\u03bf", 1),  # Greek omicron
        name + " ",
        " " + name,
        name + "\n",
        name + "\u200b",  # zero-width space
        name + "\x00",
        name.upper(),
        name.replace("_", "-"),
        name.replace("_", "\uff3f"),  # fullwidth low line
        "\ufeff" + name,  # byte-order mark
    ]


NEAR_MISSES = sorted({miss for name in ALL_NAMES for miss in near_misses(name)} - set(ALL_NAMES))

hostile_names = st.one_of(
    st.sampled_from(ALL_NAMES),
    st.sampled_from(events.BUILTIN),
    st.sampled_from(NEAR_MISSES),
    st.sampled_from(ALL_NAMES + NEAR_MISSES).map(RaisingStr),
    st.sampled_from(ALL_NAMES + NEAR_MISSES).map(EqRaisingStr),
    st.sampled_from(ALL_NAMES + NEAR_MISSES).map(HashRaisingStr),
    st.sampled_from(ALL_NAMES).map(LyingStr),
    st.sampled_from(ALL_NAMES).map(str.encode),
    st.text(max_size=30),
    st.text(min_size=1000, max_size=2000),
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.tuples(st.sampled_from(ALL_NAMES)),
    st.lists(st.sampled_from(ALL_NAMES), max_size=1),
    st.dictionaries(st.sampled_from(ALL_NAMES), st.none(), max_size=1),
    st.sampled_from(FACTORIES).map(_make),
)


@settings(max_examples=200)
@given(name=hostile_names)
def test_hostile_event_names_are_delivered_or_unknown(name: Any) -> None:
    bus = EventBus()
    heard: list[tuple[str, Any]] = []

    def hears(event: Event[Any]) -> Callable[[Any], None]:
        return lambda payload: heard.append((event.name, payload))

    for event in events.BUILTIN:
        bus.subscribe(event, hears(event))
    kind = type(name)
    plain = str.__str__(name) if issubclass(kind, str) else None
    try:
        payload = bus.emit(name)
    except UnknownEventError as err:
        text = str(err)
        assert repr(err)
        assert len(text) <= 1000 and text.startswith("unknown event ")
        assert not heard
        if kind is str:  # a plain str is unknown exactly when it is no event's name
            assert plain not in events.CANONICAL
        if plain is not None and len(plain) <= 50:
            assert repr(plain) in text
        elif kind is bytes and len(name) <= 50:
            assert repr(name) in text
        elif plain is None:
            assert kind.__name__ in text
        return
    except PayloadError as err:  # a known event that needs fields (batch, path)
        assert not heard
        canonical = events.CANONICAL[plain] if plain is not None else err.canonical
        if isinstance(name, Event):
            canonical = name.name
        assert "<payload>" not in str(err) and len(str(err)) <= MESSAGE_LIMIT
        assert err.canonical == canonical
        if plain is not None:
            check_payload_error(err, plain, canonical)
        return
    # Delivered: only what names an event, to that event.
    assert heard and heard[-1][1] is payload
    if isinstance(name, Event):
        assert heard[-1][0] == name.name
    elif plain is not None and not isinstance(name, LyingStr):
        assert heard[-1][0] == events.CANONICAL[plain]


# -- the five cases of the issue -------------------------------------------------------------


def test_a_value_whose_repr_raises_is_a_payload_error() -> None:
    bus, got = listening(events.on_fit_epoch_end)
    with pytest.raises(PayloadError) as info:
        bus.emit("on_epoch_end", epoch=RaisingRepr())
    check_payload_error(info.value, "on_epoch_end", "on_fit_epoch_end")
    assert info.value.fields == ["epoch"]
    assert "(got <unprintable RaisingRepr>)" in str(info.value)
    assert not got  # nothing was delivered


def test_a_dict_nested_3000_deep_is_a_short_payload_error() -> None:
    bus, got = listening(events.on_fit_epoch_end)
    with pytest.raises(PayloadError) as info:
        bus.emit("on_fit_epoch_end", epoch=0, logs={"loss": nested_dict(3000)})
    check_payload_error(info.value, "on_fit_epoch_end", "on_fit_epoch_end")
    assert info.value.fields == ["logs"]
    assert "(got {'a': {'a': {...}}})" in str(info.value)
    with pytest.raises(PayloadError) as info:
        bus.emit("on_epoch_end", epoch=nested_list(3000))
    assert info.value.fields == ["epoch"] and len(str(info.value)) < 300
    assert not got  # nothing was delivered


@pytest.mark.parametrize(
    ("path", "said"),
    [
        (NonePath(), "NonePath gives no path: TypeError: expected NonePath.__fspath__() to "
                     "return str or bytes, not NoneType"),
        (IntPath(), "IntPath gives no path: TypeError"),
        (RaisingPath(), "RaisingPath gives no path: Boom: fspath"),
        (BytesPath(b"\xff"), "unable to parse raw data as a unicode string"),
        (b"\xff", "unable to parse raw data as a unicode string"),
    ],
)  # fmt: skip
def test_a_path_that_gives_no_path_is_a_payload_error_naming_the_field(
    path: Any, said: str
) -> None:
    bus, got = listening(events.on_model_save)
    with pytest.raises(PayloadError) as info:
        bus.emit(events.on_model_save, path=path, epoch=1)
    check_payload_error(info.value, events.on_model_save, "on_model_save")
    assert info.value.fields == ["path"]
    assert said in str(info.value)
    assert not got


@pytest.mark.parametrize(
    "path",
    [Path("/tmp/model.pt"), BytesPath(b"/tmp/model.pt"), b"/tmp/model.pt", StrSubclassPath()],
)
def test_paths_as_str_bytes_or_pathlike_are_stored_as_str(path: Any) -> None:
    bus, got = listening(events.on_model_save)
    bus.emit("on_model_save", path=path)
    assert type(got[0].path) is str and got[0].path == "/tmp/model.pt"


@pytest.mark.parametrize("cls", [EqRaisingStr, RaisingStr, HashRaisingStr])
def test_an_event_name_whose_str_methods_raise_is_looked_up_by_its_text(cls: type[str]) -> None:
    bus, got = listening(events.on_fit_epoch_end)
    try:
        payload = bus.emit(cls("on_epoch_end"), epoch=3)
    except UnknownEventError as err:  # allowed; delivery is better
        assert "'on_epoch_end'" in str(err)
    else:
        assert got == [payload] and payload.epoch == 3
    with pytest.raises(UnknownEventError) as info:
        bus.emit(cls("on_epoch_ned"), epoch=3)
    assert str(info.value).startswith("unknown event 'on_epoch_ned'; did you mean 'on_epoch_end'")


def test_an_empty_field_name_is_named_as_such() -> None:
    bus, got = listening(events.on_fit_epoch_end)
    with pytest.raises(PayloadError) as info:
        empty: dict[str, Any] = {"": 0}
        bus.emit("on_epoch_end", epoch=0, **empty)
    check_payload_error(info.value, "on_epoch_end", "on_fit_epoch_end")
    assert info.value.fields == [""]
    assert "  field '': Extra inputs are not permitted (got 0)" in str(info.value)
    assert not got  # nothing was delivered


# -- the messages ----------------------------------------------------------------------------


def test_the_message_names_the_event_as_spelled_its_canonical_name_the_field_and_the_value() -> (
    None
):
    bus, got = listening(events.on_fit_epoch_end)
    with pytest.raises(PayloadError) as info:
        bus.emit("on_epoch_end", epoch=-1, logs={"loss": "high", "acc": 0.5}, lgos={})
    assert str(info.value) == (
        "invalid payload for event 'on_epoch_end' (on_fit_epoch_end):\n"
        "  field 'epoch': Input should be greater than or equal to 0 (got -1)\n"
        "  field 'logs.loss': Input should be a valid number, unable to parse string as a "
        "number (got 'high')\n"
        "  field 'lgos': Extra inputs are not permitted (got {})"
    )
    assert info.value.fields == ["epoch", "logs", "lgos"]
    assert info.value.event == "on_epoch_end" and info.value.canonical == "on_fit_epoch_end"
    with pytest.raises(PayloadError) as info:
        bus.emit(events.on_epoch_end)
    assert str(info.value) == (
        "invalid payload for event 'on_fit_epoch_end':\n  field 'epoch': Field required"
    )
    assert not got  # nothing was delivered


def test_values_are_described_briefly_and_safely() -> None:
    bus, got = listening(events.on_params_update)
    cases = {
        "lr": (10**5000, "<int of about 5001 digits>"),
        "momentum": ("x" * 1000, "'xxxxxxxxxx"),
        "decay": (RecursiveRepr(), "<unprintable RecursiveRepr>"),
        "beta": (ReprNotStr(), "<unprintable ReprNotStr>"),
        "eps": ([1, [2, [3, [4]]], 5, 6, 7, 8], "[1, [2, [...]], 5, 6, ...2 more]"),
        "gamma": (RaisingStr("fast"), "<unprintable RaisingStr>"),
    }
    with pytest.raises(PayloadError) as info:
        bus.emit("on_params_update", hyperparams={k: v for k, (v, _) in cases.items()})
    text = str(info.value)
    for key, (_, shown) in cases.items():
        line = next(line for line in text.split("\n") if f"'hyperparams.{key}'" in line)
        assert shown in line and len(line) <= 200, line
    assert not got  # nothing was delivered


def test_many_bad_fields_are_counted_beyond_the_first_ten() -> None:
    bus, got = listening(events.on_fit_epoch_end)
    with pytest.raises(PayloadError) as info:
        bus.emit("on_fit_epoch_end", epoch=0, logs={f"m{i}": "x" for i in range(1000)})
    lines = str(info.value).split("\n")
    assert len(lines) == 1 + MAX_LINES + 1 and lines[-1] == "  ... and 990 more"
    assert len(info.value.errors) == 1000
    assert not got  # nothing was delivered


def test_dict_keys_whose_repr_raises_are_a_payload_error() -> None:
    """pydantic's own ``errors()`` raises for them: the error is built without it."""
    bus, got = listening(events.on_fit_epoch_end)
    with pytest.raises(PayloadError) as info:
        bus.emit("on_epoch_end", epoch=0, logs={RaisingEverything(): 1.0})
    check_payload_error(info.value, "on_epoch_end", "on_fit_epoch_end")
    assert info.value.fields == ["logs"]
    assert not got  # nothing was delivered


def test_str_subclass_keys_and_values_are_delivered_as_plain_str_and_float() -> None:
    bus, got = listening(events.on_fit_epoch_end)
    bus.emit("on_epoch_end", epoch=0, logs={EqRaisingStr("loss"): RaisingFloat(0.5)})
    assert type(next(iter(got[0].logs))) is str and got[0].logs == {"loss": 0.5}


# -- teardown and its exception --------------------------------------------------------------


def test_teardown_with_an_exception_whose_str_raises_is_delivered() -> None:
    bus, got = listening(events.teardown)
    bus.emit("teardown", exception=RaisingStrError())
    assert got[0].error == "RaisingStrError: <unprintable message>"
    bus.emit("teardown", exception=RecursiveStrError())
    assert got[1].error == "RecursiveStrError: <unprintable message>"


def test_teardown_with_something_that_is_no_exception_names_the_field() -> None:
    bus, got = listening(events.teardown)
    for value in (RaisingClass(), RaisingEverything(), "boom"):
        with pytest.raises(PayloadError) as info:
            bus.emit("teardown", exception=value)
        check_payload_error(info.value, "teardown", "teardown")
        assert info.value.fields == ["exception"]
        assert "expected an exception instance" in str(info.value)
    assert not got  # nothing was delivered


# -- the errors themselves never fail --------------------------------------------------------


HOSTILE_NAMES: dict[str, Callable[[], Any]] = {
    "str-all-raise": lambda: RaisingStr("on_epoch_end"),
    "str-hash-raises": lambda: HashRaisingStr("on_epoch_ned"),
    "str-eq-raises": lambda: EqRaisingStr("on_epoch_ned"),
    "bytes": lambda: b"on_epoch_end",
    "bytes-not-utf8": lambda: b"\xff",
    "none": lambda: None,
    "int": lambda: 3,
    "list": list,
    "dict": dict,
    "everything-raises": RaisingEverything,
    "class-raises": RaisingClass,
    "long": lambda: "x" * 100_000,
    "cyrillic": lambda: "on_epoch_\u0435nd",
}


@pytest.mark.parametrize("make", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_unknown_event_error_takes_any_name(make: Callable[[], Any]) -> None:
    name = make()
    err = UnknownEventError(name, events.CANONICAL)
    text = str(err)
    assert text.startswith("unknown event ") and len(text) <= 1000 and repr(err)
    assert err.name is name


def test_a_cyrillic_near_miss_says_where_it_leaves_ascii() -> None:
    err = UnknownEventError("on_epoch_\u0435nd", events.CANONICAL)
    assert str(err).startswith(
        "unknown event 'on_epoch_\u0435nd' (not ASCII: U+0435 CYRILLIC SMALL LETTER IE at 9); "
        "did you mean 'on_epoch_end'"
    )
    err = UnknownEventError("on_epoch_end ", events.CANONICAL)
    assert "(note the whitespace around it)" in str(err)


def test_a_subscriber_error_whose_original_cannot_be_printed() -> None:
    bus = EventBus(errors="raise")

    def fails(payload: Any) -> None:
        raise RaisingStrError()

    bus.subscribe("on_train_end", fails)
    with pytest.raises(SubscriberError) as info:
        bus.emit("on_train_end")
    assert "RaisingStrError: <unprintable message>" in str(info.value)
    assert isinstance(info.value.original, RaisingStrError)


class Strict(Payload):
    """A custom payload whose validator raises what pydantic does not convert."""

    step: int = 0
    tag: str = ""

    @field_validator("tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        if value == "boom":
            raise Boom("no boom")
        return value


def test_from_validation_names_the_field_of_an_exception_when_it_can() -> None:
    exc = Boom("no boom")
    err = PayloadError.from_validation(
        "t.on_x", "t.on_x", exc, payload=Strict, fields={"step": 1, "tag": "boom"}
    )
    assert err.fields == ["tag"]
    assert str(err) == (
        "invalid payload for event 't.on_x':\n"
        "  field 'tag': Boom raised while validating: no boom (got 'boom')"
    )
    err = PayloadError.from_validation("t.on_x", "t.on_x", exc)
    assert err.fields == [] and "  field <payload>: Boom raised while validating" in str(err)


def test_from_validation_never_raises() -> None:
    for exc in (RaisingStrError(), RecursiveStrError(), Boom(RaisingEverything())):
        err = PayloadError.from_validation(RaisingStr("x"), "x", exc)
        assert str(err).startswith("invalid payload for event 'x':")
    try:
        Strict.model_validate({"step": RaisingNumber(), "bad": RaisingEverything()})
    except ValidationError as exc:
        err = PayloadError.from_validation(b"\xff", "t.on_x", exc)
        assert set(err.fields) == {"step", "bad"} and len(str(err)) < MESSAGE_LIMIT


def test_a_custom_payload_whose_validator_raises_is_a_payload_error() -> None:
    registry = Registry()
    event = registry.register("t.on_x", Strict)
    bus = EventBus(registry=registry)
    got: list[Any] = []
    bus.subscribe(event, got.append)
    with pytest.raises(PayloadError) as info:
        bus.emit("t.on_x", tag="boom")
    text = str(info.value)
    assert text.startswith("invalid payload for event 't.on_x':\n")
    # The field is named when the bus hands emit's fields to from_validation.
    assert "field 'tag': Boom raised while validating: no boom" in text or (
        "field <payload>: Boom raised while validating: no boom" in text
    )
    assert not got


def test_recursion_limit_is_untouched() -> None:
    limit = sys.getrecursionlimit()
    bus, got = listening(events.on_fit_epoch_end)
    with pytest.raises(PayloadError):
        bus.emit("on_epoch_end", epoch=RecursiveRepr())
    assert sys.getrecursionlimit() == limit
    assert not got  # nothing was delivered
