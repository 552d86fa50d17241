"""Into Keras: KerasCallback under real Keras 3 (torch backend) fit, evaluate and predict.

The buses check the canonical order as the events come (``EventBus(check_order=True)``),
except where a test makes a trace that a bus cannot follow alone: a nested run started by a
native Keras callback (outside any emit), one that dies midway, a fit that dies unannounced.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import keras  # type: ignore[import-untyped]
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventhooks import Callback, EpochPayload, EventBus, RunPayload, SubscriberError, events
from eventhooks.adapters.keras import KerasCallback, fit, keras_run
from eventhooks.testing import CountingBus, Recorder, assert_canonical_order

#: What KerasCallback emits (save/export come from the helpers, tested elsewhere).
KERAS_EMITS = (
    "on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start",
    "on_train_epoch_start", "on_train_batch_start", "on_train_batch_end", "on_train_epoch_end",
    "on_val_start", "on_val_batch_start", "on_val_batch_end", "on_val_end", "on_fit_epoch_end",
    "on_train_end", "teardown", "on_predict_start", "on_predict_batch_start",
    "on_predict_batch_end", "on_predict_end", "on_params_update",
)  # fmt: skip

FEATURES, CLASSES = 4, 3


def make_model(seed: int = 0) -> Any:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 1).astype("int64")
    return x, y


def batch_trace(rec: Recorder, name: str) -> list[tuple[int | None, int]]:
    return [(p.epoch, p.batch) for p in rec.payloads(name)]


@settings(max_examples=6, deadline=None)
@given(
    epochs=st.integers(1, 3),
    n=st.integers(5, 40),
    batch_size=st.integers(4, 16),
    n_val=st.one_of(st.none(), st.integers(3, 20)),
    initial_epoch=st.integers(0, 1),
)
def test_fit_emits_keras_moments_in_canonical_order(
    epochs: int, n: int, batch_size: int, n_val: int | None, initial_epoch: int
) -> None:
    """Whatever the epochs, batch size and validation, the trace is canonical and complete."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = make_model()
    x, y = make_data(n)
    val = make_data(n_val, seed=1) if n_val else None
    epochs = epochs + initial_epoch
    history = model.fit(
        x, y, epochs=epochs, initial_epoch=initial_epoch, batch_size=batch_size,
        validation_data=val, verbose=0, callbacks=[KerasCallback(bus)],
    )  # fmt: skip

    assert_canonical_order(rec.names, emitted=KERAS_EMITS)
    ran = list(range(initial_epoch, epochs))
    steps = math.ceil(n / batch_size)
    expected = [(e, b) for e in ran for b in range(steps)]
    assert batch_trace(rec, "on_train_batch_start") == expected
    assert batch_trace(rec, "on_train_batch_end") == expected
    assert [p.epoch for p in rec.payloads("on_train_epoch_start")] == ran
    assert [p.epoch for p in rec.payloads("on_train_epoch_end")] == ran
    fit_ends = rec.payloads("on_fit_epoch_end")
    assert [p.epoch for p in fit_ends] == ran
    # on_fit_epoch_end carries exactly what Keras' History recorded.
    for i, payload in enumerate(fit_ends):
        assert payload.logs == {k: v[i] for k, v in history.history.items()}
    # The synthesized on_train_epoch_end carries the epoch's training metrics.
    for train_end, fit_end in zip(rec.payloads("on_train_epoch_end"), fit_ends, strict=True):
        assert train_end.logs == {k: v for k, v in fit_end.logs.items() if "val_" not in k}
        assert set(train_end.logs) == {"loss", "accuracy"}
    if val is None:
        assert not rec.payloads("on_val_start")
    else:
        val_steps = math.ceil(n_val / batch_size)  # type: ignore[operator]
        val_expected = [(e, b) for e in ran for b in range(val_steps)]
        assert batch_trace(rec, "on_val_batch_end") == val_expected
        assert [p.epoch for p in rec.payloads("on_val_end")] == ran
        for val_end, fit_end in zip(rec.payloads("on_val_end"), fit_ends, strict=True):
            assert {f"val_{k}": v for k, v in val_end.logs.items()} == {
                k: v for k, v in fit_end.logs.items() if k.startswith("val_")
            }
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert rec.payloads("on_train_end")[0].logs == fit_ends[-1].logs
    assert rec.payloads("teardown")[0].error is None


def test_payloads_carry_model_and_params_and_arrive_on_the_calling_thread() -> None:
    bus = EventBus(check_order=True)
    seen: list[tuple[str, Any, Any, int]] = []
    for event in events.BUILTIN:
        bus.subscribe(
            event,
            # mypy cannot type a lambda with a default argument (bound per iteration).
            lambda p, name=event.name: seen.append(  # type: ignore[misc]
                (name, p.source, p.params, threading.get_ident())
            ),
        )
    model = make_model()
    x, y = make_data(20)
    cb = KerasCallback(bus)
    history = model.fit(x, y, epochs=2, batch_size=4, validation_split=0.25, verbose=0,
                        callbacks=[cb])  # fmt: skip
    assert {name for name, *_ in seen} == {n for n in KERAS_EMITS if not n.startswith("on_predict")}
    assert all(source is model for _, source, _, _ in seen)
    assert all(params == history.params for _, _, params, _ in seen)
    assert history.params == {"verbose": 0, "epochs": 2, "steps": 4}
    assert {tid for *_, tid in seen} == {threading.get_ident()}


