"""The conformance kit, run on our adapters and on broken toy adapters it must catch."""

from __future__ import annotations

import os
from typing import Any

import keras  # type: ignore[import-untyped]
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from eventhooks import EventBus, events
from eventhooks.adapters.keras import KerasCallback, keras_run
from eventhooks.adapters.numpy import NumpyTrainer
from eventhooks.adapters.torch import fit as torch_fit
from eventhooks.testing import check_adapter

assert os.environ["KERAS_BACKEND"] == "torch"
ALL = [e.name for e in events.BUILTIN]
RNG = np.random.default_rng(0)
Y = RNG.integers(0, 2, 64)
X = (RNG.normal(size=(2, 4))[Y] + RNG.normal(size=(64, 4))).astype("float32")


def numpy_run(bus: EventBus) -> None:
    NumpyTrainer(bus=bus, hidden=(8,), lr_schedule=lambda e: 0.01 / (e + 1)).fit(
        X[:48], Y[:48], epochs=3, batch_size=16, validation_data=(X[48:], Y[48:])
    )


def torch_run(bus: EventBus) -> None:
    torch.manual_seed(0)
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    train = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=16)
    val = DataLoader(TensorDataset(x[48:], y[48:]), batch_size=16)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch_fit(model, optimizer, torch.nn.CrossEntropyLoss(), train, epochs=3, bus=bus,
              val_loader=val)  # fmt: skip


def keras_fit(bus: EventBus) -> None:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    with keras_run(bus) as callback:
        assert isinstance(callback, KerasCallback)
        model.fit(X, Y, epochs=3, batch_size=16, validation_split=0.25, verbose=0,
                  callbacks=[callback])  # fmt: skip


def test_numpy_trainer_conforms() -> None:
    seen = check_adapter(numpy_run, emitted=ALL)
    assert {"on_before_zero_grad", "optimizer_step", "on_params_update"} <= set(seen.names)


def test_torch_fit_conforms() -> None:
    seen = check_adapter(torch_run)
    assert "optimizer_step" in seen.emitted and "teardown" in seen.emitted


def test_keras_callback_conforms() -> None:
    seen = check_adapter(keras_fit)
    assert "on_val_batch_end" in seen.emitted and "teardown" in seen.emitted


# -- toy adapters, each broken in one way that the kit must catch ---------------------------


def toy(bus: EventBus, *, greedy: bool = False, deaf: bool = False, silent_failure: bool = False,
        disorder: bool = False, twice: bool = False, forgetful: bool = False,
        first_epoch: int = 0) -> None:  # fmt: skip
    """A two-epoch loop of two batches (from ``first_epoch``, as a resumed run); flags break it."""
    ended = False
    bus.emit("on_train_start")
    try:
        for epoch in range(first_epoch, first_epoch + 2):
            bus.emit("on_train_epoch_start", epoch=epoch)
            for batch in range(2):
                if greedy or bus.listening("on_train_batch_end"):
                    bus.emit("on_train_batch_end", batch=batch, epoch=epoch, logs={"loss": 1.0})
            if disorder:
                bus.emit("on_fit_epoch_end", epoch=epoch)
                bus.emit("on_train_epoch_end", epoch=epoch)
            else:
                bus.emit("on_train_epoch_end", epoch=epoch)
                bus.emit("on_fit_epoch_end", epoch=epoch)
            if bus.stop_requested and not deaf:
                break
        ended = forgetful  # the run counts as ended before on_train_end was delivered
        bus.emit("on_train_end")
    except Exception as exc:
        if not silent_failure:
            bus.emit("teardown", exception=None if ended else exc)
        raise
    finally:
        if twice:  # a finally that tears down again
            bus.emit("teardown")
    bus.emit("teardown")


def test_a_correct_toy_adapter_passes() -> None:
    assert check_adapter(toy).names[:2] == ["on_train_start", "on_train_epoch_start"]


def test_a_correct_adapter_resuming_at_a_later_epoch_passes() -> None:
    def resumed(bus: EventBus) -> None:
        toy(bus, first_epoch=5)

    check_adapter(resumed)


@pytest.mark.parametrize(
    ("flaw", "message"),
    [
        ("greedy", "per-batch events emitted with nobody listening"),
        ("deaf", "did not stop the run"),
        ("silent_failure", "teardown must be last"),
        ("disorder", "breaks the canonical order"),
        ("twice", "teardown emitted 2 times"),
        ("forgetful", "teardown's error does not name the failure at on_train_end"),
    ],
)
def test_each_flaw_is_caught_and_named(flaw: str, message: str) -> None:
    def broken(bus: EventBus) -> None:
        toy(bus, **{flaw: True})

    with pytest.raises(AssertionError, match=message):
        check_adapter(broken, emitted=["on_train_start", "on_train_epoch_start",
                                       "on_train_batch_end", "on_train_epoch_end",
                                       "on_fit_epoch_end", "on_train_end", "teardown"])  # fmt: skip


def test_a_run_of_one_epoch_is_refused() -> None:
    def short(bus: EventBus) -> Any:
        bus.emit("on_train_start")
        bus.emit("on_fit_epoch_end", epoch=0)
        bus.emit("on_train_end")

    with pytest.raises(AssertionError, match="two epochs or more"):
        check_adapter(short)


def test_ultralytics_adapter_conforms(tmp_path: Any) -> None:
    from _yolo_data import classification_dataset
    from ultralytics import YOLO

    from eventhooks.adapters.ultralytics import attach

    data = classification_dataset(tmp_path / "data")
    runs = iter(range(10))

    def yolo_run(bus: EventBus) -> None:
        model = YOLO("yolov8n-cls.yaml")
        attach(model, bus)
        model.train(data=str(data), epochs=3, imgsz=32, batch=4, pretrained=False, amp=False,
                    plots=False, device="cpu", workers=0, project=str(tmp_path / "runs"),
                    name=f"run{next(runs)}", verbose=False)  # fmt: skip

    from _network import NetworkGuard

    with NetworkGuard().active() as guard:
        seen = check_adapter(yolo_run)
    assert guard.attempts == []
    assert "on_model_save" in seen.emitted and "optimizer_step" not in seen.emitted
