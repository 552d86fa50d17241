"""LightningCallback under real Lightning 2.6.6: fit, validate, test and predict on CPU, offline.

A tiny LightningModule on random tensors; every Trainer writes under ``tmp_path`` only
(``default_root_dir``, ``logger=False``) and every test runs under a network guard.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from _network import NetworkGuard
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.profilers import Profiler
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from eventhooks import EventBus, SubscriberError
from eventhooks.adapters.lightning import LightningCallback
from eventhooks.callbacks import CSVLogger, EarlyStopping, EventLog, History
from eventhooks.eventlog import read_log
from eventhooks.testing import Recorder, assert_canonical_order, check_adapter

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
warnings.filterwarnings("ignore", ".*is deprecated.*", category=DeprecationWarning)

FEATURES = 4


@pytest.fixture(autouse=True)
def no_network() -> Iterator[list[str]]:
    """Every connection or name lookup fails the test (and is recorded)."""
    with NetworkGuard().active() as guard:
        yield guard.attempts
    assert not guard.attempts, f"network access attempted: {guard.attempts}"


@pytest.fixture(autouse=True)
def nothing_in_cwd(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:  # fmt: skip
    """Nothing is written into the working directory (an empty folder of its own here)."""
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    yield
    assert not os.listdir(cwd), f"written into the working directory: {os.listdir(cwd)}"


class Tiny(pl.LightningModule):
    """A linear regression; logs ``loss`` (or ``train_loss``) and ``val_loss``."""

    def __init__(
        self, *, fail_at: int | None = None, train_name: str = "loss", scheduler: bool = False
    ) -> None:
        super().__init__()
        self.layer = nn.Linear(FEATURES, 1)
        self.fail_at = fail_at
        self.train_name = train_name
        self.scheduler = scheduler
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layer(x)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.calls += 1
        if self.fail_at is not None and self.calls > self.fail_at:
            raise ValueError("training_step broke")
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log(self.train_name, loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self(x), y))

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        out: torch.Tensor = self(batch[0])
        return out

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        if not self.scheduler:
            return opt
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}


def loader(n: int = 12, batch_size: int = 4, seed: int = 0) -> DataLoader[Any]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=gen)
    y = x[:, :1] * 2 + 0.1 * torch.randn(n, 1, generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def trainer(root: Path, bus: EventBus, *extra: pl.Callback, **options: Any) -> pl.Trainer:
    settings: dict[str, Any] = {
        "max_epochs": 2, "accelerator": "cpu", "devices": 1, "logger": False,
        "enable_checkpointing": False, "enable_progress_bar": False,
        "enable_model_summary": False, "default_root_dir": root, "num_sanity_val_steps": 1,
        **options,
    }  # fmt: skip
    return pl.Trainer(callbacks=[LightningCallback(bus), *extra], **settings)


def fit(root: Path, bus: EventBus, module: pl.LightningModule | None = None,
        *extra: pl.Callback, val: bool = True, **options: Any) -> pl.Trainer:  # fmt: skip
    t = trainer(root, bus, *extra, **options)
    t.fit(module or Tiny(), loader(), loader(8, 4, seed=1) if val else None)
    return t


# -- order and conformance ----------------------------------------------------------------------


def test_fit_trace_is_canonical(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    t = fit(tmp_path, bus, Tiny(scheduler=True))
    names = rec.names
    assert_canonical_order(names)
    assert names[:3] == ["on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start"]
    assert names[-2:] == ["on_train_end", "teardown"]
    # sanity check: no validation before the first epoch; one validation per epoch
    assert names.index("on_val_start") > names.index("on_train_epoch_start")
    assert names.count("on_val_start") == 2
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0, 1]
    assert [(p.epoch, p.batch) for p in rec.payloads("on_train_batch_end")] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]  # fmt: skip
    assert [p.step for p in rec.payloads("optimizer_step")] == list(range(6))
    start = rec.payloads("on_train_start")[0]
    assert start.source is t
    assert start.params == {"epochs": 2, "max_epochs": 2, "steps": 3, "steps_per_epoch": 3,
                            "accumulate_grad_batches": 1}  # fmt: skip
    # the training part ends before validation, with training metrics only
    train = rec.payloads("on_train_epoch_end")[0].logs
    assert "loss" in train and not any(k.startswith("val_") for k in train)
    val = rec.payloads("on_val_end")[1].logs  # Keras' on_test_end names: loss, not val_loss
    assert set(val) == {"loss"}
    epoch = rec.payloads("on_fit_epoch_end")[1].logs
    assert {"loss", "val_loss"} <= set(epoch)
    assert epoch["val_loss"] == pytest.approx(float(t.callback_metrics["val_loss"]))
    assert all(isinstance(v, float) for v in epoch.values())
    batch = rec.payloads("on_train_batch_end")[0].logs
    assert isinstance(batch["loss"], float)
    # The first rate at the run's start; StepLR(step_size=1, gamma=.5) steps after each
    # epoch: one change, before epoch 1
    updates = rec.payloads("on_params_update")
    assert [(u.epoch, u.hyperparams) for u in updates] == [
        (None, {"lr": 0.1}), (0, {"lr": pytest.approx(0.05)})]  # fmt: skip
    assert rec.names[rec.names.index("on_params_update") - 1] == "on_train_start"
    assert names.index("on_params_update") < names.index("on_train_epoch_start", 10)


def test_check_adapter(tmp_path: Path) -> None:
    runs = iter(range(100))

    def run(bus: EventBus) -> None:
        fit(tmp_path / str(next(runs)), bus)

    check_adapter(run)


def test_train_loss_alias_and_no_validation(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    history = History()
    bus.attach(history)
    rec = Recorder(bus)
    fit(tmp_path, bus, Tiny(train_name="train_loss"), val=False)
    assert "on_val_start" not in rec.names
    assert history.epoch == [0, 1]
    assert set(history.history) >= {"loss", "train_loss"}
    assert history.history["loss"] == history.history["train_loss"]


def test_gradient_accumulation(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    fit(tmp_path, bus, Tiny(), val=False, accumulate_grad_batches=2)
    assert_canonical_order(rec.names)
    steps = [(p.epoch, p.batch, p.step) for p in rec.payloads("optimizer_step")]
    # 3 batches per epoch: a step after batch 1 and after the last batch (2)
    assert steps == [(0, 1, 0), (0, 2, 1), (1, 1, 2), (1, 2, 3)]
    assert len(rec.payloads("on_train_batch_end")) == 6


class Returned(Tiny):
    """Logs nothing in training: the batch logs' ``loss`` is the one it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.returned: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.returned.append(float(loss.detach()))
        return loss