def test_batch_events_keep_order_with_slow_subscribers() -> None:
    """Keras would send a non-overridden batch-end hook to a thread pool: ours never go."""
    bus = EventBus(check_order=True)
    order: list[tuple[str, int]] = []

    @bus.on(events.on_train_batch_end)
    def slow(p: Any) -> None:
        # Long enough that a thread-pool dispatch would let the next batch begin first.
        threading.Event().wait(0.002)
        order.append(("end", p.batch))

    @bus.on(events.on_train_batch_start)
    def begin(p: Any) -> None:
        order.append(("begin", p.batch))

    make_model().fit(*make_data(24), epochs=1, batch_size=4, verbose=0,
                     callbacks=[KerasCallback(bus)])  # fmt: skip
    assert order == [(kind, b) for b in range(6) for kind in ("begin", "end")]


def test_ultralytics_and_keras_names_hear_the_same_moments() -> None:
    bus = EventBus(check_order=True)
    heard: dict[str, list[Any]] = {}
    names = (
        "on_fit_epoch_end", "on_epoch_end", "on_val_end", "on_test_end",
        "on_train_start", "on_train_begin", "on_train_epoch_start", "on_epoch_begin",
    )  # fmt: skip
    for name in names:
        bus.add_callback(name, lambda p, name=name: heard.setdefault(name, []).append(p))  # type: ignore[misc]

    class Ultra(Callback):
        def __init__(self) -> None:
            self.fit_ends: list[EpochPayload] = []
            self.val_ends: list[RunPayload] = []

        def on_fit_epoch_end(self, payload: EpochPayload) -> None:
            self.fit_ends.append(payload)

        def on_val_end(self, payload: RunPayload) -> None:
            self.val_ends.append(payload)

    ultra = Ultra()
    bus.attach(ultra)
    x, y = make_data(16)
    make_model().fit(x, y, epochs=2, batch_size=8, validation_data=(x, y), verbose=0,
                     callbacks=[KerasCallback(bus)])  # fmt: skip
    for ultra_name, keras_name in zip(names[::2], names[1::2], strict=True):
        assert heard[ultra_name] == heard[keras_name]
    assert len(heard["on_fit_epoch_end"]) == 2
    assert len(heard["on_val_end"]) == 2
    assert ultra.fit_ends == heard["on_epoch_end"]
    assert ultra.val_ends == heard["on_test_end"]
    assert all("val_loss" in p.logs for p in ultra.fit_ends)


def test_evaluate_and_predict() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = make_model()
    x, y = make_data(21)
    cb = KerasCallback(bus)
    loss, acc = model.evaluate(x, y, batch_size=8, verbose=0, callbacks=[cb])
    predicted = model.predict(x, batch_size=8, verbose=0, callbacks=[cb])
    assert_canonical_order(rec.names, emitted=KERAS_EMITS)
    assert rec.names[0] == "on_val_start" and "on_train_start" not in rec.names
    assert [p.batch for p in rec.payloads("on_val_batch_end")] == [0, 1, 2]
    # Outside fit, evaluation belongs to no epoch.
    assert all(p.epoch is None for p in rec.payloads("on_val_batch_end"))
    assert rec.payloads("on_val_end")[0].logs == pytest.approx({"loss": loss, "accuracy": acc})
    batches = rec.payloads("on_predict_batch_end")
    assert [p.batch for p in batches] == [0, 1, 2]
    assert [len(p.outputs) for p in batches] == [8, 8, 5]
    np.testing.assert_array_equal(np.concatenate([p.outputs for p in batches]), predicted)


def test_predict_with_dict_outputs_keeps_them_whole() -> None:
    """Keras flattens a dict of outputs into the logs; the payload gets the dict back."""
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(4)(inputs)
    model = keras.Model(
        inputs, {"score": keras.layers.Dense(1)(hidden), "probs": keras.layers.Dense(2)(hidden)}
    )
    bus = EventBus(check_order=True)
    rec = Recorder(bus, [events.on_predict_batch_end])
    x, _ = make_data(6)
    predicted = model.predict(x, batch_size=6, verbose=0, callbacks=[KerasCallback(bus)])
    (payload,) = rec.payloads("on_predict_batch_end")
    assert set(payload.outputs) == {"score", "probs"}
    for key in ("score", "probs"):
        np.testing.assert_array_equal(payload.outputs[key], predicted[key])


