"""A subscriber written once runs unchanged under the PyTorch adapter and the NumPy trainer.

The same two subscribers, the built-in EarlyStopping (with weight restoring) and a user's
Callback subclass written with Keras method names, are attached to a bus; only the line that
trains differs between the parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from eventhooks import Callback, EventBus
from eventhooks.adapters.numpy import NumpyTrainer
from eventhooks.adapters.torch import fit
from eventhooks.callbacks import EarlyStopping
from eventhooks.testing import Recorder, assert_canonical_order

EPOCHS, BATCH = 10, 16


class Trace(Callback):
    """A user's subscriber: Keras names, reads only payloads and ``payload.source``."""

    def __init__(self) -> None:
        self.began = 0
        self.batches: list[int] = []
        self.epochs: list[int] = []
        self.val_losses: list[float] = []
        self.weights: list[Any] = []
        self.error: str | None = "not torn down"

    def on_train_begin(self, payload: Any) -> None:
        self.began += 1

    def on_train_batch_end(self, payload: Any) -> None:
        self.batches.append(payload.batch)

    def on_epoch_end(self, payload: Any) -> None:
        self.epochs.append(payload.epoch)
        self.val_losses.append(payload.logs["val_loss"])
        self.weights.append(payload.source.get_weights())

    def teardown(self, payload: Any) -> None:
        self.error = payload.error


def _data() -> tuple[Any, Any, Any, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    xv = rng.normal(size=(32, 4)).astype(np.float32)
    yv = (xv[:, 0] + xv[:, 1] > 0).astype(np.int64)
    return x, y, xv, yv


def train_numpy(bus: EventBus) -> Any:
    x, y, xv, yv = _data()
    trainer = NumpyTrainer(bus=bus, hidden=(8,), seed=0, lr=0.01)
    trainer.fit(x, y, epochs=EPOCHS, batch_size=BATCH, validation_data=(xv, yv))
    return trainer


def train_torch(bus: EventBus) -> Any:
    x, y, xv, yv = (torch.from_numpy(a) for a in _data())
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xv, yv), batch_size=BATCH)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    fit(model, opt, torch.nn.functional.cross_entropy, train, epochs=EPOCHS, bus=bus,
        val_loader=val)  # fmt: skip
    return model


def _same(a: Any, b: Any) -> bool:
    """Weights equal, whichever framework's form (list of arrays, dict of tensors)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("train", [train_numpy, train_torch], ids=["numpy", "torch"])
def test_one_subscriber_set_runs_unchanged_under_both(train: Callable[[EventBus], Any]) -> None:
    bus = EventBus()
    rec = Recorder(bus)
    # Nothing improves by 1e9: the first epoch is the best, patience 2 stops at epoch 2.
    stopper = EarlyStopping(monitor="val_loss", patience=2, min_delta=1e9,
                            restore_best_weights=True)  # fmt: skip
    trace = Trace()
    bus.attach(stopper)
    bus.attach(trace)
    trained = train(bus)
    assert trace.began == 1 and trace.error is None
    assert trace.epochs == [0, 1, 2]
    assert stopper.stopped_epoch == 2 and stopper.best_epoch == 0 and stopper.restored
    assert bus.stop_reason is not None and bus.stop_reason.startswith("EarlyStopping")
    assert trace.batches == list(range(4)) * 3  # 64 samples in batches of 16
    assert all(isinstance(v, float) for v in trace.val_losses)
    # Training moved the weights, and EarlyStopping put the best (first) epoch's back.
    assert not _same(trace.weights[0], trace.weights[2])
    final = trained.get_weights() if hasattr(trained, "get_weights") else trained.state_dict()
    assert _same(final, trace.weights[0])
    assert_canonical_order(rec.names)
