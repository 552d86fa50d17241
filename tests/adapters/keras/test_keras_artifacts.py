"""Saving and export through the Keras adapter's helpers: the artifact and the events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras  # type: ignore[import-untyped]
import numpy as np
import pytest
import torch

from eventhooks import EventBus, events
from eventhooks.adapters.keras import KerasCallback, default_export_format, export, save
from eventhooks.testing import Recorder, assert_canonical_order


def make_model() -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)]
    )
    model.compile("adam", "mse")
    return model


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(12, 3)).astype("float32"), rng.normal(size=(12, 2)).astype("float32")


def test_save_writes_the_model_then_emits_on_model_save(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = make_model()
    x, _ = data()
    path = save(model, tmp_path / "m.keras", bus, epoch=3, logs={"loss": 0.5})
    (payload,) = rec.payloads("on_model_save")
    assert payload.path == path == str(tmp_path / "m.keras")
    assert payload.epoch == 3 and payload.logs == {"loss": 0.5} and payload.source is model
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0),
                               model.predict(x, verbose=0))  # fmt: skip


def test_save_weights_only(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = make_model()
    path = save(model, tmp_path / "m.weights.h5", bus, weights_only=True)
    other = make_model()
    other.set_weights([w * 0 for w in other.get_weights()])
    other.load_weights(path)
    for a, b in zip(other.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert rec.names == ["on_model_save"]


def test_a_checkpoint_subscriber_saves_during_fit_in_canonical_order(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = make_model()

    @bus.on(events.on_fit_epoch_end)
    def checkpoint(p: Any) -> None:
        save(p.source, tmp_path / f"epoch{p.epoch}.keras", bus, epoch=p.epoch, logs=p.logs)

    x, y = data()
    model.fit(x, y, epochs=3, batch_size=4, verbose=0, callbacks=[KerasCallback(bus)])
    assert_canonical_order(rec.names)
    saves = rec.payloads("on_model_save")
    assert [p.epoch for p in saves] == [0, 1, 2]
    assert all(Path(p.path).is_file() for p in saves)
    assert [p.logs for p in saves] == [p.logs for p in rec.payloads("on_fit_epoch_end")]


def test_export_torch_program_between_start_and_end(tmp_path: Path) -> None:
    assert default_export_format() == "torch"  # the conftest runs Keras on torch
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = make_model()
    x, _ = data()
    path = export(model, tmp_path / "m.pt2", bus)
    assert rec.names == ["on_export_start", "on_export_end"]
    start, end = rec.payloads("on_export_start")[0], rec.payloads("on_export_end")[0]
    assert (start.format, start.path) == ("torch", None)
    assert (end.format, end.path) == ("torch", str(tmp_path / "m.pt2")) and path == end.path
    program = torch.export.load(path)
    # Keras traces the program with a batch of one: feed it one sample at a time.
    with torch.no_grad():
        got = np.concatenate([program.module()(torch.from_numpy(x[i : i + 1])).numpy()
                              for i in range(len(x))])  # fmt: skip
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_a_failed_export_emits_no_end(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    with pytest.raises(ValueError, match="Unrecognized format"):
        export(make_model(), tmp_path / "m.bin", bus, format="no-such-format")
    assert rec.names == ["on_export_start"]
    assert rec.payloads("on_export_start")[0].format == "no-such-format"