@pytest.mark.parametrize(("stop_epoch", "stop_batch"), [(0, 0), (1, 2), (2, 4)])
def test_request_stop_after_a_batch_stops_fit_there(stop_epoch: int, stop_batch: int) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)

    at = (stop_epoch, stop_batch)

    @bus.on(events.on_train_batch_end, when=lambda p: (p.epoch, p.batch) == at)
    def stop(p: Any) -> None:
        bus.request_stop("enough")

    history = make_model().fit(*make_data(20), epochs=5, batch_size=4, verbose=0,
                               callbacks=[KerasCallback(bus)])  # fmt: skip
    assert_canonical_order(rec.names, emitted=KERAS_EMITS)
    assert batch_trace(rec, "on_train_batch_end")[-1] == (stop_epoch, stop_batch)
    assert len(history.history["loss"]) == stop_epoch + 1
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert bus.stop_reason == "enough"


def test_request_stop_at_epoch_end_and_the_next_run_starts_afresh() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    sub = bus.subscribe(events.on_fit_epoch_end, lambda p: bus.request_stop(), once=2)
    model = make_model()
    x, y = make_data(12)
    cb = KerasCallback(bus)
    history = model.fit(x, y, epochs=6, batch_size=4, verbose=0, callbacks=[cb])
    assert history.history and len(history.history["loss"]) == 2
    # The request outlives the fit until the next run starts; predict is not cut short.
    assert bus.stop_requested
    rec.clear()
    model.predict(x, batch_size=4, verbose=0, callbacks=[cb])
    assert len(rec.payloads("on_predict_batch_end")) == 3
    # A new fit forgets the old request.
    sub.disconnect()
    history = model.fit(x, y, epochs=3, batch_size=4, verbose=0, callbacks=[cb])
    assert len(history.history["loss"]) == 3
    assert not bus.stop_requested


class Boom(RuntimeError):
    pass


