"""Payloads take numpy and torch scalars: they become plain floats and ints."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from eventhooks import EventBus


def listened(bus: EventBus, name: str) -> list[Any]:
    got: list[Any] = []
    bus.subscribe(name, got.append)
    return got


def test_numpy_and_torch_scalars_become_floats() -> None:
    bus = EventBus()
    got = listened(bus, "on_train_batch_end")
    bus.emit(
        "on_train_batch_end",
        batch=np.int64(2),
        epoch=1,
        logs={"a": np.float32(0.5), "b": np.float64(1.5), "c": torch.tensor(2.5), "d": 3},
    )
    logs = got[0].logs
    assert logs == {"a": 0.5, "b": 1.5, "c": 2.5, "d": 3.0}
    assert all(type(v) is float for v in logs.values())
    assert got[0].batch == 2 and type(got[0].batch) is int
