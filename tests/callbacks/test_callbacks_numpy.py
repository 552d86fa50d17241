"""Every built-in subscriber under the real NumPy reference trainer."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eventhooks import EventBus, SubscriberError
from eventhooks.adapters.numpy import NumpyTrainer, load
from eventhooks.callbacks import (
    CSVLogger,
    EarlyStopping,
    EventLog,
    History,
    ModelCheckpoint,
    ProgressBar,
    TerminateOnNaN,
)
from eventhooks.testing import Recorder, assert_canonical_order


def blobs(seed: int, n: int = 120, dim: int = 4, classes: int = 3) -> tuple[Any, ...]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 3.0, size=(classes, dim))
    y = rng.integers(0, classes, size=n)
    x = centers[y] + rng.normal(0.0, 1.0, size=(n, dim))
    cut = n * 3 // 4
    return x[:cut], y[:cut], x[cut:], y[cut:]


def noise(seed: int, n: int = 48, dim: int = 6) -> tuple[Any, ...]:
    """Random labels: a wide net memorizes the training half and validation loss rises."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * n, dim))
    y = rng.integers(0, 2, size=2 * n)
    return x[:n], y[:n], x[n:], y[n:]


def test_all_builtins_together_keep_the_canonical_order(tmp_path: Path) -> None:
    bus = EventBus()
    rec = Recorder(bus)
    history = History()
    for cb in (
        history, EarlyStopping(patience=5), TerminateOnNaN(), CSVLogger(tmp_path / "h.csv"),
        EventLog(tmp_path / "e.jsonl"), ProgressBar(file=io.StringIO(), disable=False),
        ModelCheckpoint(tmp_path / "ck.npz"),
    ):  # fmt: skip
        bus.attach(cb)
    x, y, xv, yv = blobs(0)
    trainer = NumpyTrainer(bus=bus, hidden=(8,), seed=0)
    returned = trainer.fit(x, y, epochs=3, batch_size=16, validation_data=(xv, yv))
    assert_canonical_order(rec.names)
    assert history.history == returned
    assert history.epoch == [0, 1, 2]
    assert history.source is trainer


def test_early_stopping_stops_and_restores_the_best_weights() -> None:
    bus = EventBus()
    early = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    bus.attach(early)
    seen: dict[int, list[Any]] = {}
    trainer = NumpyTrainer(bus=bus, hidden=(64,), seed=1, lr=0.05)

    @bus.on("on_fit_epoch_end")
    def snapshot(payload: Any) -> None:
        seen[payload.epoch] = payload.source.get_weights()

    x, y, xv, yv = noise(1)
    history = trainer.fit(x, y, epochs=40, batch_size=8, validation_data=(xv, yv))
    ran = len(history["val_loss"])
    assert early.stopped_epoch == ran - 1 < 39  # stopped early
    best = int(np.argmin(history["val_loss"]))  # the first minimum: strict improvements
    assert early.best_epoch == best and best < ran - 1
    final = trainer.get_weights()
    for got, want in zip(final, seen[best], strict=True):
        np.testing.assert_array_equal(got, want)
    assert any(not np.array_equal(a, b) for a, b in zip(final, seen[ran - 1], strict=True))


