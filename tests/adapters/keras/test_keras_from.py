"""Out of Keras: Keras' own callbacks, unchanged, under the NumPy reference trainer."""

from __future__ import annotations

import csv
import math
import pickle
from pathlib import Path
from typing import Any

import keras  # type: ignore[import-untyped]
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventhooks import EventBus, SubscriberError, events
from eventhooks.adapters.keras import KerasCallback, KerasModelProxy, from_keras
from eventhooks.adapters.numpy import NumpyTrainer
from eventhooks.testing import Recorder


def noisy_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A learnable task with 30% label noise: a wide MLP overfits it within a few epochs."""
    x = rng.normal(size=(n, 6))
    y = (x[:, 0] > 0).astype("int64")
    flip = rng.random(n) < 0.3
    y[flip] = 1 - y[flip]
    return x, y


def task(seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return noisy_data(24, rng), noisy_data(64, rng)


def test_history_records_what_fit_reported() -> None:
    bus = EventBus()
    history = keras.callbacks.History()
    bus.attach(from_keras(history))
    trainer = NumpyTrainer(bus=bus, hidden=(16,), seed=1)
    (x, y), val = task()
    reported = trainer.fit(x, y, epochs=4, batch_size=8, validation_data=val)
    assert history.history == reported
    assert set(reported) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.epoch == [0, 1, 2, 3]
    assert history.params == {"verbose": 0, "epochs": 4, "steps": 3, "batch_size": 8}
    # History sets model.history: on the proxy, not on the trainer (whose history is a dict).
    assert isinstance(history.model, KerasModelProxy)
    assert history.model.source is trainer
    assert history.model.history is history
    assert trainer.history is reported


def test_csv_logger_writes_one_row_per_epoch(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    bus = EventBus()
    bus.attach(from_keras(keras.callbacks.CSVLogger(str(path))))
    trainer = NumpyTrainer(bus=bus, hidden=(16,), seed=2)
    (x, y), val = task(1)
    reported = trainer.fit(x, y, epochs=3, batch_size=8, validation_data=val)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for key, values in reported.items():
        assert [float(r[key]) for r in rows] == values


def expected_early_stop(val_loss: list[float], patience: int) -> tuple[int | None, int]:
    """Keras' EarlyStopping rule (min mode, min_delta 0), redone by hand: (stop, best)."""
    best, best_epoch, wait = math.inf, 0, 0
    for epoch, value in enumerate(val_loss):
        wait += 1
        if value < best:
            best, best_epoch, wait = value, epoch, 0
            continue
        if wait >= patience and epoch > 0:
            return epoch, best_epoch
    return None, best_epoch


@settings(max_examples=6, deadline=None)
@given(patience=st.integers(1, 4), seed=st.sampled_from([0, 3]))
def test_early_stopping_stops_at_the_right_epoch_and_restores_the_best_weights(
    patience: int, seed: int
) -> None:
    bus = EventBus()
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True
    )
    bus.attach(from_keras(stopper))
    trainer = NumpyTrainer(bus=bus, hidden=(64,), lr=0.02, seed=seed)
    snapshots: list[list[np.ndarray]] = []
    val_losses: list[float] = []

    @bus.on(events.on_fit_epoch_end, priority=10)
    def snapshot(p: Any) -> None:
        snapshots.append(p.source.get_weights())
        val_losses.append(p.logs["val_loss"])

    (x, y), val = task(seed)
    epochs = 30
    reported = trainer.fit(x, y, epochs=epochs, batch_size=8, validation_data=val)

    # Recompute the rule on a full-length run: the stopped run is its prefix.
    full = NumpyTrainer(hidden=(64,), lr=0.02, seed=seed)
    full_losses = full.fit(x, y, epochs=epochs, batch_size=8, validation_data=val)["val_loss"]
    stop, best = expected_early_stop(full_losses, patience)
    assert stop is not None and stop < epochs - 1, "the task must overfit for this test"
    assert reported["val_loss"] == full_losses[: stop + 1]
    assert len(snapshots) == stop + 1
    assert stopper.stopped_epoch == stop and stopper.best_epoch == best
    assert bus.stop_reason is not None and "EarlyStopping" in bus.stop_reason
    final = trainer.get_weights()
    for restored, kept in zip(final, snapshots[best], strict=True):
        np.testing.assert_array_equal(restored, kept)
    if best != stop:
        assert any(not np.array_equal(a, b) for a, b in zip(final, snapshots[-1], strict=True))


