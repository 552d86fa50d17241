"""A NumPy run written to an event log replays to the same events and the same CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eventhooks import EventBus
from eventhooks.adapters.numpy import NumpyTrainer
from eventhooks.callbacks import CSVLogger, EventLog, History
from eventhooks.replay import replay
from eventhooks.testing import Recorder


def blobs(seed: int, n: int = 80) -> tuple[Any, ...]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 2.0, size=(3, 4))
    y = rng.integers(0, 3, size=n)
    x = centers[y] + rng.normal(0.0, 1.0, size=(n, 4))
    return x[:60], y[:60], x[60:], y[60:]


def dumped(payload: Any) -> str:
    return str(payload.model_dump_json())


def test_replay_of_a_numpy_run_reproduces_every_event_and_the_csv(tmp_path: Path) -> None:
    log, csv_live, csv_replayed = tmp_path / "e.jsonl", tmp_path / "a.csv", tmp_path / "b.csv"
    bus = EventBus()
    live = Recorder(bus)
    bus.attach(EventLog(log))
    bus.attach(CSVLogger(csv_live))
    trainer = NumpyTrainer(bus=bus, hidden=(8,), seed=0, lr_schedule=lambda e: 0.01 / (e + 1))
    x, y, xv, yv = blobs(0)
    trainer.fit(x, y, epochs=3, batch_size=16, validation_data=(xv, yv))
    trainer.predict(xv)
    trainer.export(tmp_path / "model.json")

    again = EventBus()
    replayed = Recorder(again)
    again.attach(CSVLogger(csv_replayed))
    history = History()
    again.attach(history)
    count = replay(log, again)
    assert count == len(live.records) == len(log.read_text().splitlines())
    assert replayed.names == live.names
    assert [dumped(p) for _, p in replayed.records] == [dumped(p) for _, p in live.records]
    assert csv_replayed.read_bytes() == csv_live.read_bytes()
    assert history.history == trainer.history
    assert all(p.source is None for _, p in replayed.records)
