"""Built-in subscribers under the Keras adapter: the same classes, a different framework."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import keras  # type: ignore[import-untyped]
import numpy as np

from eventhooks import EventBus
from eventhooks.adapters.keras import fit
from eventhooks.callbacks import CSVLogger, EarlyStopping, EventLog, History, ModelCheckpoint
from eventhooks.replay import replay
from eventhooks.testing import Recorder


def model(seed: int) -> Any:
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(64, "relu"),
                          keras.layers.Dense(2, "softmax")])  # fmt: skip
    m.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])  # fmt: skip
    return m


def noise(seed: int, n: int = 48) -> tuple[Any, ...]:
    """Random labels: the net memorizes, validation loss rises, early stopping fires."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * n, 6)).astype("float32")
    y = rng.integers(0, 2, size=2 * n)
    return x[:n], y[:n], x[n:], y[n:]


def test_history_csv_and_event_log_match_keras_own_history(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    history = History()
    bus.attach(history)
    bus.attach(CSVLogger(tmp_path / "h.csv"))
    bus.attach(EventLog(tmp_path / "e.jsonl"))
    x, y, xv, yv = noise(0)
    keras_history = fit(model(0), x, y, epochs=3, batch_size=16, validation_data=(xv, yv),
                        verbose=0, bus=bus)  # fmt: skip
    assert history.epoch == keras_history.epoch == [0, 1, 2]
    for key, values in keras_history.history.items():
        assert history.history[key] == values
    with open(tmp_path / "h.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["val_loss"]) for r in rows] == keras_history.history["val_loss"]
    replayed = History()
    again = EventBus()
    again.attach(replayed)
    replay(tmp_path / "e.jsonl", again)
    assert replayed.history == history.history


def test_early_stopping_restores_a_keras_models_best_weights() -> None:
    bus = EventBus(check_order=True)
    early = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    bus.attach(early)
    seen: dict[int, list[Any]] = {}
    bus.subscribe("on_fit_epoch_end", lambda p: seen.__setitem__(p.epoch, p.source.get_weights()))
    m = model(1)
    x, y, xv, yv = noise(1)
    h = fit(m, x, y, epochs=40, batch_size=8, validation_data=(xv, yv), verbose=0, bus=bus)
    ran = len(h.history["val_loss"])
    best = int(np.argmin(h.history["val_loss"]))
    assert early.stopped_epoch == ran - 1 < 39 and early.best_epoch == best < ran - 1
    for got, want in zip(m.get_weights(), seen[best], strict=True):
        np.testing.assert_array_equal(got, want)


def test_model_checkpoint_saves_through_keras_and_emits_on_model_save(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus, ["on_model_save"])
    ckpt = ModelCheckpoint(tmp_path / "m-{epoch}.keras")
    bus.attach(ckpt)
    m = model(2)
    x, y, xv, yv = noise(2)
    fit(m, x, y, epochs=2, batch_size=16, validation_data=(xv, yv), verbose=0, bus=bus)
    expected = [str(tmp_path / "m-1.keras"), str(tmp_path / "m-2.keras")]
    assert ckpt.saved == expected  # Keras' save() emits nothing: ModelCheckpoint does
    assert [p.path for p in rec.payloads("on_model_save")] == expected
    restored = keras.models.load_model(expected[-1])
    for got, want in zip(restored.get_weights(), m.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