@settings(max_examples=15, deadline=None)
@given(
    batch_size=st.integers(2, 8),
    nan_batch=st.one_of(st.none(), st.integers(0, 5)),
    epochs=st.integers(1, 3),
)
def test_terminate_on_nan_stops_after_the_nan_batch(
    batch_size: int, nan_batch: int | None, epochs: int
) -> None:
    bus = EventBus()
    rec = Recorder(bus)
    bus.attach(from_keras(keras.callbacks.TerminateOnNaN()))
    trainer = NumpyTrainer(bus=bus, hidden=(8,), seed=0)
    rng = np.random.default_rng(0)
    x, y = noisy_data(6 * batch_size, rng)
    if nan_batch is not None:
        x[nan_batch * batch_size, 2] = np.nan  # the first row of that batch (no shuffle)
    with np.errstate(invalid="ignore", over="ignore"):
        reported = trainer.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=False)
    ends = [(p.epoch, p.batch) for p in rec.payloads("on_train_batch_end")]
    if nan_batch is None:
        assert ends == [(e, b) for e in range(epochs) for b in range(6)]
        assert not bus.stop_requested
    else:
        assert ends == [(0, b) for b in range(nan_batch + 1)]
        assert math.isnan(rec.payloads("on_train_batch_end")[-1].logs["loss"])
        assert len(reported["loss"]) == 1
        assert bus.stop_reason is not None and "TerminateOnNaN" in bus.stop_reason
    assert rec.names[-2:] == ["on_train_end", "teardown"]


def test_lambda_callback_gets_keras_shaped_calls() -> None:
    bus = EventBus()
    rec = Recorder(bus)
    calls: list[tuple[Any, ...]] = []
    lam = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: calls.append(("train_begin", logs)),
        on_epoch_begin=lambda epoch, logs: calls.append(("epoch_begin", epoch, logs)),
        on_train_batch_end=lambda batch, logs: calls.append(("batch_end", batch, dict(logs))),
        on_epoch_end=lambda epoch, logs: calls.append(("epoch_end", epoch, dict(logs))),
        on_train_end=lambda logs: calls.append(("train_end", dict(logs))),
    )
    attachment = bus.attach(from_keras(lam))
    # Only the hooks LambdaCallback was given are subscribed (nothing on batch starts).
    assert sorted(s.event.name for s in attachment.subscriptions) == [
        "on_fit_epoch_end", "on_train_batch_end", "on_train_end", "on_train_epoch_start",
        "on_train_start",
    ]  # fmt: skip
    trainer = NumpyTrainer(bus=bus, hidden=(8,), seed=0)
    (x, y), val = task()
    reported = trainer.fit(x, y, epochs=2, batch_size=10, validation_data=val)
    expected: list[tuple[Any, ...]] = [("train_begin", {})]
    for epoch in range(2):
        expected.append(("epoch_begin", epoch, {}))
        expected += [
            ("batch_end", p.batch, p.logs)
            for p in rec.payloads("on_train_batch_end")
            if p.epoch == epoch
        ]
        expected.append(("epoch_end", epoch, {k: v[epoch] for k, v in reported.items()}))
    expected.append(("train_end", {k: v[-1] for k, v in reported.items()}))
    assert calls == expected
    assert [c[1] for c in calls if c[0] == "batch_end"] == [0, 1, 2] * 2