def test_keras_alone_gives_no_teardown_when_fit_raises() -> None:
    """The Keras fact keras_run exists for: an aborted fit is invisible to callbacks."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    bus.subscribe(events.on_train_batch_end, _raise_at(1, 2))
    with pytest.raises(SubscriberError):
        make_model().fit(*make_data(16), epochs=3, batch_size=4, verbose=0,
                         callbacks=[KerasCallback(bus)])  # fmt: skip
    assert "teardown" not in rec.names and "on_train_end" not in rec.names


def _raise_at(epoch: int, batch: int) -> Any:
    def fail(p: Any) -> None:
        if (p.epoch, p.batch) == (epoch, batch):
            raise Boom(f"broke at {epoch}/{batch}")

    return fail


@settings(max_examples=5, deadline=None)
@given(fail_epoch=st.integers(0, 2), fail_batch=st.integers(0, 3))
def test_keras_run_ends_a_failed_fit_with_teardown(fail_epoch: int, fail_batch: int) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    failing = bus.subscribe(events.on_train_batch_end, _raise_at(fail_epoch, fail_batch))
    model = make_model()
    with pytest.raises(SubscriberError) as info, keras_run(bus) as cb:
        model.fit(*make_data(16), epochs=3, batch_size=4, verbose=0, callbacks=[cb])
    assert rec.names[-1] == "teardown" and rec.names.count("teardown") == 1
    assert "on_train_end" not in rec.names
    assert_canonical_order(rec.names, emitted=KERAS_EMITS)
    (down,) = rec.payloads("teardown")
    assert down.exception is info.value
    assert isinstance(info.value.original, Boom)
    assert down.error is not None and f"broke at {fail_epoch}/{fail_batch}" in down.error
    assert down.epoch == fail_epoch and down.source is model
    # The next fit through the same callback runs cleanly.
    rec.clear()
    failing.disconnect()
    model.fit(*make_data(8), epochs=1, batch_size=4, verbose=0, callbacks=[cb])
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert rec.payloads("teardown")[0].error is None


def test_keras_run_does_not_invent_teardown_outside_fit() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    bus.subscribe(events.on_predict_batch_end, lambda p: 1 / 0)
    model = make_model()
    x, y = make_data(8)
    with pytest.raises(SubscriberError), keras_run(bus) as cb:
        model.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[cb])
        model.predict(x, verbose=0, callbacks=[cb])
    assert rec.names.count("teardown") == 1  # the fit's own, before predict
    assert rec.names[-1] == "on_predict_batch_end"


def test_fit_helper_tears_down_on_success_and_on_any_failure() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = make_model()
    x, y = make_data(12)
    history = fit(model, x, y, bus=bus, epochs=2, batch_size=4, verbose=0)
    assert len(history.history["loss"]) == 2
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert rec.names.count("teardown") == 1
    # x and y of different lengths: Keras fails before any callback runs. The run opened
    # before Keras checked the data, so it ends with a teardown that says why.
    rec.clear()
    with pytest.raises(ValueError):
        fit(model, x[:4], y[:3], bus=bus, verbose=0)
    assert rec.names == ["on_pretrain_routine_start", "teardown"]
    assert rec.payloads("teardown")[0].error.startswith("ValueError")
    assert_canonical_order(rec.names, emitted=KERAS_EMITS)


def test_fit_helper_sends_teardown_once_when_a_teardown_subscriber_fails() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    heard: list[BaseException | None] = []

    def broken(p: Any) -> None:
        heard.append(p.exception)
        raise Boom("teardown subscriber broke")

    bus.subscribe(events.teardown, broken)
    with pytest.raises(SubscriberError) as info:
        fit(make_model(), *make_data(8), bus=bus, epochs=1, batch_size=4, verbose=0)
    assert isinstance(info.value.original, Boom)
    assert heard == [None]  # the successful run's teardown, not a second one about itself
    assert rec.names.count("teardown") == 1 and rec.names[-2:] == ["on_train_end", "teardown"]


class DataBroke(Exception):
    pass


def _broken_batches(at: int) -> Any:
    x, y = make_data(4 * (at + 1))
    for i in range(at + 1):
        if i == at:
            raise DataBroke("corrupt batch")
        yield x[4 * i : 4 * (i + 1)], y[4 * i : 4 * (i + 1)]


def _failing_teardown(bus: EventBus) -> list[BaseException | None]:
    heard: list[BaseException | None] = []

    def broken(p: Any) -> None:
        heard.append(p.exception)
        raise Boom("teardown subscriber broke")

    bus.subscribe(events.teardown, broken)
    return heard


@pytest.mark.parametrize("at", [2, 4])
def test_a_failing_teardown_subscriber_does_not_hide_the_real_error_in_keras_run(
    at: int,
) -> None:
    bus = EventBus(check_order=True)
    heard = _failing_teardown(bus)
    with pytest.raises(DataBroke) as info, keras_run(bus) as cb:
        make_model().fit(_broken_batches(at), epochs=1, steps_per_epoch=at + 2, shuffle=False,
                         verbose=0, callbacks=[cb])  # fmt: skip
    assert heard == [info.value]
    assert any("teardown subscriber broke" in note for note in info.value.__notes__)


def test_a_failing_teardown_subscriber_does_not_hide_a_subscriber_error() -> None:
    bus = EventBus(check_order=True)
    heard = _failing_teardown(bus)
    bus.subscribe(events.on_train_batch_end, _raise_at(0, 1))
    with pytest.raises(SubscriberError) as info, keras_run(bus) as cb:
        make_model().fit(*make_data(16), epochs=2, batch_size=4, verbose=0, callbacks=[cb])
    assert isinstance(info.value.original, Boom) and "broke at 0/1" in str(info.value)
    assert heard == [info.value]
    assert any("teardown subscriber broke" in note for note in info.value.__notes__)


def test_a_failing_teardown_subscriber_does_not_hide_the_real_error_in_fit() -> None:
    x, y = make_data(8)
    for args in [(x[:4], y[:3]), (_broken_batches(2),)]:  # before and after train begin
        bus = EventBus(check_order=True)
        heard = _failing_teardown(bus)
        with pytest.raises((ValueError, DataBroke)) as info:
            fit(make_model(), *args, bus=bus, epochs=1, steps_per_epoch=3, shuffle=False, verbose=0)
        assert heard == [info.value]
        assert any("teardown subscriber broke" in note for note in info.value.__notes__)


@pytest.mark.parametrize("fail_batch", [0, 2])
def test_a_callback_reused_after_an_unannounced_failed_fit_reports_only_what_happens(
    fail_batch: int,
) -> None:
    bus = EventBus()
    rec = Recorder(bus)
    cb = KerasCallback(bus)
    model = make_model()
    x, y = make_data(16)
    failing = bus.subscribe(events.on_train_batch_end, _raise_at(0, fail_batch))
    with pytest.raises(SubscriberError):
        model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[cb])
    failing.disconnect()
    rec.clear()
    model.evaluate(x, y, batch_size=8, verbose=0, callbacks=[cb])
    assert rec.names == [
        "on_val_start", "on_val_batch_start", "on_val_batch_end", "on_val_batch_start",
        "on_val_batch_end", "on_val_end",
    ]  # fmt: skip
    assert all(p.epoch is None for _, p in rec.records)
    rec.clear()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[cb])
    assert_canonical_order(rec.names, emitted=KERAS_EMITS)
    assert rec.names.count("on_train_epoch_end") == 1


def test_callback_epoch_is_the_running_epoch_and_none_outside_fit() -> None:
    bus = EventBus(check_order=True)
    cb = KerasCallback(bus)
    seen: list[tuple[int | None, int | None]] = []
    bus.subscribe(events.on_train_batch_end, lambda p: seen.append((cb.epoch, p.epoch)))
    assert cb.epoch is None
    model = make_model()
    model.fit(*make_data(8), epochs=2, batch_size=4, verbose=0, callbacks=[cb])
    assert seen and all(mine == theirs for mine, theirs in seen)
    assert cb.epoch is None
    bus.subscribe(events.on_train_batch_end, _raise_at(1, 0))
    with pytest.raises(SubscriberError), keras_run(bus) as run_cb:
        model.fit(*make_data(8), epochs=2, batch_size=4, verbose=0, callbacks=[run_cb])
    assert run_cb.epoch is None


def test_a_subscriber_failing_in_on_train_end_still_gets_teardown() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    bus.subscribe(events.on_train_end, lambda p: 1 / 0)
    with pytest.raises(SubscriberError), keras_run(bus) as cb:
        make_model().fit(*make_data(8), epochs=1, batch_size=4, verbose=0, callbacks=[cb])
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert "ZeroDivisionError" in rec.payloads("teardown")[0].error


def test_unheard_moments_are_not_emitted() -> None:
    """The hot path: with one epoch subscriber, no batch event is even built."""
    bus = CountingBus()
    ends: list[int] = []
    bus.subscribe(events.on_fit_epoch_end, lambda p: ends.append(p.epoch))
    x, y = make_data(16)
    make_model().fit(x, y, epochs=2, batch_size=4, validation_data=(x, y), verbose=0,
                     callbacks=[KerasCallback(bus)])  # fmt: skip
    assert ends == [0, 1]
    # Nothing else but the run's edges (the bus may emit them unheard) reaches emit.
    edges = {"on_pretrain_routine_start", "on_train_start", "on_train_end", "teardown"}
    assert [n for n in bus.emitted if n not in edges] == ["on_fit_epoch_end"] * 2


def test_what_keras_has_no_hook_for_is_filled_in_by_the_lifecycle() -> None:
    """The pretrain routine (prepared by Keras before on_train_begin), the training part of
    each epoch's end (before validation) and teardown (after on_train_end)."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    x, y = make_data(8)
    make_model().fit(x, y, epochs=2, batch_size=4, validation_data=(x, y), verbose=0,
                     callbacks=[KerasCallback(bus)])  # fmt: skip
    val = ["on_val_start", *["on_val_batch_start", "on_val_batch_end"] * 2, "on_val_end"]
    epoch = ["on_train_epoch_start", *["on_train_batch_start", "on_train_batch_end"] * 2,
             "on_train_epoch_end", *val, "on_fit_epoch_end"]  # fmt: skip
    assert rec.names == [
        "on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start",
        "on_params_update", *epoch * 2, "on_train_end", "teardown",
    ]  # fmt: skip


