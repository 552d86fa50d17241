"""The same eventhooks subscribers under Keras and under the NumPy trainer, on the same task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras  # type: ignore[import-untyped]
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventhooks import Callback, EventBus, events
from eventhooks.adapters.keras import export, keras_run, save
from eventhooks.adapters.numpy import NumpyTrainer
from eventhooks.testing import Recorder, assert_canonical_order

Trace = list[tuple[str, Any, Any, tuple[str, ...]]]


class Watcher(Callback):
    """Written against Ultralytics names; writes down what it saw of each moment."""

    def __init__(self) -> None:
        self.seen: Trace = []

    def _note(self, name: str, p: Any) -> None:
        logs = tuple(sorted(getattr(p, "logs", None) or ()))
        self.seen.append((name, getattr(p, "epoch", None), getattr(p, "batch", None), logs))


def _watch(name: str) -> Any:
    def method(self: Watcher, payload: Any) -> None:
        self._note(name, payload)

    return method


for _event in events.BUILTIN:
    setattr(Watcher, _event.name, _watch(_event.name))


def task(n: int, n_val: int | None) -> tuple[Any, Any, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 5)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    if n_val is None:
        return x, y, None
    xv = rng.normal(size=(n_val, 5)).astype("float32")
    return x, y, (xv, (xv[:, 0] + xv[:, 1] > 0).astype("int64"))


def run_keras(x: Any, y: Any, val: Any, epochs: int, batch_size: int, out: Path) -> Any:
    bus = EventBus(check_order=True)
    rec, watcher = Recorder(bus), Watcher()
    bus.attach(watcher)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(8, activation="relu"),
         keras.layers.Dense(2, activation="softmax")]
    )  # fmt: skip
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    with keras_run(bus) as cb:
        history = model.fit(x, y, epochs=epochs, batch_size=batch_size, validation_data=val,
                            verbose=0, callbacks=[cb])  # fmt: skip
        last = {k: v[-1] for k, v in history.history.items()}
        save(model, out / "model.keras", bus, epoch=epochs - 1, logs=last)
        model.evaluate(x, y, batch_size=batch_size, verbose=0, callbacks=[cb])
        model.predict(x, batch_size=batch_size, verbose=0, callbacks=[cb])
    export(model, out / "model.pt2", bus, format="torch")
    return rec, watcher


def run_numpy(x: Any, y: Any, val: Any, epochs: int, batch_size: int, out: Path) -> Any:
    bus = EventBus()
    rec, watcher = Recorder(bus), Watcher()
    bus.attach(watcher)
    trainer = NumpyTrainer(bus=bus, hidden=(8,))
    trainer.fit(x, y, epochs=epochs, batch_size=batch_size, validation_data=val)
    trainer.save(out / "model.npz")
    trainer.evaluate(x, y, batch_size=batch_size)
    trainer.predict(x, batch_size=batch_size)
    trainer.export(out / "model.json")
    return rec, watcher


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    epochs=st.integers(1, 3),
    n=st.integers(4, 24),
    batch_size=st.integers(3, 10),
    n_val=st.one_of(st.none(), st.integers(2, 12)),
)
def test_same_subscribers_see_the_same_moments_in_the_same_order(
    tmp_path: Path, epochs: int, n: int, batch_size: int, n_val: int | None
) -> None:
    x, y, val = task(n, n_val)
    keras_rec, keras_watch = run_keras(x, y, val, epochs, batch_size, tmp_path)
    numpy_rec, numpy_watch = run_numpy(x, y, val, epochs, batch_size, tmp_path)

    assert_canonical_order(keras_rec.names)
    assert_canonical_order(numpy_rec.names)
    both = set(keras_rec.names) & set(numpy_rec.names)
    # Keras exposes every moment the NumPy loop has (the lifecycle fills in its pretrain
    # routine), except the optimizer moments and prediction post-processing: no Keras hook.
    # Both announce the learning rate after on_train_start.
    assert set(numpy_rec.names) - both <= {
        "on_before_zero_grad", "optimizer_step", "on_predict_postprocess_end",
    }  # fmt: skip
    assert "on_params_update" in both
    assert set(keras_rec.names) == both

    def shared(trace: Trace) -> Trace:
        # Keras does not tell a callback the run's first epoch at on_train_begin: None there.
        return [(name, None, *rest) if name == "on_train_start" else (name, epoch, *rest)
                for name, epoch, *rest in trace if name in both]  # fmt: skip

    # Same moments, same order, same epochs and batches, same logs keys.
    assert shared(keras_watch.seen) == shared(numpy_watch.seen)
    assert [n for n in numpy_rec.names if n in both] == keras_rec.names