class Spy(keras.callbacks.Callback):  # type: ignore[misc]
    """A Keras callback that overrides every hook and writes down each call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []

    def _note(self, hook: str, index: int | None, logs: Any) -> None:
        keys = tuple(sorted(logs)) if logs else ()
        self.calls.append((hook, index, keys, self.params))


def _spy_hook(hook: str, indexed: bool) -> Any:
    if indexed:

        def method(self: Spy, index: int, logs: Any = None) -> None:
            self._note(hook, index, logs)
    else:

        def method(self: Spy, logs: Any = None) -> None:  # type: ignore[misc]
            self._note(hook, None, logs)

    return method


for _hook in events.KERAS_NAMES:
    _indexed = "batch" in _hook or "epoch" in _hook
    setattr(Spy, _hook, _spy_hook(_hook, _indexed))


@settings(max_examples=5, deadline=None)
@given(
    epochs=st.integers(1, 2),
    n=st.integers(6, 20),
    batch_size=st.integers(3, 8),
    validation=st.booleans(),
)
def test_a_keras_callback_gets_the_same_calls_as_under_keras(
    epochs: int, n: int, batch_size: int, validation: bool
) -> None:
    """Every hook, same order, same indexes and logs keys: under Keras and under NumPy."""
    rng = np.random.default_rng(0)
    x, y = noisy_data(n, rng)
    val = noisy_data(7, rng) if validation else None
    x = x.astype("float32")

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4, activation="relu"),
         keras.layers.Dense(2, activation="softmax")]
    )  # fmt: skip
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    under_keras = Spy()
    model.fit(x, y, epochs=epochs, batch_size=batch_size, validation_data=val, verbose=0,
              callbacks=[under_keras])  # fmt: skip
    model.evaluate(x, y, batch_size=batch_size, verbose=0, callbacks=[under_keras])
    model.predict(x, batch_size=batch_size, verbose=0, callbacks=[under_keras])

    bus = EventBus()
    under_numpy = Spy()
    bus.attach(from_keras(under_numpy))
    trainer = NumpyTrainer(bus=bus, hidden=(4,))
    trainer.fit(x, y, epochs=epochs, batch_size=batch_size, validation_data=val)
    trainer.evaluate(x, y, batch_size=batch_size)
    trainer.predict(x, batch_size=batch_size)

    def shape(calls: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [(hook, index, keys) for hook, index, keys, _ in calls]

    assert shape(under_numpy.calls) == shape(under_keras.calls)
    # params: Keras' keys are all there (the NumPy trainer adds batch_size).
    for (*_, p_numpy), (*_, p_keras) in zip(under_numpy.calls, under_keras.calls, strict=True):
        assert p_keras.items() <= p_numpy.items()


def test_stop_training_maps_to_the_bus_both_ways() -> None:
    bus = EventBus()

    class Stopper(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[bool] = []

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seen.append(self.model.stop_training)
            if epoch == 1:
                self.model.stop_training = True
                self.seen.append(self.model.stop_training)

    stopper = Stopper()
    bus.attach(from_keras(stopper))
    trainer = NumpyTrainer(bus=bus, hidden=(4,))
    (x, y), _ = task()
    reported = trainer.fit(x, y, epochs=5, batch_size=8)
    assert len(reported["loss"]) == 2
    assert stopper.seen == [False, False, True]
    # Keras' own stop flag on the model is untouched: the bus carries the request.
    assert bus.stop_requested and "Stopper" in (bus.stop_reason or "")


def test_a_bus_with_bridges_attached_pickles_and_the_copy_drives_the_callbacks() -> None:
    bus = EventBus()
    bus.attach(from_keras(keras.callbacks.History()))
    bus.attach(from_keras(keras.callbacks.TerminateOnNaN()))  # overrides other hooks
    clone = pickle.loads(pickle.dumps(bus))
    bridges = {type(sub.owner.callback): sub.owner for sub in clone.subscriptions()}
    assert set(bridges) == {keras.callbacks.History, keras.callbacks.TerminateOnNaN}
    assert all(bridge.bus is clone for bridge in bridges.values())
    # Each copy is subscribed where the original was, and only there.
    assert sorted(sub.event.name for sub in clone.subscriptions()) == sorted(
        sub.event.name for sub in bus.subscriptions()
    )
    trainer = NumpyTrainer(bus=clone, hidden=(8,), seed=3)
    (x, y), val = task(2)
    reported = trainer.fit(x, y, epochs=2, batch_size=8, validation_data=val)
    history = bridges[keras.callbacks.History].callback
    assert history.history == reported and history.epoch == [0, 1]
    # A bridge that ran pickles too, and its callback keeps what it recorded.
    again = pickle.loads(pickle.dumps(clone))
    (copied,) = {
        sub.owner.callback for sub in again.subscriptions()
        if isinstance(sub.owner.callback, keras.callbacks.History)
    }  # fmt: skip
    assert copied.history == reported


def test_proxy_reads_through_to_the_trainer() -> None:
    bus = EventBus()
    seen: dict[str, Any] = {}

    class Peek(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_end(self, logs: Any = None) -> None:
            seen["iterations"] = self.model.iterations
            seen["weights"] = self.model.get_weights()

    bus.attach(from_keras(Peek()))
    trainer = NumpyTrainer(bus=bus, hidden=(4,))
    (x, y), _ = task()
    trainer.fit(x, y, epochs=2, batch_size=8)
    assert seen["iterations"] == trainer.iterations == 6
    for a, b in zip(seen["weights"], trainer.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_weights_missing_on_the_trainer_is_a_clear_error() -> None:
    bus = EventBus()
    bus.attach(from_keras(keras.callbacks.EarlyStopping(monitor="val_loss",
                                                        restore_best_weights=True)))  # fmt: skip

    class Loop:
        """A trainer with no weights API."""

    with pytest.raises(SubscriberError) as info:
        bus.emit(events.on_train_start, source=Loop())
        bus.emit(events.on_fit_epoch_end, epoch=0, logs={"val_loss": 1.0}, source=Loop())
    message = str(info.value.original)
    assert isinstance(info.value.original, AttributeError)
    assert "EarlyStopping" in message and "get_weights" in message and "Loop" in message


def test_params_default_to_keras_fit_defaults_and_bad_callbacks_are_refused() -> None:
    bus = EventBus()
    spy = Spy()
    bus.attach(from_keras(spy))
    bus.emit(events.on_train_start)  # no params at all, as under Ultralytics
    assert spy.calls == [("on_train_begin", None, (), KERAS_FIT_DEFAULTS)]
    assert spy.model.source is None
    with pytest.raises(TypeError, match=r"keras\.callbacks\.Callback"):
        from_keras(KerasCallback)  # a class, not an instance
    with pytest.raises(TypeError, match="got object"):
        from_keras(object())


#: What keras.Model.fit passes to set_params when called with no arguments but the data.
KERAS_FIT_DEFAULTS = {"verbose": "auto", "epochs": 1, "steps": None}


def test_params_a_loop_leaves_out_are_keras_fit_defaults() -> None:
    bus = EventBus()
    spy = Spy()
    bus.attach(from_keras(spy))
    bus.emit(events.on_train_start, params={"epochs": 3, "extra": "kept"})
    assert spy.calls[-1][-1] == {**KERAS_FIT_DEFAULTS, "epochs": 3, "extra": "kept"}


def test_params_that_grow_during_a_run_reach_the_callback() -> None:
    """A loop may learn ``steps`` only when the first epoch's loader is known (instrument)."""
    bus = EventBus()
    spy = Spy()
    bus.attach(from_keras(spy))
    params: dict[str, Any] = {"epochs": 2}
    bus.emit(events.on_train_start, params=params)
    params["steps"] = 5
    bus.emit(events.on_train_epoch_start, epoch=0, params=params)
    assert [call[-1]["steps"] for call in spy.calls] == [None, 5]