def test_fit_helper_opens_the_run_before_keras_prepares_it() -> None:
    """fit() emits on_pretrain_routine_start before calling Keras, the routine's end when
    Keras begins training (with its params), and knows a resumed run's first epoch."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = make_model()
    x, y = make_data(8)
    history = fit(model, x, y, bus=bus, epochs=3, initial_epoch=1, batch_size=4, verbose=0)
    assert rec.names[:3] == [
        "on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start",
    ]  # fmt: skip
    start, end, train = (rec.payloads(n)[0] for n in rec.names[:3])
    assert start.source is model and start.params is None  # Keras has not set them yet
    assert end.params == train.params == history.params
    assert train.epoch == 1
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [1, 2]


def test_batches_of_several_steps_carry_their_first_and_last_step() -> None:
    """With steps_per_execution (TensorFlow and JAX backends; the torch backend refuses it),
    Keras' batch hooks get the batch's first and last step: the events carry them."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    cb = KerasCallback(bus)
    cb.set_model(make_model())
    cb.on_train_begin({})
    cb.on_epoch_begin(0, {})
    for first in (0, 2):
        cb.on_train_batch_begin(first, {})
        cb.on_train_batch_end(first + 1, {"loss": 1.0})
    cb.on_epoch_end(0, {"loss": 1.0})
    cb.on_train_end({"loss": 1.0})
    assert [p.batch for p in rec.payloads("on_train_batch_start")] == [0, 2]
    assert [p.batch for p in rec.payloads("on_train_batch_end")] == [1, 3]
    assert rec.names[-2:] == ["on_train_end", "teardown"]


def test_the_old_switches_for_filled_in_moments_are_gone() -> None:
    """The lifecycle emits every moment in order and ends each run with one teardown."""
    with pytest.raises(TypeError):
        KerasCallback(EventBus(), teardown=False)  # type: ignore[call-arg]
    with pytest.raises(TypeError), keras_run(EventBus(), train_epoch_end=False):  # type: ignore[call-arg]
        pass


