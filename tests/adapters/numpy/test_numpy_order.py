"""The NumPy trainer on the lifecycle: whole traces pass ``EventBus(check_order=True)``.

A check_order bus raises :class:`~eventhooks.OrderError` at the first emit out of the canonical
order and says every event is listened to, so the trainer emits everything it can.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eventhooks import EventBus, OrderError, SubscriberError, events
from eventhooks.adapters.numpy import NumpyTrainer, load
from eventhooks.callbacks import EarlyStopping, ModelCheckpoint
from eventhooks.testing import Recorder, assert_canonical_order

ALL = [event.name for event in events.BUILTIN]


def blobs(n: int, seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    return np.random.default_rng(1234).normal(size=(3, 4))[y] * 5 + rng.normal(size=(n, 4)), y


def checked() -> tuple[EventBus, Recorder]:
    bus = EventBus(check_order=True)
    return bus, Recorder(bus)


def test_a_whole_fit_with_validation_checkpoints_a_schedule_and_a_stop(tmp_path: Path) -> None:
    x, y = blobs(40)
    bus, rec = checked()
    trainer = NumpyTrainer(bus=bus, hidden=(5,), lr_schedule=lambda e: 0.05 / (e + 1))
    bus.attach(ModelCheckpoint(tmp_path / "best.npz", monitor="val_loss", save_best_only=False))

    @bus.on(events.on_train_batch_end)
    def stop_mid_epoch(p: Any) -> None:
        if (p.epoch, p.batch) == (2, 1):
            bus.request_stop("enough")

    history = trainer.fit(
        x[:30], y[:30], epochs=6, batch_size=8, validation_data=(x[30:], y[30:]),
        checkpoint=tmp_path / "last.npz",
    )  # fmt: skip
    trainer.evaluate(x, y, batch_size=16)
    trainer.predict(x, batch_size=16)
    trainer.export(tmp_path / "model.json")
    trainer.save(tmp_path / "model.npz")
    assert_canonical_order(rec.names, emitted=ALL)

    # The stop came after batch 1 of epoch 2: the epoch is closed with its validation and
    # checkpoints, no rate is set for an epoch that will not run, then the run ends.
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0, 1, 2]
    assert [(p.epoch, p.batch) for p in rec.payloads("on_train_batch_end")][-1] == (2, 1)
    assert [p.epoch for p in rec.payloads("on_val_end")] == [0, 1, 2, None]  # + evaluate
    assert len(history["val_loss"]) == 3 and trainer.stop_training
    assert [(p.epoch, p.batch) for p in rec.payloads("on_params_update")] == [
        (None, None), (0, None), (1, None)  # the run's first rate at its start, then changes
    ]  # fmt: skip
    saves = [(p.epoch, Path(p.path).name) for p in rec.payloads("on_model_save")]
    per_epoch = [(e, name) for e in range(3) for name in ("last.npz", "best.npz")]
    assert saves == [*per_epoch, (2, "model.npz")]
    assert rec.names[-3:] == ["on_export_start", "on_export_end", "on_model_save"]
    end = rec.names.index("teardown")
    assert rec.names[end - 1] == "on_train_end" and rec.payloads("teardown")[0].error is None
    assert [p.step for p in rec.payloads("optimizer_step")] == list(range(4 + 4 + 2))


def test_stop_training_set_by_a_subscriber_is_the_runs_stop_request() -> None:
    x, y = blobs(24)
    bus, rec = checked()
    trainer = NumpyTrainer(bus=bus, hidden=(4,))
    bus.subscribe(events.on_epoch_end, lambda p: setattr(trainer, "stop_training", p.epoch == 1))
    trainer.fit(x, y, epochs=5, batch_size=8)
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0, 1]
    assert bus.stop_requested and trainer.stop_training
    assert rec.names[-2:] == ["on_train_end", "teardown"]


@pytest.mark.parametrize("at", [
    "on_train_start", "on_train_batch_end", "on_train_epoch_end", "on_val_end", "on_fit_epoch_end",
])  # fmt: skip
def test_a_stop_anywhere_ends_the_run_in_order(at: str) -> None:
    x, y = blobs(24)
    bus, rec = checked()
    bus.subscribe(at, lambda p: bus.request_stop(at))
    NumpyTrainer(bus=bus, hidden=(4,)).fit(x, y, epochs=3, batch_size=8, validation_data=(x, y))
    assert_canonical_order(rec.names, emitted=ALL)
    assert len(rec.payloads("on_fit_epoch_end")) == (0 if at == "on_train_start" else 1)
    assert rec.names[-2:] == ["on_train_end", "teardown"]


@pytest.mark.parametrize("at", [
    "on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_batch_start",
    "optimizer_step", "on_val_batch_end", "on_model_save", "on_fit_epoch_end", "on_train_end",
])  # fmt: skip
def test_a_failure_anywhere_ends_with_one_teardown_in_order(tmp_path: Path, at: str) -> None:
    x, y = blobs(24)
    bus, rec = checked()

    def fail(_: Any) -> None:
        raise KeyError("probe")

    bus.subscribe(at, fail)
    with pytest.raises(SubscriberError) as info:
        NumpyTrainer(bus=bus, hidden=(4,)).fit(
            x, y, epochs=3, batch_size=8, validation_data=(x, y), checkpoint=tmp_path / "c.npz"
        )
    assert not isinstance(info.value.original, OrderError)
    assert_canonical_order(rec.names, emitted=ALL)
    assert rec.names.count("teardown") == 1 and rec.names[-1] == "teardown"
    assert "KeyError: 'probe'" in (rec.payloads("teardown")[0].error or "")


def test_a_bad_argument_and_a_failing_schedule_end_in_order() -> None:
    x, y = blobs(24)
    bus, rec = checked()
    with pytest.raises(ValueError, match="batch_size"):
        NumpyTrainer(bus=bus).fit(x, y, batch_size=0)
    assert rec.names == ["on_pretrain_routine_start", "teardown"]
    rec.clear()
    with pytest.raises(ValueError, match=r"lr_schedule\(1\)"):
        NumpyTrainer(bus=bus, lr_schedule=lambda e: [0.1, -1.0][e]).fit(x, y, epochs=2)
    assert rec.names[-2:] == ["on_fit_epoch_end", "teardown"]


def test_sessions_started_by_subscribers_do_not_disturb_the_fit(tmp_path: Path) -> None:
    """evaluate() and predict() inside a fit are sessions of their own, nested in an emit."""
    x, y = blobs(24)
    bus, rec = checked()
    trainer = NumpyTrainer(bus=bus, hidden=(4,))

    @bus.on(events.on_fit_epoch_end)
    def look(_: Any) -> None:
        trainer.evaluate(x, y)
        trainer.predict(x[:3])

    trainer.fit(x, y, epochs=2, batch_size=8, validation_data=(x, y))
    fit = [n for n in rec.names if "predict" not in n and not n.startswith("on_val")]
    assert_canonical_order(fit, emitted=ALL)
    assert rec.names.count("on_predict_end") == 2 and rec.names.count("on_val_end") == 4


@pytest.mark.parametrize("at", ["on_train_batch_end", "on_train_epoch_end", "on_train_end"])
def test_a_save_where_the_run_has_no_room_is_a_session_of_its_own(tmp_path: Path, at: str) -> None:
    """Mid-epoch, before the epoch's validation, at the run's end: the fit goes on whole."""
    x, y = blobs(24)
    bus = EventBus()
    rec = Recorder(bus)
    trainer = NumpyTrainer(bus=bus, hidden=(4,))
    paths: list[Path] = []

    @bus.on(at)
    def snapshot(p: Any) -> None:
        paths.append(trainer.save(tmp_path / f"{len(paths)}.npz"))

    trainer.fit(x, y, epochs=2, batch_size=8, validation_data=(x, y))
    assert len(rec.payloads("on_model_save")) == len(paths) > 0
    assert all(load(path).built for path in paths)
    fit = [n for n in rec.names if n != "on_model_save"]
    assert_canonical_order(fit, emitted=ALL)
    assert len(rec.payloads("on_fit_epoch_end")) == 2 and rec.names[-1] == "teardown"


@pytest.mark.parametrize("at", ["on_val_end", "on_fit_epoch_end"])
def test_a_save_by_a_subscriber_after_validation_is_the_runs(tmp_path: Path, at: str) -> None:
    x, y = blobs(24)
    bus, rec = checked()
    trainer = NumpyTrainer(bus=bus, hidden=(4,))
    bus.subscribe(at, lambda p: trainer.save(tmp_path / "s.npz"))
    trainer.fit(x, y, epochs=2, batch_size=8, validation_data=(x, y))
    assert_canonical_order(rec.names, emitted=ALL)
    assert [p.epoch for p in rec.payloads("on_model_save")] == [0, 1]


def test_early_stopping_restores_weights_at_the_runs_end_in_order() -> None:
    x, y = blobs(40)
    bus, rec = checked()
    bus.attach(EarlyStopping(monitor="val_loss", patience=0, restore_best_weights=True))
    NumpyTrainer(bus=bus, hidden=(4,), lr=0.5, optimizer="sgd").fit(
        x, y, epochs=8, batch_size=8, validation_data=(x, y)
    )
    assert_canonical_order(rec.names, emitted=ALL)
