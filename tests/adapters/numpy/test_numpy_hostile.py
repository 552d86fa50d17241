"""NumPy arrays and scalars given to ``emit``: delivered, or a short PayloadError.

The core's hostile-input tests import no framework; these are their NumPy share: scalars of
every dtype, NaN/inf, 0-d and large arrays, object arrays of values whose repr raises, as
metrics, counters, paths, names of events and keys of ``logs``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from eventhooks import Event, EventBus, PayloadError, UnknownEventError, events
from eventhooks.errors import MAX_LINES

MESSAGE_LIMIT = 4000

# A complex64 metric is taken by its real part, as numpy's float() does, with its warning.
pytestmark = pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")


class RaisingRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr")


def object_array() -> Any:
    arr = np.empty(3, dtype=object)
    arr[:] = [RaisingRepr(), 1.0, None]
    return arr


DTYPES = [
    np.bool_,
    np.int8,
    np.uint8,
    np.int64,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.longdouble,
    np.complex64,
    np.datetime64,
    np.timedelta64,
    np.str_,
    np.bytes_,
]

numpy_scalars = st.one_of(
    *(
        hnp.from_dtype(np.dtype(kind))
        for kind in DTYPES
        if kind not in (np.datetime64, np.timedelta64)
    ),
    hnp.from_dtype(np.dtype("datetime64[s]")),
    hnp.from_dtype(np.dtype("timedelta64[ms]")),
)
numpy_arrays = st.one_of(
    hnp.arrays(
        st.sampled_from([np.float64, np.float32, np.int64, np.bool_, np.str_]),
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
    ),
    st.sampled_from(
        [
            lambda: np.zeros(1_000_000),
            lambda: np.arange(10).reshape(2, 5),
            lambda: np.array(np.nan),
            lambda: np.array(3),
            object_array,
            lambda: np.ma.masked_array([1.0, 2.0], mask=[True, False]),
        ]
    ).map(lambda make: make()),
)
numpy_values = st.one_of(numpy_scalars, numpy_arrays)
numpy_keys = st.one_of(
    st.text(max_size=6).map(np.str_),
    st.binary(max_size=6).map(np.bytes_),
    st.integers(-5, 5).map(np.int64),
)

FIELDS = ["logs", "epoch", "batch", "path", "error", "format", "rank", "world_size", "hyperparams"]
REQUIRED = {"batch": 0, "epoch": 0, "path": "/tmp/model.pt"}


@st.composite
def numpy_emits(draw: st.DrawFn) -> tuple[Event[Any], dict[str, Any]]:
    event = draw(st.sampled_from(events.BUILTIN))
    fields: dict[str, Any] = {
        name: REQUIRED[name]
        for name, info in event.payload.model_fields.items()
        if info.is_required()
    }
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=3)):
        if name in ("logs", "hyperparams"):
            pairs = draw(st.lists(st.tuples(numpy_keys, numpy_values), max_size=3))
            fields[name] = dict(pairs)
        else:
            fields[name] = draw(numpy_values)
    return event, fields


def check(event: Event[Any], fields: dict[str, Any]) -> Any:
    bus = EventBus()
    got: list[Any] = []
    bus.subscribe(event, got.append)
    try:
        payload = bus.emit(event.name, **fields)
    except PayloadError as err:
        text = str(err)
        assert not got and len(text) <= MESSAGE_LIMIT and repr(err)
        assert text.startswith(f"invalid payload for event {event.name!r}:\n")
        assert err.event == err.canonical == event.name
        assert err.fields and "<payload>" not in text
        lines = text.split("\n")[1:]
        assert 1 <= len(lines) <= MAX_LINES + 1 and all(len(line) <= 400 for line in lines)
        return None
    assert got == [payload]
    for name in ("logs", "hyperparams"):  # what is delivered is plain Python
        values = getattr(payload, name, {})
        assert all(type(k) is str and type(v) is float for k, v in values.items())
    for name in ("epoch", "batch", "rank", "world_size"):
        value = getattr(payload, name, None)
        assert value is None or type(value) is int
    return payload


@settings(max_examples=200)
@given(numpy_emits())
def test_numpy_values_are_delivered_as_python_or_a_short_payload_error(
    emitted: tuple[Event[Any], dict[str, Any]],
) -> None:
    check(*emitted)


def test_numpy_scalars_are_metrics_and_counters() -> None:
    payload = check(
        events.on_train_batch_end,
        {
            "batch": np.int64(2),
            "epoch": np.uint8(1),
            "logs": {np.str_("loss"): np.float32(0.5), "nan": np.float64("nan")},
        },
    )
    assert payload.batch == 2 and payload.epoch == 1
    assert payload.logs["loss"] == 0.5 and math.isnan(payload.logs["nan"])


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (np.zeros(1_000_000), "(got ndarray array(["),
        (np.arange(12).reshape(3, 4), "(got ndarray array([[ 0,  1,  2,  3], [ 4,  5,  6,  7], "),
        (object_array(), "(got <unprintable ndarray>)"),  # numpy's repr calls the items'
    ],
    ids=["large", "2d", "object"],
)
def test_an_array_is_a_short_payload_error_naming_the_field(value: Any, shown: str) -> None:
    """Its description is numpy's repr on one line, cut short (Ultralytics, once imported,
    changes how numpy prints floats: the test does not depend on it)."""
    bus = EventBus()
    bus.subscribe(events.on_fit_epoch_end, lambda payload: None)
    with pytest.raises(PayloadError) as info:
        bus.emit("on_epoch_end", epoch=0, logs={"loss": value})
    assert info.value.fields == ["logs"] and len(str(info.value)) < 400
    line = str(info.value).split("\n")[1]
    assert shown in line
    assert len(line) <= 200


def test_numpy_strings_as_event_names() -> None:
    bus = EventBus()
    got: list[Any] = []
    bus.subscribe(events.on_fit_epoch_end, got.append)
    bus.emit(np.str_("on_epoch_end"), epoch=0)  # a str subclass: a name
    assert len(got) == 1
    with pytest.raises(UnknownEventError) as info:
        bus.emit(np.bytes_(b"on_epoch_end"), epoch=0)  # type: ignore[arg-type]
    assert "event names are str" in str(info.value)