def test_bad_logs_name_the_event_and_field() -> None:
    """Keras logs that are not numbers fail validation with the event named."""
    from eventhooks import PayloadError

    bus = EventBus(check_order=True)
    bus.subscribe(events.on_fit_epoch_end, lambda p: None)

    class Labeller(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            assert logs is not None
            logs["note"] = "not a number"

    with pytest.raises(PayloadError) as info:
        make_model().fit(*make_data(8), epochs=1, batch_size=4, verbose=0,
                         callbacks=[Labeller(), KerasCallback(bus)])  # fmt: skip
    assert "on_fit_epoch_end" in str(info.value) and "note" in str(info.value)


# -- a predict or evaluate run through the same callback while a fit is running ------------

_NESTED_EMITS = {
    "predict": ("on_predict_start", "on_predict_batch_start", "on_predict_batch_end",
                "on_predict_end"),
    "evaluate": ("on_val_start", "on_val_batch_start", "on_val_batch_end", "on_val_end"),
}  # fmt: skip


def _run_nested(kind: str, model: Any, x: np.ndarray, y: np.ndarray, cb: KerasCallback) -> None:
    if kind == "predict":
        model.predict(x, batch_size=3, verbose=0, callbacks=[cb])
    else:
        model.evaluate(x, y, batch_size=3, verbose=0, callbacks=[cb])


class _Nested:
    """Runs ``kind`` through ``cb`` and remembers which slice of ``rec`` it produced."""

    def __init__(
        self, kind: str, model: Any, rec: Recorder, data: tuple[np.ndarray, np.ndarray]
    ) -> None:
        self.kind, self.model, self.rec, self.data = kind, model, rec, data
        self.cb: KerasCallback | None = None
        self.spans: list[tuple[int, int]] = []

    def __call__(self, *_: Any) -> None:
        assert self.cb is not None
        start = len(self.rec.records)
        _run_nested(self.kind, self.model, *self.data, self.cb)
        self.spans.append((start, len(self.rec.records)))

    def split(self) -> tuple[list[tuple[str, Any]], list[list[tuple[str, Any]]]]:
        """The fit's own records, and each nested run's."""
        inner = {i for a, b in self.spans for i in range(a, b)}
        own = [r for i, r in enumerate(self.rec.records) if i not in inner]
        return own, [self.rec.records[a:b] for a, b in self.spans]


@pytest.mark.parametrize("kind", ["predict", "evaluate"])
@pytest.mark.parametrize("other_model", [False, True])
def test_a_run_nested_in_a_fit_epoch_end_leaves_the_fit_intact(
    kind: str, other_model: bool
) -> None:
    """Keras calls set_model/set_params for the nested run's CallbackList: the fit goes on.

    The grammar (PRODUCT.md §1) has no place for a run inside a fit, so the nested run's
    events are checked apart: the fit's own trace is canonical, and so is each nested run.
    """
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = make_model()
    x, y = make_data(16)
    xv, yv = make_data(6, seed=1)
    nested_model = make_model(seed=1) if other_model else model
    nested = _Nested(kind, nested_model, rec, (x[:7], y[:7]))
    bus.subscribe(events.on_fit_epoch_end, nested)
    cb = nested.cb = KerasCallback(bus)
    epochs = 3
    model.fit(x, y, epochs=epochs, batch_size=8, validation_data=(xv, yv), verbose=0,
              callbacks=[cb])  # fmt: skip
    own, runs = nested.split()
    names = [n for n, _ in own]
    assert_canonical_order(names, emitted=KERAS_EMITS)
    assert names.count("on_train_epoch_end") == names.count("on_val_start") == epochs
    # Validation belongs to its epoch, every epoch, after the training part of it.
    assert [p.epoch for p in rec.payloads("on_val_end") if p.params["epochs"] == epochs] == [
        *range(epochs)
    ]
    fit_params = own[0][1].params
    assert fit_params["epochs"] == epochs
    assert all(p.params == fit_params and p.source is model for _, p in own)
    assert cb.params == fit_params and cb.model is model
    assert len(runs) == epochs
    start, batch_start, batch_end, end = _NESTED_EMITS[kind]
    for run in runs:  # 7 samples in batches of 3: 3 batches
        assert [n for n, _ in run] == [start, *[batch_start, batch_end] * 3, end]
        assert_canonical_order([n for n, _ in run], emitted=KERAS_EMITS)
        for _, p in run:
            assert p.source is nested_model and p.params["steps"] == 3
            assert getattr(p, "epoch", None) is None


@pytest.mark.parametrize("kind", ["predict", "evaluate"])
def test_keras_run_tears_down_a_fit_that_fails_after_a_nested_run(kind: str) -> None:
    """A nested run must not make the fit look ended: a later failure still gets teardown."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = make_model()
    x, y = make_data(16)
    nested = _Nested(kind, model, rec, (x[:4], y[:4]))
    bus.subscribe(events.on_fit_epoch_end, nested)
    bus.subscribe(events.on_train_batch_end, _raise_at(1, 1))
    with pytest.raises(SubscriberError) as info, keras_run(bus) as cb:
        nested.cb = cb
        model.fit(x, y, epochs=3, batch_size=4, verbose=0, callbacks=[cb])
    assert rec.names[-1] == "teardown" and rec.names.count("teardown") == 1
    (down,) = rec.payloads("teardown")
    assert down.exception is info.value and "broke at 1/1" in (down.error or "")
    assert down.epoch == 1 and down.source is model
    assert down.params == rec.payloads("on_train_start")[0].params
    own, runs = nested.split()
    assert len(runs) == 1
    assert_canonical_order([n for n, _ in own], emitted=KERAS_EMITS)


class _EvaluateAtEpochEnd(keras.callbacks.Callback):  # type: ignore[misc]
    """A native Keras callback, listed before ours, that evaluates through our callback."""

    def __init__(self, ours: KerasCallback, data: Any) -> None:
        super().__init__()
        self.ours, self.data = ours, data

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.model.evaluate(*self.data, batch_size=4, verbose=0, callbacks=[self.ours])


def test_a_native_callback_evaluating_before_ours_does_not_close_the_training_epoch() -> None:
    """Without validation the epoch is still open when the nested evaluate runs: the
    evaluate is not the fit's validation, so on_train_epoch_end still comes, once, after it.
    """
    bus = EventBus()
    rec = Recorder(bus)
    cb = KerasCallback(bus)
    model = make_model()
    x, y = make_data(8)
    model.fit(x, y, epochs=2, batch_size=4, verbose=0,
              callbacks=[_EvaluateAtEpochEnd(cb, (x, y)), cb])  # fmt: skip
    evaluate = ["on_val_start", *["on_val_batch_start", "on_val_batch_end"] * 2, "on_val_end"]
    batch = ["on_train_batch_start", "on_train_batch_end"]
    epoch = ["on_train_epoch_start", *batch * 2, *evaluate, "on_train_epoch_end",
             "on_fit_epoch_end"]  # fmt: skip
    begin = ["on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start",
             "on_params_update"]  # fmt: skip
    assert rec.names == [*begin, *epoch * 2, "on_train_end", "teardown"]
    assert [p.epoch for p in rec.payloads("on_train_epoch_end")] == [0, 1]
    assert all(p.epoch is None for p in rec.payloads("on_val_batch_end"))
    assert all(p.params["epochs"] == 2 for p in rec.payloads("on_fit_epoch_end"))


@pytest.mark.parametrize(
    "during", ["on_fit_epoch_end", "on_train_batch_end", "on_val_start", "on_val_batch_end"]
)
def test_a_nested_run_that_fails_and_is_caught_leaves_the_fit_intact(during: str) -> None:
    """The nested predict dies midway (no end hook); its caller catches the error and the
    fit goes on. From on_train_batch_end the fit's validation comes right after it."""
    bus = EventBus()
    rec = Recorder(bus)
    model, other = make_model(), make_model(seed=1)
    x, y = make_data(8)
    cb = KerasCallback(bus)
    caught: list[SubscriberError] = []

    def peek(p: Any) -> None:
        if p.epoch == 0 and getattr(p, "batch", 1) == 1:  # the last batch: validation next
            try:
                other.predict(x, batch_size=2, verbose=0, callbacks=[cb])
            except SubscriberError as exc:
                caught.append(exc)

    bus.subscribe(during, peek)

    def predict_breaks(p: Any) -> None:
        if p.batch == 1:
            raise Boom("predict broke")

    bus.subscribe(events.on_predict_batch_end, predict_breaks)
    model.fit(x, y, epochs=2, batch_size=4, validation_data=(x, y), verbose=0, callbacks=[cb])
    assert caught and isinstance(caught[0].original, Boom)
    assert rec.names.count("on_predict_batch_end") == 2 and "on_predict_end" not in rec.names
    own = [(n, p) for n, p in rec.records if p.source is model]
    assert_canonical_order([n for n, _ in own], emitted=KERAS_EMITS)
    assert len(own) + sum(p.source is other for _, p in rec.records) == len(rec.records)
    fit_params = own[0][1].params
    assert all(p.params == fit_params for _, p in own)
    assert [p.epoch for p in rec.payloads("on_val_end")] == [0, 1]
    assert cb.params == fit_params and cb.model is model


def test_a_run_nested_in_a_nested_run_gives_the_outer_run_its_model_back() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model, other, third = make_model(), make_model(seed=1), make_model(seed=2)
    x, y = make_data(8)
    cb = KerasCallback(bus)

    def evaluate_other(p: Any) -> None:
        if p.epoch == 0:
            other.evaluate(x, y, batch_size=2, verbose=0, callbacks=[cb])

    def predict_third(p: Any) -> None:
        if p.source is other and p.batch == 1:
            third.predict(x, batch_size=4, verbose=0, callbacks=[cb])

    bus.subscribe(events.on_fit_epoch_end, evaluate_other)
    bus.subscribe(events.on_val_batch_end, predict_third)
    model.fit(x, y, epochs=2, batch_size=4, validation_data=(x, y), verbose=0, callbacks=[cb])
    sources = [p.source for _, p in rec.records]
    assert sources.count(third) == 1 + 2 * 2 + 1  # start, 2 batches of 4 (start, end), end
    # The outer evaluate's events after the inner predict still carry its model and params.
    outer = [p for n, p in rec.records if p.source is other]
    assert [n for n, p in rec.records if p.source is other][-1] == "on_val_end"
    assert all(p.params == outer[0].params and p.params["steps"] == 4 for p in outer)
    own = [(n, p) for n, p in rec.records if p.source is model]
    assert_canonical_order([n for n, _ in own], emitted=KERAS_EMITS)
    assert all(p.params["steps"] == 2 for _, p in own)


def test_an_evaluate_or_predict_that_failed_leaves_nothing_behind() -> None:
    """A call whose subscriber failed is over (Keras aborted it): the next call is on its own.

    (A plain bus: the grammar has no failed VAL or PREDICT, so a bus checking the order
    cannot follow the calls after one.)
    """
    bus = EventBus()
    rec = Recorder(bus)
    cb = KerasCallback(bus)
    model, other = make_model(), make_model(seed=1)
    x, y = make_data(8)
    failing = bus.subscribe(events.on_predict_batch_end, lambda p: 1 / 0)
    with pytest.raises(SubscriberError):
        other.predict(x, batch_size=4, verbose=0, callbacks=[cb])
    failing.disconnect()
    failing = bus.subscribe(events.on_val_batch_end, lambda p: 1 / 0)
    with pytest.raises(SubscriberError):
        other.evaluate(x, y, batch_size=4, verbose=0, callbacks=[cb])
    failing.disconnect()
    rec.clear()
    model.predict(x, batch_size=4, verbose=0, callbacks=[cb])
    assert cb.model is model and cb.params["steps"] == 2
    assert all(p.source is model for _, p in rec.records)
    assert_canonical_order(rec.names)


# -- the learning rate -------------------------------------------------------------------------


def rates(rec: Recorder) -> list[tuple[int | None, int | None, dict[str, float]]]:
    return [(p.epoch, p.batch, dict(p.hyperparams)) for p in rec.payloads("on_params_update")]


def test_a_constant_learning_rate_is_announced_once_after_on_train_start() -> None:
    """As Keras' TensorBoard reads it: the optimizer's ``learning_rate``, as a float."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = make_model()  # Adam(0.01)
    x, y = make_data(12)
    model.fit(x, y, epochs=3, batch_size=4, validation_split=0.25, verbose=0,
              callbacks=[KerasCallback(bus)])  # fmt: skip
    rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert rates(rec) == [(None, None, {"learning_rate": rate})]
    start = rec.names.index("on_train_start")
    assert rec.names[start + 1] == "on_params_update"
    assert_canonical_order(rec.names, emitted=KERAS_EMITS)


@pytest.mark.parametrize("scheduler_first", [True, False], ids=["scheduler-first", "ours-first"])
def test_a_learning_rate_scheduler_s_changes_are_announced_in_their_epoch(
    scheduler_first: bool,
) -> None:
    """LearningRateScheduler sets the rate in on_epoch_begin, before or after our callback:
    either way the change is announced once, in the epoch it is for (at its first batch)."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.01 / (epoch + 1))
    ours = KerasCallback(bus)
    model = make_model()
    x, y = make_data(12)
    model.fit(x, y, epochs=3, batch_size=4, verbose=0,
              callbacks=[scheduler, ours] if scheduler_first else [ours, scheduler])  # fmt: skip
    f32 = [float(np.float32(0.01 / (e + 1))) for e in range(3)]
    assert rates(rec) == [(None, None, {"learning_rate": f32[0]}),
                          (1, 0, {"learning_rate": f32[1]}),
                          (2, 0, {"learning_rate": f32[2]})]  # fmt: skip
    assert_canonical_order(rec.names, emitted=KERAS_EMITS)


def test_a_rate_changed_at_an_epoch_s_end_is_announced_after_it() -> None:
    """ReduceLROnPlateau changes the rate in on_epoch_end: announced after on_fit_epoch_end,
    so it is the next epoch's rate."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = make_model()
    rate = model.optimizer.learning_rate
    halve = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: rate.assign(rate * 0.5))
    x, y = make_data(12)
    model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[halve, KerasCallback(bus)])
    assert rates(rec) == [(epoch, None, {"learning_rate": float(np.float32(rate))})
                          for epoch, rate in ((None, 0.01), (0, 0.005), (1, 0.0025))]  # fmt: skip
    ends = [i for i, name in enumerate(rec.names) if name == "on_fit_epoch_end"]
    assert [rec.names[i + 1] for i in ends] == ["on_params_update", "on_params_update"]


def test_nobody_listening_to_the_rate_gets_no_announcement() -> None:
    bus = CountingBus()
    bus.subscribe(events.on_fit_epoch_end, lambda p: None)
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.01 / (epoch + 1))
    x, y = make_data(8)
    make_model().fit(x, y, epochs=2, batch_size=4, verbose=0,
                     callbacks=[KerasCallback(bus), scheduler])  # fmt: skip
    assert "on_params_update" not in bus.emitted
    assert bus.emitted.count("on_fit_epoch_end") == 2


def test_a_schedule_s_rate_is_the_one_at_each_epoch_s_end() -> None:
    """As Keras' own TensorBoard writes ``epoch_learning_rate`` (bug: the rate at the epoch's
    start, one epoch behind)."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = make_model()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=3, decay_rate=0.5)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="sparse_categorical_crossentropy")
    x, y = make_data(12)  # 3 steps an epoch
    model.fit(x, y, epochs=3, batch_size=4, verbose=0, callbacks=[KerasCallback(bus)])
    latest, at_epoch_ends = 0.0, []  # what TensorBoard writes: the latest rate at each end
    for name, payload in rec.records:
        if name == "on_params_update":
            latest = payload.hyperparams["learning_rate"]
        elif name == "on_fit_epoch_end":
            at_epoch_ends.append(latest)
    at_end = [float(np.float32(0.1 * 0.5 ** (e + 1))) for e in range(3)]  # after 3, 6, 9 steps
    assert at_epoch_ends == pytest.approx(at_end, rel=1e-6)
    assert_canonical_order(rec.names, emitted=KERAS_EMITS)