def test_unchanged_params_are_set_once_not_at_every_hook() -> None:
    """Every payload carries a copy of the run's params: set_params only when they change."""

    class Counting(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.set_calls = 0

        def set_params(self, params: dict[str, Any]) -> None:
            self.set_calls += 1
            super().set_params(params)

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            pass

    bus = EventBus()
    counting = Counting()
    bus.attach(from_keras(counting))
    params: dict[str, Any] = {"epochs": 1, "steps": 4}
    bus.emit(events.on_train_start, params=params)
    for batch in range(4):
        bus.emit(events.on_train_batch_end, batch=batch, epoch=0, params=params)
    assert counting.set_calls == 1 and counting.params["steps"] == 4


def progbar_lines(out: str) -> list[str]:
    return [line for line in out.replace("\r", "\n").splitlines() if line.strip()]


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_keras_progbar_logger_under_the_numpy_trainer(
    verbose: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Keras' ProgbarLogger honours fit(verbose=...) as under Keras: 0 silent, 1 bar, 2 lines."""
    bus = EventBus()
    bus.attach(from_keras(keras.callbacks.ProgbarLogger()))
    (x, y), val = task()
    capsys.readouterr()
    history = NumpyTrainer(bus=bus, hidden=(4,)).fit(
        x, y, epochs=2, batch_size=8, validation_data=val, verbose=verbose
    )
    lines = progbar_lines(capsys.readouterr().out)
    if verbose == 0:
        assert lines == []
        return
    assert [line for line in lines if line.startswith("Epoch ")] == ["Epoch 1/2", "Epoch 2/2"]
    finals = [line for line in lines if "val_loss" in line]  # each epoch's final line
    assert len(finals) == 2
    for epoch, line in enumerate(finals):  # 3 steps of 8 out of 24, and the epoch's logs
        assert "3/3" in line
        assert all(f"{key}: {history[key][epoch]:.4f}" in line for key in history), line


def test_fit_verbose_must_be_a_keras_verbosity() -> None:
    (x, y), _ = task()
    with pytest.raises(ValueError, match="verbose"):
        NumpyTrainer(bus=EventBus(), hidden=(4,)).fit(x, y, verbose=3)


def test_keras_progbar_logger_under_the_pytorch_adapter(capsys: pytest.CaptureFixture[str]) -> None:
    """The PyTorch loop passes no verbose: Keras' default ("auto", a progress bar) applies."""
    import torch

    from eventhooks.adapters import torch as torch_adapter

    torch.manual_seed(0)
    (x, y), _ = task()
    batches = [
        (torch.tensor(x[i : i + 8], dtype=torch.float32), torch.tensor(y[i : i + 8]))
        for i in range(0, len(x), 8)
    ]
    model = torch.nn.Linear(6, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = EventBus()
    bus.attach(from_keras(keras.callbacks.ProgbarLogger()))
    capsys.readouterr()
    torch_adapter.fit(
        model, optimizer, torch.nn.functional.cross_entropy, batches, epochs=2, bus=bus
    )
    lines = progbar_lines(capsys.readouterr().out)
    assert [line for line in lines if line.startswith("Epoch ")] == ["Epoch 1/2", "Epoch 2/2"]
    assert sum(1 for line in lines if "3/3" in line and "loss" in line) >= 2


def test_a_keras_callback_that_asks_to_stop_without_a_bus_is_told_why() -> None:
    bridge = from_keras(keras.callbacks.TerminateOnNaN())
    with pytest.raises(RuntimeError, match="not attached to a bus"):
        bridge.on_train_batch_end(
            events.on_train_batch_end.payload(batch=0, logs={"loss": float("nan")})
        )


def test_keras_callbacks_under_the_pytorch_adapter(tmp_path: Path) -> None:
    """The same bridge under eventhooks.adapters.torch.fit: History, CSVLogger, EarlyStopping."""
    import torch

    from eventhooks.adapters import torch as torch_adapter

    torch.manual_seed(0)
    (x, y), (xv, yv) = task(0)
    batches = [
        (torch.tensor(x[i : i + 8], dtype=torch.float32), torch.tensor(y[i : i + 8]))
        for i in range(0, len(x), 8)
    ]
    val_batches = [(torch.tensor(xv, dtype=torch.float32), torch.tensor(yv))]
    model = torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)

    bus = EventBus()
    history = keras.callbacks.History()
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=2, restore_best_weights=True
    )
    csv_path = tmp_path / "torch.csv"
    for callback in (history, keras.callbacks.CSVLogger(str(csv_path)), stopper):
        bus.attach(from_keras(callback))
    snapshots: list[dict[str, Any]] = []
    bus.subscribe(
        events.on_fit_epoch_end,
        lambda p: snapshots.append({k: v.clone() for k, v in model.state_dict().items()}),
        priority=10,
    )
    epochs = 30
    reported = torch_adapter.fit(
        model, optimizer, torch.nn.functional.cross_entropy, batches, epochs=epochs, bus=bus,
        val_loader=val_batches,
    )  # fmt: skip

    assert history.history == reported
    stop, best = expected_early_stop(reported["val_loss"], 2)
    assert stop is not None and stop == len(reported["val_loss"]) - 1 < epochs - 1
    assert stopper.best_epoch == best
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, snapshots[best][key], rtol=0, atol=0)
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["val_loss"]) for r in rows] == reported["val_loss"]