def test_early_stopping_without_restore_keeps_the_last_weights() -> None:
    bus = EventBus()
    early = EarlyStopping(monitor="val_loss", patience=1)
    bus.attach(early)
    last: list[Any] = []
    bus.subscribe(
        "on_fit_epoch_end", lambda p: last.__setitem__(slice(None), p.source.get_weights())
    )
    trainer = NumpyTrainer(bus=bus, hidden=(64,), seed=1, lr=0.05)
    x, y, xv, yv = noise(1)
    history = trainer.fit(x, y, epochs=40, batch_size=8, validation_data=(xv, yv))
    assert early.stopped_epoch is not None and len(history["loss"]) < 40  # it did stop
    assert early.best_epoch != early.stopped_epoch  # so restoring would have changed weights
    for got, want in zip(trainer.get_weights(), last, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("guarded", [True, False])
def test_terminate_on_nan_stops_right_after_the_first_nan_batch(guarded: bool) -> None:
    bus = EventBus()
    rec = Recorder(bus)
    guard = TerminateOnNaN()
    if guarded:
        bus.attach(guard)
    x, y, _, _ = blobs(2)
    x[19, 0] = np.nan  # row 19: batch 2 of the first epoch (unshuffled, batches of 8)
    history = NumpyTrainer(bus=bus, hidden=(8,), seed=0).fit(
        x, y, epochs=3, batch_size=8, shuffle=False
    )
    ends = rec.payloads("on_train_batch_end")
    assert math.isnan(history["loss"][-1])
    if not guarded:  # the control: without the guard the run goes on
        assert len(history["loss"]) == 3
        return
    assert (ends[-1].epoch, ends[-1].batch) == (0, 2)
    assert math.isnan(ends[-1].logs["loss"]) and not math.isnan(ends[-2].logs["loss"])
    assert len(history["loss"]) == 1 and guard.terminated is not None
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert rec.payloads("teardown")[0].error is None


def test_model_checkpoint_writes_loadable_files_and_on_model_save_once_each(
    tmp_path: Path,
) -> None:
    bus = EventBus()
    rec = Recorder(bus)
    ckpt = ModelCheckpoint(tmp_path / "ck" / "{epoch:02d}-{val_loss:.3f}.npz")
    bus.attach(ckpt)
    weights: list[list[Any]] = []
    bus.subscribe("on_fit_epoch_end", lambda p: weights.append(p.source.get_weights()))
    x, y, xv, yv = blobs(3)
    history = NumpyTrainer(bus=bus, hidden=(8,), seed=0).fit(
        x, y, epochs=3, batch_size=16, validation_data=(xv, yv)
    )
    expected = [
        str(tmp_path / "ck" / f"{e + 1:02d}-{v:.3f}.npz") for e, v in enumerate(history["val_loss"])
    ]
    assert ckpt.saved == expected
    assert [p.path for p in rec.payloads("on_model_save")] == expected  # emitted by save()
    assert [p.epoch for p in rec.payloads("on_model_save")] == [0, 1, 2]
    for path, want in zip(expected, weights, strict=True):
        for got, w in zip(load(path).get_weights(), want, strict=True):
            np.testing.assert_array_equal(got, w)
    assert_canonical_order(rec.names)


def test_model_checkpoint_best_only_under_the_trainer(tmp_path: Path) -> None:
    bus = EventBus()
    ckpt = ModelCheckpoint(tmp_path / "best-{epoch}.npz", monitor="val_loss", save_best_only=True)
    bus.attach(ckpt)
    x, y, xv, yv = noise(1)
    history = NumpyTrainer(bus=bus, hidden=(64,), seed=1, lr=0.05).fit(
        x, y, epochs=8, batch_size=8, validation_data=(xv, yv)
    )
    vals = history["val_loss"]
    improving = [i + 1 for i, v in enumerate(vals) if v < min(vals[:i], default=math.inf)]
    assert ckpt.saved == [str(tmp_path / f"best-{e}.npz") for e in improving]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"best-{e}.npz" for e in improving)


def test_event_log_survives_a_crash_mid_run(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    bus = EventBus()
    rec = Recorder(bus)
    bus.attach(EventLog(path))

    @bus.on("on_train_batch_end", when=lambda p: p.epoch == 1 and p.batch == 1)
    def crash(payload: Any) -> None:
        raise ValueError("sensor unplugged")

    x, y, xv, yv = blobs(4)
    trainer = NumpyTrainer(bus=bus, hidden=(8,), seed=0)
    with pytest.raises(SubscriberError, match="sensor unplugged"):
        trainer.fit(x, y, epochs=4, batch_size=16, validation_data=(xv, yv))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["event"] for line in lines] == rec.names
    assert lines[-1]["event"] == "teardown"
    assert "ValueError: sensor unplugged" in lines[-1]["payload"]["error"]
    assert lines[-2] == {**lines[-2], "event": "on_train_batch_end"}
    assert (lines[-2]["payload"]["epoch"], lines[-2]["payload"]["batch"]) == (1, 1)


def test_csv_logger_rows_are_the_trainers_history(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    bus = EventBus()
    bus.attach(CSVLogger(path))
    x, y, xv, yv = blobs(5)
    history = NumpyTrainer(bus=bus, hidden=(8,), seed=0).fit(
        x, y, epochs=3, batch_size=16, validation_data=(xv, yv)
    )
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for key, values in history.items():
        assert [float(r[key]) for r in rows] == values


def test_progress_bar_under_the_trainer() -> None:
    out = io.StringIO()
    bus = EventBus()
    bus.attach(ProgressBar(file=out, disable=False, mininterval=0))
    x, y, xv, yv = blobs(6)
    NumpyTrainer(bus=bus, hidden=(8,), seed=0).fit(
        x, y, epochs=2, batch_size=30, validation_data=(xv, yv)
    )
    text = out.getvalue()
    assert "epoch 1 (2/2)" in text and "3/3 [" in text and "val_accuracy=" in text
    assert "| 2/2 [" in text  # the epoch bar finished
