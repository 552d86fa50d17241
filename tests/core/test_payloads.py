"""Payloads validate what frameworks give, reject what they should not, and survive JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from eventhooks import Event, EventBus, PayloadError, events, registry

names = st.text(max_size=12)
floats = st.floats(allow_nan=True, allow_infinity=True)
index = st.integers(min_value=0, max_value=10**9)

FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "epoch": index,
    "batch": index,
    "step": index,
    "rank": st.integers(0, 64),
    "world_size": st.integers(1, 64),
    "logs": st.dictionaries(names, floats, max_size=6),
    "hyperparams": st.dictionaries(names, floats, max_size=3),
    "path": names,
    "format": names,
    "error": names,
}
EXCLUDED = {"source", "params", "outputs", "exception"}


@st.composite
def emitted_fields(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    event = draw(st.sampled_from(registry.events()))
    fields: dict[str, Any] = {}
    for name, info in event.payload.model_fields.items():
        if name in EXCLUDED:
            continue
        if info.is_required() or draw(st.booleans()):
            fields[name] = draw(FIELD_STRATEGIES[name])
    return event.name, fields


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=300)
@given(emitted_fields())
def test_payload_json_round_trip(case: tuple[str, dict[str, Any]]) -> None:
    name, fields = case
    event = registry.resolve(name)
    payload = event.payload(**fields, source=object())
    text = payload.model_dump_json()
    back = event.payload.model_validate_json(text)
    assert same(back.model_dump(), payload.model_dump())
    for key, value in fields.items():
        assert same(getattr(back, key), value)
    assert back.source is None  # the framework object is not serialized
    json.loads(text)  # Python's json reads NaN/Infinity


def listened(bus: EventBus, name: str | Event[Any]) -> list[Any]:
    got: list[Any] = []
    bus.subscribe(name, got.append)
    return got


def test_nan_loss_is_kept() -> None:
    bus = EventBus()
    got = listened(bus, "on_epoch_end")
    bus.emit("on_epoch_end", epoch=0, logs={"loss": float("nan"), "x": float("inf")})
    assert math.isnan(got[0].logs["loss"]) and got[0].logs["x"] == math.inf
    assert '"loss":NaN' in got[0].model_dump_json()


@pytest.mark.parametrize(
    ("name", "fields", "field"),
    [
        ("on_train_batch_end", {"batch": "three"}, "batch"),
        ("on_train_batch_end", {"batch": -1}, "batch"),
        ("on_train_batch_end", {}, "batch"),
        ("on_epoch_end", {"epoch": 1, "logs": {"loss": "high"}}, "logs"),
        ("on_model_save", {"epoch": 1}, "path"),
        ("on_fit_epoch_end", {"epoch": 1, "lgos": {}}, "lgos"),
        ("on_params_update", {"hyperparams": {"lr": "fast"}}, "hyperparams"),
    ],
)
def test_bad_fields_name_the_event_and_the_field(
    name: str, fields: dict[str, Any], field: str
) -> None:
    bus = EventBus()
    bus.subscribe(name, lambda p: None)
    with pytest.raises(PayloadError) as info:
        bus.emit(name, **fields)
    message = str(info.value)
    canonical = registry.resolve(name).name
    assert f"{name!r} ({canonical})" in message or (name == canonical and repr(name) in message)
    assert repr(field) in message.replace(".", "'")
    assert field in info.value.fields
    assert info.value.canonical == canonical and info.value.event == name


def test_teardown_describes_the_exception() -> None:
    bus = EventBus()
    got = listened(bus, events.teardown)
    error = ValueError("boom")
    bus.emit("teardown", exception=error)
    assert got[0].error == "ValueError: boom" and got[0].exception is error
    assert json.loads(got[0].model_dump_json())["error"] == "ValueError: boom"


def test_paths_accept_pathlike() -> None:
    bus = EventBus()
    got = listened(bus, "on_model_save")
    bus.emit("on_model_save", path=Path("/tmp/x.npz"), epoch=0)
    assert got[0].path == "/tmp/x.npz"


def test_optional_fields_keras_cannot_supply() -> None:
    """Keras gives on_train_begin only logs, and its batch hooks no epoch."""
    bus = EventBus()
    begin = listened(bus, "on_train_begin")
    batch = listened(bus, "on_train_batch_begin")
    bus.emit("on_train_begin", logs={})
    bus.emit("on_train_batch_begin", batch=0, logs={})
    assert begin[0].epoch is None and batch[0].epoch is None


# Every field name any built-in payload has, with values that are right for some events and
# wrong for others: emit's named parameters (batch, epoch, logs) must change nothing.
ANY_FIELD = st.sampled_from(sorted({*FIELD_STRATEGIES, "source"}))
ANY_VALUE = st.one_of(index, st.integers(-3, -1), names, st.none(), FIELD_STRATEGIES["logs"])


@settings(max_examples=300)
@given(
    event=st.sampled_from(registry.events()),
    fields=st.dictionaries(ANY_FIELD, ANY_VALUE, max_size=5),
)
def test_emit_validates_exactly_as_the_payload_type(event: Any, fields: dict[str, Any]) -> None:
    bus = EventBus()
    got = listened(bus, event.name)
    try:
        expected = event.payload(**fields)  # the run's facts (source, rank...) as keywords
    except (ValidationError, PayloadError) as exc:
        with pytest.raises(PayloadError) as info:
            bus.emit(event.name, **fields)
        if isinstance(exc, ValidationError):
            wrong = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        else:
            wrong = set(exc.fields)
        assert set(info.value.fields) == wrong
        assert got == []
        return
    assert bus.emit(event.name, **fields) is got[0]
    assert same(got[0].model_dump(), expected.model_dump())
    facts = {"source", "params", "rank", "world_size"}
    assert got[0].model_fields_set == expected.model_fields_set == set(fields) - facts
    assert (got[0].rank, got[0].world_size) == (expected.rank, expected.world_size)


def test_the_runs_facts_round_trip_and_cost_no_emit_anything() -> None:
    """rank/world_size dump to JSON and read back; validating a payload (what every emit does)
    never calls the Python __init__ that takes the run's facts as keywords."""
    for event in registry.events():
        assert not event.payload.__pydantic_custom_init__, event.name
    payload = registry.resolve("on_fit_epoch_end").payload(epoch=2, rank=1, world_size=4)
    text = payload.model_dump_json()
    assert json.loads(text)["rank"] == 1
    back = type(payload).model_validate_json(text)
    assert (back.rank, back.world_size, back.epoch) == (1, 4, 2)
    again = type(payload).model_validate(payload.model_dump())
    assert (again.rank, again.world_size) == (1, 4)
    with pytest.raises(PayloadError, match="rank"):
        type(payload).model_validate({"epoch": 0, "rank": -1})


def test_payloads_from_other_ranks_or_trainers_are_not_equal() -> None:
    event = registry.resolve("on_fit_epoch_end")
    first, second = object(), object()
    assert event.payload(epoch=0, rank=0) != event.payload(epoch=0, rank=1)
    assert event.payload(epoch=0, source=first) != event.payload(epoch=0, source=second)
    assert event.payload(epoch=0, source=first) == event.payload(epoch=0, source=first)


def test_a_context_that_is_not_a_run_context_is_a_payload_error() -> None:
    bus = EventBus()
    bus.on("on_val_end")(lambda p: p.rank)
    with pytest.raises(PayloadError, match="context"):
        bus.emit("on_val_end", context="x")  # type: ignore[arg-type]