@pytest.mark.parametrize("accumulate", [1, 3])
def test_batch_loss_is_the_returned_one_when_accumulating(tmp_path: Path, accumulate: int) -> None:
    """Lightning hands ``on_train_batch_end`` the loss divided by ``accumulate_grad_batches``
    (bug: the batch logs said 1/3 of the loss)."""
    bus = EventBus()
    heard: list[float] = []
    bus.subscribe("on_train_batch_end", lambda p: heard.append(p.logs["loss"]))
    module = Returned()
    fit(tmp_path, bus, module, val=False, max_epochs=1, accumulate_grad_batches=accumulate)
    assert heard == pytest.approx(module.returned, rel=1e-6) and len(heard) == 3


# -- built-in subscribers --------------------------------------------------------------------


def test_history_csv_and_early_stopping(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    history = History()
    bus.attach(history)
    path = tmp_path / "log.csv"
    bus.attach(CSVLogger(path))
    t = fit(tmp_path, bus, max_epochs=3)
    assert history.epoch == [0, 1, 2]
    assert {"loss", "val_loss"} <= set(history.history)
    assert history.history["val_loss"][-1] == pytest.approx(float(t.callback_metrics["val_loss"]))
    rows = list(csv.DictReader(path.open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert float(rows[-1]["val_loss"]) == pytest.approx(history.history["val_loss"][-1])

    # our EarlyStopping: patience 0 with an impossible min_delta stops after epoch 1
    bus2 = EventBus(check_order=True)
    rec = Recorder(bus2)
    bus2.attach(EarlyStopping(monitor="val_loss", patience=0, min_delta=1e9))
    t2 = fit(tmp_path / "es", bus2, max_epochs=5)
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0, 1]
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert t2.should_stop


def test_lightning_early_stopping_and_checkpoint_beside_ours(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    exists: list[bool] = []
    bus.subscribe("on_model_save", lambda p: exists.append(Path(p.path).is_file()))
    stopper = LightningEarlyStopping(monitor="val_loss", patience=0, min_delta=1e9)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(tmp_path, bus, Tiny(), stopper, ckpt, max_epochs=5, enable_checkpointing=True)
    assert stopper.stopped_epoch == 1
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0, 1]
    saves = rec.payloads("on_model_save")
    assert saves, "ModelCheckpoint's files were not reported"
    assert exists == [True] * len(saves)  # each file exists when it is reported
    assert any(Path(s.path).name == "last.ckpt" for s in saves)
    assert {s.epoch for s in saves} == {0, 1}
    assert Path(ckpt.best_model_path).exists()


# -- control and failure --------------------------------------------------------------------


def test_request_stop(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    bus.subscribe("on_train_batch_end", lambda p: bus.request_stop("enough"))
    t = fit(tmp_path, bus, max_epochs=5)
    assert t.should_stop
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0]
    assert len(rec.payloads("on_train_batch_end")) == 1
    assert rec.names[-2:] == ["on_train_end", "teardown"]


def test_request_stop_waits_for_min_epochs(tmp_path: Path) -> None:
    """Lightning ignores ``should_stop`` before ``min_epochs``: so does a stop request."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    bus.subscribe("on_fit_epoch_end", lambda p: bus.request_stop("enough"))
    fit(tmp_path, bus, max_epochs=5, min_epochs=2)
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0, 1]


def test_failing_subscriber(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)

    def boom(payload: Any) -> None:
        raise KeyError("subscriber broke")

    bus.subscribe("on_val_end", boom)
    with pytest.raises(SubscriberError) as info:
        fit(tmp_path, bus)
    assert isinstance(info.value.original, KeyError)
    assert "on_val_end" in str(info.value) and "boom" in str(info.value)
    assert rec.names[-1] == "teardown" and rec.names.count("teardown") == 1
    assert "subscriber broke" in (rec.payloads("teardown")[0].error or "")


def test_failing_training_step(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    with pytest.raises(ValueError, match="training_step broke"):
        fit(tmp_path, bus, Tiny(fail_at=4))
    assert rec.names[-1] == "teardown"
    teardown = rec.payloads("teardown")[0]
    assert "training_step broke" in (teardown.error or "")
    assert teardown.epoch == 1
    assert_canonical_order(rec.names)


def test_failing_data(tmp_path: Path) -> None:
    class Broken(Dataset[tuple[torch.Tensor, torch.Tensor]]):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
            if index == 5:
                raise RuntimeError("data broke")
            return torch.randn(FEATURES), torch.randn(1)

    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    t = trainer(tmp_path, bus)
    data = DataLoader(Broken(), batch_size=4)
    with pytest.raises(RuntimeError, match="data broke"):
        t.fit(Tiny(), data)
    assert rec.names[-1] == "teardown"
    assert "data broke" in (rec.payloads("teardown")[0].error or "")


# -- validate, test, predict ------------------------------------------------------------------


def test_validate_test_predict(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    t = trainer(tmp_path, bus)
    module = Tiny()
    t.validate(module, loader(8, 4), verbose=False)
    t.test(module, loader(8, 4), verbose=False)
    outputs = t.predict(module, loader(8, 4))
    assert rec.names == [
        "on_val_start", "on_val_batch_start", "on_val_batch_end", "on_val_batch_start",
        "on_val_batch_end", "on_val_end",
        "on_val_start", "on_val_batch_start", "on_val_batch_end", "on_val_batch_start",
        "on_val_batch_end", "on_val_end",
        "on_predict_start", "on_predict_batch_start", "on_predict_batch_end",
        "on_predict_batch_start", "on_predict_batch_end", "on_predict_end",
    ]  # fmt: skip
    ends = rec.payloads("on_val_end")
    assert set(ends[0].logs) == {"val_loss"} and set(ends[1].logs) == {"test_loss"}
    assert ends[0].source is t
    predicted = [p.outputs for p in rec.payloads("on_predict_batch_end")]
    assert outputs is not None
    assert all(torch.equal(a, b) for a, b in zip(predicted, outputs, strict=True))


def test_keras_names_hear_lightning(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    heard: list[str] = []
    bus.subscribe("on_epoch_end", lambda p: heard.append(f"epoch {p.epoch}"))
    bus.subscribe("on_test_end", lambda p: heard.append("test"))
    fit(tmp_path, bus, val=False)
    trainer(tmp_path, bus).validate(Tiny(), loader(8, 4), verbose=False)
    assert heard == ["epoch 0", "epoch 1", "test"]


class TwoOptimizers(pl.LightningModule):
    """Manual optimization: two optimizers, both stepped each batch (a GAN's shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a = nn.Linear(FEATURES, 1)
        self.b = nn.Linear(FEATURES, 1)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        for opt, layer in zip(self.optimizers(), (self.a, self.b), strict=True):
            loss = nn.functional.mse_loss(layer(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            self.log("loss", loss)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.Adam(self.b.parameters())


def test_two_optimizers_manual_optimization(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    fit(tmp_path, bus, TwoOptimizers(), val=False)
    assert_canonical_order(rec.names)
    steps = [(p.epoch, p.batch, p.step) for p in rec.payloads("optimizer_step")]
    assert steps == [(e, b, 2 * (3 * e + b) + i) for e in (0, 1) for b in range(3) for i in (0, 1)]
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0, 1]


def test_event_log(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    path = tmp_path / "events.jsonl"
    bus.attach(EventLog(path))
    rec = Recorder(bus)
    fit(tmp_path, bus)
    records = read_log(path).records
    assert [r.event.name for r in records] == rec.names
    ends = [r.fields for r in records if r.event.name == "on_fit_epoch_end"]
    assert [f["epoch"] for f in ends] == [0, 1]
    assert "val_loss" in ends[-1]["logs"] and "loss" in ends[-1]["logs"]


def test_no_eventhooks_module_imports_lightning() -> None:
    code = (
        "import sys, pkgutil, importlib, eventhooks, eventhooks.adapters as a\n"
        "import eventhooks.callbacks, eventhooks.testing, eventhooks.cli\n"
        "assert not any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in "
        "sys.modules), 'lightning imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_validation_twice_per_epoch(tmp_path: Path) -> None:
    """``val_check_interval=0.5``: the mid-epoch validation is not reported (batches go on
    after it); the one at the epoch's end is the epoch's."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    history = History()
    bus.attach(history)
    t = fit(tmp_path, bus, Tiny(), val_check_interval=0.5, max_epochs=2)
    assert_canonical_order(rec.names)
    ends = rec.payloads("on_val_end")
    assert [p.epoch for p in ends] == [0, 1]
    assert len(rec.payloads("on_train_batch_end")) == 6
    assert history.epoch == [0, 1] and len(history.history["val_loss"]) == 2
    assert history.history["val_loss"][-1] == pytest.approx(float(t.callback_metrics["val_loss"]))


def test_validation_every_other_epoch(tmp_path: Path) -> None:
    """An epoch that did not validate has no ``val_*`` (as Keras' ``validation_freq``);
    bug: it repeated the last validation's, which an EarlyStopping read as no improvement."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    fit(tmp_path, bus, Tiny(), check_val_every_n_epoch=2, max_epochs=4)
    assert [p.epoch for p in rec.payloads("on_val_end")] == [1, 3]
    logs = [p.logs for p in rec.payloads("on_fit_epoch_end")]
    assert ["val_loss" in epoch for epoch in logs] == [False, True, False, True]
    assert all("loss" in epoch for epoch in logs)


def test_validations_in_the_middle_of_epochs_give_those_epochs_val_metrics(
    tmp_path: Path,
) -> None:
    """Every 3 steps over epochs of 4 batches: no validation is at an epoch's end, yet every
    epoch validated (bug: only an epoch whose last batch validated had ``val_*``, so none of
    these, and a run stopped by Lightning's EarlyStopping at a mid-epoch validation lost it)."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    history = History()
    bus.attach(history)
    t = trainer(tmp_path, bus, max_epochs=3, val_check_interval=3, check_val_every_n_epoch=None)
    t.fit(Tiny(), loader(16, 4), loader(8, 4, seed=1))
    assert_canonical_order(rec.names)
    assert len(history.history["val_loss"]) == 3  # steps 3 (epoch 0), 6 (1), 9 and 12 (2)
    assert history.history["val_loss"][-1] == pytest.approx(float(t.callback_metrics["val_loss"]))
    bus = EventBus(check_order=True)
    history = History()
    bus.attach(history)
    stopper = LightningEarlyStopping(monitor="val_loss", patience=0, min_delta=10.0)
    t = trainer(tmp_path, bus, stopper, max_epochs=5, val_check_interval=0.5)
    t.fit(Tiny(), loader(16, 4), loader(8, 4, seed=1))
    assert t.current_epoch < 5 and history.epoch == list(range(len(history.epoch)))
    assert len(history.history["val_loss"]) == len(history.epoch)


class EpochIndexed(Tiny):
    """Logs ``loss`` = 10 * epoch + batch on step and epoch: the epochs' means are known."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.log("loss", torch.tensor(10.0 * self.current_epoch + batch_idx), on_step=True,
                 on_epoch=True)  # fmt: skip
        self.log("acc", torch.tensor(0.25), on_epoch=True)  # validation logs an "acc" too
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self.log("acc", torch.tensor(0.75))


@pytest.mark.parametrize("val", [True, False], ids=["validating", "not validating"])
def test_epoch_training_logs_are_the_epochs_values(tmp_path: Path, val: bool) -> None:
    """``on_train_epoch_end`` comes before the epoch's validation, which Lightning runs before
    it computes the epoch's values (bug: ``loss`` was the last step's and ``loss_epoch`` the
    previous epoch's); a name validation logs too keeps its training value (bug: ``val_acc``
    was the training one and ``acc`` was gone)."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    fit(tmp_path, bus, EpochIndexed(), val=val, max_epochs=3)
    means = [1.0, 11.0, 21.0]  # batches 0, 1, 2
    for name in ("on_train_epoch_end", "on_fit_epoch_end"):
        logs = [p.logs for p in rec.payloads(name)]
        assert [epoch["loss"] for epoch in logs] == means, name
        assert [epoch["loss_epoch"] for epoch in logs] == means, name
        assert [epoch["loss_step"] for epoch in logs] == [m + 1 for m in means], name
        assert all(epoch["acc"] == 0.25 for epoch in logs), name
    fit_logs = [p.logs for p in rec.payloads("on_fit_epoch_end")]
    assert all(("val_acc" in epoch) is val for epoch in fit_logs)
    if val:
        assert all(epoch["val_acc"] == 0.75 for epoch in fit_logs)
        # on_val_end: the validation's own names, as Keras' on_test_end (and outside a fit)
        assert [p.logs["acc"] for p in rec.payloads("on_val_end")] == [0.75] * 3


class TwoLoaders(Tiny):
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().validation_step(batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().test_step(batch, batch_idx)


def test_several_validation_loaders_give_each_ones_metrics(tmp_path: Path) -> None:
    """bug: with two loaders ``on_val_end`` had no logs at all."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    t = trainer(tmp_path, bus, max_epochs=1)
    t.fit(TwoLoaders(), loader(), [loader(8, 4, seed=1), loader(12, 4, seed=2)])
    names = {"val_loss/dataloader_idx_0", "val_loss/dataloader_idx_1"}
    (end,) = rec.payloads("on_val_end")
    assert set(end.logs) == {"loss/dataloader_idx_0", "loss/dataloader_idx_1"}
    assert names <= set(rec.payloads("on_fit_epoch_end")[0].logs)
    rec.clear()
    (result,) = [t.test(TwoLoaders(), [loader(8, 4, seed=1), loader(12, 4, seed=2)],
                        verbose=False)]  # fmt: skip
    (end,) = rec.payloads("on_val_end")
    assert end.logs == pytest.approx({k: v for r in result for k, v in r.items()})
    assert set(end.logs) == {"test_loss/dataloader_idx_0", "test_loss/dataloader_idx_1"}


# -- DDP: two real CPU processes (gloo on the loopback interface) -------------------------------

DDP_SCRIPT = """
import json, sys, warnings
from pathlib import Path
import lightning.pytorch as pl, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from eventhooks import EventBus
from eventhooks.adapters import _lightning_logs as lg
from eventhooks.adapters.lightning import LightningCallback
from eventhooks.callbacks import CSVLogger
from eventhooks.testing import Recorder

warnings.filterwarnings("ignore")
out = Path(sys.argv[1])

class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("loss", loss, sync_dist=True)
        self.log("synced", loss * 10, sync_dist=True)  # the rank's own loss is the output's
        return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

bus = EventBus(check_order=True)
rec = Recorder(bus)
bus.attach(CSVLogger(out / "log.csv"))
rank0: list[int] = []
bus.subscribe("on_fit_epoch_end", lambda p: rank0.append(p.rank), rank=0)
def stop(payload):
    if payload.rank == 1 and payload.epoch == 1 and payload.batch == 0:
        bus.request_stop("rank 1 asks")
bus.subscribe("on_train_batch_end", stop)
synced, reference = [], []
bus.subscribe("on_train_batch_end", lambda p: synced.append(p.logs["synced"]))
class Reference(pl.Callback):  # batch logs the way trainer.callback_metrics gives them
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        reference.append({**lg.train_logs(trainer, set()), **lg.output_logs(outputs)}["synced"])
trainer = pl.Trainer(
    max_epochs=5, accelerator="cpu", devices=2, strategy="ddp", logger=False,
    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    default_root_dir=out, callbacks=[LightningCallback(bus), Reference()],
)
data = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
trainer.fit(Tiny(), DataLoader(data, batch_size=4))
rank = trainer.global_rank
(out / f"trace-{rank}.json").write_text(json.dumps({
    "names": rec.names,
    "places": sorted({(p.rank, p.world_size) for _, p in rec.records}),
    "epochs": [p.epoch for p in rec.payloads("on_fit_epoch_end")],
    "batches": len(rec.payloads("on_train_batch_end")),
    "rank0": rank0,
    "synced": synced,
    "reference": reference,
}))
if torch.distributed.is_initialized():  # else gloo's threads abort the interpreter's exit
    torch.distributed.destroy_process_group()
"""


def test_ddp_two_processes(tmp_path: Path) -> None:
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as probe:  # a free port on the loopback interface (bind only)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "PL_DISABLE_FORK": "1"}  # fmt: skip
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    traces = [json.loads((tmp_path / f"trace-{r}.json").read_text()) for r in (0, 1)]
    for rank, trace in enumerate(traces):
        assert_canonical_order(trace["names"])
        assert trace["places"] == [[rank, 2]]  # every payload: rank and world_size
        # rank 1 asked to stop in epoch 1: both ranks finish that epoch, then stop together
        assert trace["epochs"] == [0, 1]
        assert trace["batches"] == 4  # 16 samples, 2 ranks, batches of 4: 2 per epoch
        assert trace["names"][-2:] == ["on_train_end", "teardown"]
    assert traces[0]["rank0"] == [0, 0] and traces[1]["rank0"] == []
    # sync_dist: a batch's logged value is the ranks' mean, the same on both, as Lightning has it
    assert traces[0]["synced"] == traces[1]["synced"] == traces[0]["reference"]
    assert traces[1]["synced"] == traces[1]["reference"] and len(traces[0]["synced"]) == 4
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # rank 0 only writes


def test_resume_from_a_checkpoint_written_mid_epoch(tmp_path: Path) -> None:
    """Lightning skips ``on_train_epoch_start`` when it resumes mid-epoch: the epoch is opened
    at its first batch (bug: an ``OrderError`` failed the fit, even without check_order).
    Steps go on from the checkpoint's ``global_step``, as epochs do."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    fit(tmp_path, EventBus(), Tiny(), ckpt, enable_checkpointing=True, max_steps=4)
    mid = tmp_path / "ckpt" / "epoch=1-step=4.ckpt"  # 3 batches an epoch: after epoch 1's first
    assert mid.exists()
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    history = History()
    bus.attach(history)
    t = trainer(tmp_path, bus, max_epochs=3)
    t.fit(Tiny(), loader(), loader(8, 4, seed=1), ckpt_path=mid)
    assert_canonical_order(rec.names)
    batches = [(p.epoch, p.batch) for p in rec.payloads("on_train_batch_end")]
    assert batches == [(1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert [p.step for p in rec.payloads("optimizer_step")] == [4, 5, 6, 7, 8]
    assert history.epoch == [1, 2] and rec.names[-2:] == ["on_train_end", "teardown"]


def test_a_stop_before_min_epochs_with_validations_mid_epoch(tmp_path: Path) -> None:
    """Lightning keeps ``should_stop`` and trains on until ``min_epochs``: a mid-epoch
    validation then is not the epoch's (bug: it ended the epoch's training part, and the next
    batch failed the fit with an ``OrderError``)."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    bus.subscribe("on_train_batch_end", lambda p: bus.request_stop(), once=1)
    t = trainer(tmp_path, bus, max_epochs=5, min_epochs=2, val_check_interval=0.5)
    t.fit(Tiny(), loader(16, 4), loader(8, 4, seed=1))
    assert_canonical_order(rec.names)
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0, 1]
    assert [p.epoch for p in rec.payloads("on_val_end")] == [0, 1]
    assert len(rec.payloads("on_train_batch_end")) == 8


def test_resume_from_checkpoint(tmp_path: Path) -> None:
    """A fit resumed from Lightning's checkpoint starts at its epoch (``initial_epoch``)."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(tmp_path, EventBus(), Tiny(), ckpt, enable_checkpointing=True)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    t = trainer(tmp_path, bus, max_epochs=3)
    t.fit(Tiny(), loader(), loader(8, 4, seed=1), ckpt_path=ckpt.last_model_path)
    assert rec.payloads("on_train_start")[0].epoch == 2
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [2]
    assert rec.names[-2:] == ["on_train_end", "teardown"]


# -- hooks Lightning dispatches to us, and batch logs read cheaply (#12) -------------------------


class HookNames(Profiler):
    """Lightning's profiler interface: records the callback hooks Lightning dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def start(self, action_name: str) -> None:
        if action_name.startswith("[Callback]"):
            self.names.append(action_name.split(".", 1)[1])

    def stop(self, action_name: str) -> None:
        pass


PER_BATCH = {"on_train_batch_start", "on_before_backward", "on_after_backward",
             "on_before_zero_grad", "on_before_optimizer_step", "on_validation_batch_start",
             "on_validation_batch_end"}  # fmt: skip


def test_nobody_listening_per_batch_only_the_stop_check(tmp_path: Path) -> None:
    """Lightning skips a hook that is not callable: nobody listening to per-batch events,
    its only per-batch hook dispatched to us is ``on_train_batch_end`` (stop requests)."""
    bus = EventBus()
    history = History()
    bus.attach(history)
    names = HookNames()
    fit(tmp_path, bus, profiler=names)
    assert history.epoch == [0, 1] and set(history.history) >= {"loss", "val_loss"}
    assert not PER_BATCH & set(names.names)
    assert names.names.count("on_train_batch_end") == 6
    assert {"on_train_epoch_start", "on_validation_start", "on_train_epoch_end"} <= set(names.names)


def test_listeners_switch_on_only_their_hooks(tmp_path: Path) -> None:
    bus = EventBus()
    steps = []
    bus.subscribe("optimizer_step", lambda p: steps.append((p.epoch, p.step)))
    names = HookNames()
    fit(tmp_path, bus, profiler=names)
    assert steps == [(e, 3 * e + b) for e in (0, 1) for b in range(3)]
    heard = set(names.names)
    assert {"on_train_batch_start", "on_before_optimizer_step"} <= heard
    assert not {"on_before_zero_grad", "on_before_backward", "on_validation_batch_end"} & heard


@pytest.mark.parametrize("module", [Tiny, TwoOptimizers])
def test_subscribing_during_the_run_counts_the_steps_taken_unheard(
    tmp_path: Path, module: type[pl.LightningModule]
) -> None:
    """A subscription made during an epoch is decided on at the next epoch's start; steps
    taken while nobody heard them are counted (``trainer.global_step``)."""
    bus = EventBus()
    steps: list[tuple[int | None, int | None, int | None]] = []
    batches: list[tuple[int | None, int | None]] = []

    def later(payload: Any) -> None:
        if payload.epoch == 0:
            bus.subscribe("optimizer_step", lambda p: steps.append((p.epoch, p.batch, p.step)))
            bus.subscribe("on_train_batch_end", lambda p: batches.append((p.epoch, p.batch)))

    bus.subscribe("on_fit_epoch_end", later)
    fit(tmp_path, bus, module(), val=False, max_epochs=3)
    per_batch = 2 if module is TwoOptimizers else 1
    assert batches == [(e, b) for e in (1, 2) for b in range(3)]
    assert steps == [(e, b, per_batch * (3 * e + b) + i) for e in (1, 2) for b in range(3)
                     for i in range(per_batch)]  # fmt: skip


def test_subscribed_at_the_epoch_start_hears_that_epoch(tmp_path: Path) -> None:
    bus = EventBus()
    batches: list[tuple[int | None, int | None]] = []

    def start(payload: Any) -> None:
        if payload.epoch == 1:
            bus.subscribe("on_train_batch_start", lambda p: batches.append((p.epoch, p.batch)))

    bus.subscribe("on_train_epoch_start", start)
    fit(tmp_path, bus, val=False)
    assert batches == [(1, 0), (1, 1), (1, 2)]


def test_a_new_fit_counts_steps_from_zero(tmp_path: Path) -> None:
    """A callback whose step hook was off in a fit counts the next fit's steps afresh."""
    bus = EventBus()
    callback = LightningCallback(bus)
    settings: dict[str, Any] = {
        "max_epochs": 1, "accelerator": "cpu", "devices": 1, "logger": False,
        "enable_checkpointing": False, "enable_progress_bar": False,
        "enable_model_summary": False, "default_root_dir": tmp_path,
    }  # fmt: skip
    pl.Trainer(callbacks=[callback], **{**settings, "max_epochs": 2}).fit(Tiny(), loader())
    steps: list[int | None] = []
    bus.subscribe("optimizer_step", lambda p: steps.append(p.step))
    pl.Trainer(callbacks=[callback], **settings).fit(Tiny(), loader())
    assert steps == [0, 1, 2]


def test_stop_asked_outside_any_hook_stops_after_that_batch(tmp_path: Path) -> None:
    """Nobody listening to batches, ``training_step`` asking to stop still stops the fit at
    that batch's end (``on_train_batch_end`` stays on for this)."""
    bus = EventBus()
    history = History()
    bus.attach(history)

    class Asks(Tiny):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.calls == 1:
                bus.request_stop("from training_step")
            return super().training_step(batch, batch_idx)

    module = Asks()
    fit(tmp_path, bus, module, val=False, max_epochs=5)
    assert module.calls == 2 and history.epoch == [0]


def test_a_subclass_keeps_its_own_hooks(tmp_path: Path) -> None:
    calls: list[str] = []

    class Mine(LightningCallback):
        def on_before_backward(self, *args: Any) -> None:
            calls.append("backward")

        def on_before_zero_grad(self, *args: Any) -> None:
            calls.append("zero_grad")
            super().on_before_zero_grad(*args)

    t = trainer(tmp_path, EventBus())
    t.callbacks = [Mine(t.callbacks[0].bus)]  # type: ignore[attr-defined]
    t.fit(Tiny(), loader())
    assert calls.count("backward") == 6 and calls.count("zero_grad") == 6


def test_eval_batch_hooks_follow_their_listeners(tmp_path: Path) -> None:
    """Validation, test and predict batch hooks are decided at each one's start."""
    bus = EventBus()
    names = HookNames()
    t = trainer(tmp_path, bus, profiler=names)
    t.fit(Tiny(), loader(), loader(8, 4, seed=1))
    t.validate(Tiny(), loader(8, 4), verbose=False)
    assert not {"on_validation_batch_start", "on_validation_batch_end"} & set(names.names)
    heard: list[tuple[str, int | None]] = []
    bus.subscribe("on_val_batch_end", lambda p: heard.append(("val", p.batch)))
    bus.subscribe("on_predict_batch_end", lambda p: heard.append(("predict", p.batch)))
    t.test(Tiny(), loader(8, 4), verbose=False)
    t.validate(Tiny(), loader(8, 4), verbose=False)
    t.predict(Tiny(), loader(8, 4))
    assert heard == [("val", 0), ("val", 1)] * 2 + [("predict", 0), ("predict", 1)]


class Logs(Tiny):
    """Logs in every way Lightning allows in training: on step, on epoch, both, hidden from
    the logger, in the progress bar, a dict, from a batch hook."""

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.log("hook_metric", float(batch_idx), on_step=True, on_epoch=False)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:  # type: ignore[override]
        loss = super().training_step(batch, batch_idx)
        self.log("epoch_only", loss * 2, on_step=False, on_epoch=True)
        self.log("step_only", loss * 3, on_step=True, on_epoch=False, prog_bar=True)
        self.log("hidden", loss * 4, on_step=True, logger=False)
        self.log_dict({"a": loss + 1, "b": loss + 2}, on_step=True, on_epoch=True)
        self.log("summed", loss, on_step=True, on_epoch=True, reduce_fx="sum")
        return {"loss": loss, "extra": loss * 5, "note": "text"}


@pytest.mark.parametrize("module", [Tiny, Logs, lambda: Tiny(train_name="train_loss")])
def test_batch_logs_are_what_callback_metrics_give(tmp_path: Path, module: Any) -> None:
    """Batch logs read off Lightning's results equal those from ``trainer.callback_metrics``
    (keys, order and values), epoch after epoch, validation metrics left out."""
    from eventhooks.adapters import _lightning_logs as lg

    bus = EventBus()
    ours: list[list[tuple[str, float]]] = []
    bus.subscribe("on_train_batch_end", lambda p: ours.append(list(p.logs.items())))
    expected: list[list[tuple[str, float]]] = []

    class Reference(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any,
                               batch: Any, batch_idx: int) -> None:  # fmt: skip
            val_keys = trainer.callbacks[0]._val_keys  # type: ignore[attr-defined]
            logs = {**lg.train_logs(trainer, val_keys), **lg.output_logs(outputs)}
            expected.append(list(logs.items()))

    fit(tmp_path, bus, module(), Reference(), max_epochs=3)
    assert len(ours) == 9 and ours == expected
    assert "val_loss" not in dict(ours[-1]) and "loss" in dict(ours[-1])


def test_checkpoints_every_n_steps_are_reported_within_the_epoch(tmp_path: Path) -> None:
    """Listening to ``on_model_save`` alone keeps the batch hooks on: a checkpoint written
    after a batch is reported at the next batch's start, not at the next epoch's."""
    bus = EventBus()
    saves: list[int | None] = []
    bus.subscribe("on_model_save", lambda p: saves.append(p.epoch))
    seen: list[int] = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            seen.append(len(saves))

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    fit(tmp_path, bus, Tiny(), Watch(), ckpt, val=False, enable_checkpointing=True,
        max_epochs=1)  # fmt: skip
    assert seen == [0, 0, 1] and saves == [0]


def test_batch_ends_alone_need_one_hook_a_batch(tmp_path: Path) -> None:
    """Only ``on_train_batch_end`` heard: the batch's start is kept at its end (unheard), and
    Lightning dispatches one hook a batch to us."""
    bus = EventBus()
    ends: list[tuple[int | None, int | None, float]] = []
    bus.subscribe("on_train_batch_end", lambda p: ends.append((p.epoch, p.batch, p.logs["loss"])))
    names = HookNames()
    t = fit(tmp_path, bus, profiler=names)
    assert [e[:2] for e in ends] == [(e, b) for e in (0, 1) for b in range(3)]
    assert ends[-1][2] == pytest.approx(float(t.callback_metrics["loss_step"]))
    assert not PER_BATCH & set(names.names)
