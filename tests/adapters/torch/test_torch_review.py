"""Shapes of real PyTorch code a review found crashing or misreported (#11)."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from eventhooks import EventBus
from eventhooks.adapters.torch import evaluate, fit, instrument, predict
from eventhooks.testing import Recorder, assert_canonical_order


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


class _Stream(IterableDataset[tuple[torch.Tensor, int]]):
    """An iterable dataset without __len__: its DataLoader is Sized, but len() raises."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        g = torch.Generator().manual_seed(0)
        for _ in range(16):
            x = torch.randn(4, generator=g)
            yield x, int(x[0] > 0)


def test_a_dataloader_over_an_iterable_dataset_trains_with_steps_unknown() -> None:
    loader = DataLoader(_Stream(), batch_size=4)
    ce = torch.nn.functional.cross_entropy
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    fit(mlp(), torch.optim.SGD(mlp().parameters(), lr=0.1), ce, loader, epochs=2, bus=bus)
    assert rec.names.count("on_train_batch_end") == 8
    assert dict(rec.payloads("on_train_end")[0].params) == {"epochs": 2}

    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with instrument(bus, opt) as run:
        for _ in run.epochs(2):
            for x, y in run.batches(loader):
                opt.zero_grad()
                loss = ce(model(x), y)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                run.log(loss=loss)
    assert rec.names.count("on_train_batch_end") == 8
    assert "steps" not in rec.payloads("on_train_end")[0].params
    assert_canonical_order(rec.names)


def test_a_loader_of_unknown_length_after_a_sized_one_leaves_no_stale_steps() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    with instrument(bus) as run:
        for epoch in run.epochs(2):
            for _ in run.batches([1, 2, 3, 4] if epoch == 0 else (i for i in range(2))):
                pass
    starts = [dict(p.params) for p in rec.payloads("on_train_epoch_start")]
    assert starts == [{"epochs": 2, "steps": 4}, {"epochs": 2}]


Sample = namedtuple("Sample", "x y")


class _Samples(Dataset[Any]):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> Any:
        return Sample(self.x[i], self.y[i])


def test_namedtuple_batches_work_in_fit_evaluate_and_predict() -> None:
    loader = DataLoader(_Samples(), batch_size=4)
    assert type(next(iter(loader))) is Sample
    ce = torch.nn.functional.cross_entropy
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = fit(model, opt, ce, loader, epochs=1, bus=EventBus(check_order=True),
                  val_loader=loader)  # fmt: skip
    assert set(history) == {"loss", "val_loss"}
    assert set(evaluate(model, ce, loader, bus=EventBus(check_order=True))) == {"loss"}
    assert predict(model, loader, bus=EventBus(check_order=True)).shape == (16, 2)


def data(n_batches: int, size: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * size, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: Any) -> torch.Tensor:
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    return loss.detach()


def setup() -> tuple[EventBus, Recorder, torch.nn.Module, torch.optim.Optimizer]:
    bus = EventBus(check_order=True)
    model = mlp()
    return bus, Recorder(bus), model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_only_the_epochs_validation_is_reported_the_others_join_its_logs() -> None:
    """A sanity check before the epochs, a validation before the batches, one every 2
    batches, the epoch's, a second loader's: one on_val_start/_end an epoch (the first after
    the training part), no OrderError; the others' val_ metrics join the epoch's logs, the
    latest values winning; the sanity check's are not reported at all."""
    bus, rec, model, opt = setup()
    with instrument(bus, opt) as run:
        for _ in run.validation(data(1)):
            run.log(loss=9.0, sanity=1.0)
        for _ in run.epochs(2):
            for _ in run.validation(data(1)):
                run.log(loss=5.0, before=1.0)
            for i, batch in enumerate(run.batches(data(4))):
                run.log(loss=train_step(model, opt, batch))
                if i % 2 == 1:
                    for _ in run.validation(data(1)):
                        run.log(loss=4.0, mid=float(i))
            for _ in run.validation(data(2)):
                run.log(loss=2.0)
            for _ in run.validation(data(1)):
                run.log(acc=0.5)
    assert_canonical_order(rec.names)
    assert rec.names.count("on_val_start") == rec.names.count("on_val_end") == 2
    assert rec.names.count("on_val_batch_end") == 4  # the epochs' own: 2 batches each
    assert [p.logs for p in rec.payloads("on_val_end")] == [{"loss": 2.0}] * 2
    assert rec.names.count("on_train_batch_end") == 8
    for logs in (p.logs for p in rec.payloads("on_fit_epoch_end")):
        assert {k: v for k, v in logs.items() if k.startswith("val_")} == {
            "val_loss": 2.0, "val_before": 1.0, "val_mid": 3.0, "val_acc": 0.5
        }  # fmt: skip
        assert "loss" in logs and "sanity" not in logs and "val_sanity" not in logs
    assert set(run.history["val_loss"]) == {2.0}


def test_a_validation_every_n_batches_only_then_the_epochs_logs_have_it() -> None:
    bus, rec, model, opt = setup()
    with instrument(bus, opt) as run:
        for _ in run.epochs(1):
            for i, batch in enumerate(run.batches(data(3))):
                run.log(loss=train_step(model, opt, batch))
                if i == 0:
                    for _ in run.validation(data(1)):
                        run.log(loss=1.0)
    assert_canonical_order(rec.names)
    assert "on_val_start" not in rec.names
    assert rec.payloads("on_fit_epoch_end")[0].logs["val_loss"] == 1.0
    assert rec.names.count("on_train_batch_end") == 3


def test_a_log_after_a_break_out_of_a_validation_is_the_epochs() -> None:
    bus, rec, model, opt = setup()
    with instrument(bus, opt) as run:
        for _ in run.epochs(1):
            for batch in run.batches(data(2)):
                run.log(loss=train_step(model, opt, batch))
            for i, _ in enumerate(run.validation(data(3))):
                run.log(loss=float(i))
                if i == 1:
                    break
            run.log(lr_epoch=0.5)
    assert_canonical_order(rec.names)
    assert rec.payloads("on_val_end")[0].logs == {"loss": 0.5}
    logs = rec.payloads("on_fit_epoch_end")[0].logs
    assert logs["lr_epoch"] == 0.5 and "val_lr_epoch" not in logs


def test_a_log_after_a_break_out_of_the_batches_is_the_epochs() -> None:
    bus, rec, model, opt = setup()
    with instrument(bus, opt) as run:
        for _ in run.epochs(1):
            for batch in run.batches(data(3)):
                run.log(loss=train_step(model, opt, batch))
                break
            run.log(extra=1.0)
            for _ in run.validation(data(1)):
                run.log(loss=1.0)
    assert_canonical_order(rec.names)
    assert set(rec.payloads("on_train_epoch_end")[0].logs) == {"loss"}
    assert rec.names.count("on_train_batch_end") == 1
    assert rec.names.index("on_train_batch_end") < rec.names.index("on_train_epoch_end")
    logs = rec.payloads("on_fit_epoch_end")[0].logs
    assert logs["extra"] == 1.0 and logs["val_loss"] == 1.0


def test_a_validation_after_a_break_out_of_the_epochs_is_the_runs_own() -> None:
    bus, rec, model, opt = setup()
    with instrument(bus, opt) as run:
        for epoch in run.epochs(3):
            for batch in run.batches(data(1)):
                run.log(loss=train_step(model, opt, batch))
            if epoch == 1:
                break
        for i, _ in enumerate(run.validation(data(3))):
            run.log(loss=2.0)
            if i == 0:
                break
        run.log(test_acc=0.9)
    assert_canonical_order(rec.names)
    last_epoch_end = max(i for i, n in enumerate(rec.names) if n == "on_fit_epoch_end")
    assert rec.names.index("on_val_start") > last_epoch_end
    assert rec.names.count("on_fit_epoch_end") == 2
    assert "val_loss" not in rec.payloads("on_fit_epoch_end")[1].logs
    assert rec.payloads("on_val_end")[0].logs == {"loss": 2.0}
    assert rec.payloads("on_train_end")[0].logs["test_acc"] == 0.9


def test_a_stop_asked_at_the_between_epochs_rate_change_starts_no_other_epoch() -> None:
    """Asked at the on_params_update after on_fit_epoch_end, a stop acts as one asked at
    on_fit_epoch_end: no further (empty) epoch; under fit with ReduceLROnPlateau too."""
    bus, rec, model, opt = setup()
    bus.subscribe(
        "on_params_update",
        lambda p: bus.request_stop("low") if p.hyperparams.get("lr", 1.0) < 0.07 else None,
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with instrument(bus, opt) as run:
        for _ in run.epochs(3):
            for batch in run.batches(data(2)):
                run.log(loss=train_step(model, opt, batch))
            sched.step()
    assert_canonical_order(rec.names)
    assert rec.names.count("on_train_epoch_start") == 1
    assert rec.payloads("on_train_end")[0].epoch == 0
    assert [p.hyperparams["lr"] for p in rec.payloads("on_params_update")] == [0.1, 0.05]

    bus, rec, model, opt = setup()
    bus.subscribe(
        "on_params_update",
        lambda p: bus.request_stop("low") if p.hyperparams.get("lr", 1.0) < 0.05 else None,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, patience=0, factor=0.1, threshold=10.0
    )  # never an improvement: the rate drops every epoch
    history = fit(model, opt, torch.nn.functional.cross_entropy, data(3), epochs=5, bus=bus,
                  val_loader=data(1, seed=2), scheduler=plateau)  # fmt: skip
    assert_canonical_order(rec.names)
    assert rec.names.count("on_train_epoch_start") == 1
    assert len(history["val_loss"]) == len(history["loss"]) == 1


def test_a_rejected_metric_is_not_left_behind_as_nan() -> None:
    """run.log(acc=None) raises; nothing of that call is kept (not acc as NaN, not loss)."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    with instrument(bus) as run:
        for _ in run.epochs(1):
            for _ in run.batches([0, 1]):
                run.log(loss=1.0)
                with pytest.raises(TypeError, match="'acc'"):
                    run.log(loss=5.0, acc=None)
            for _ in run.validation([0]):
                with pytest.raises(TypeError, match="'f1'"):
                    run.log(f1="n/a")
    assert [p.logs for p in rec.payloads("on_train_batch_end")] == [{"loss": 1.0}] * 2
    assert rec.payloads("on_fit_epoch_end")[0].logs == {"loss": 1.0}


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(4 * n, 4, generator=g)
    return [(x[i : i + 4], (x[i : i + 4, 0] > 0).long()) for i in range(0, 4 * n, 4)]


def test_saves_of_their_own_wait_for_their_place_in_the_order(tmp_path: Any) -> None:
    """``run.checkpoint()`` inside a batch (every N batches), inside the epoch's validation,
    before the epoch's batch loop, and after a ``break`` out of the validation (second
    review: each failed ``check_order`` with an ``OrderError``)."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ce = torch.nn.functional.cross_entropy
    with instrument(bus, opt, model=model) as run:
        for epoch in run.epochs(2):
            run.checkpoint(tmp_path / f"top-{epoch}.pt")  # before the batch loop
            for i, (x, y) in enumerate(run.batches(_batches(4))):
                opt.zero_grad()
                loss = ce(model(x), y)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                run.log(loss=loss)
                if i == 1:
                    run.checkpoint(tmp_path / f"batch-{epoch}.pt")  # every N batches
            for j, (x, y) in enumerate(run.validation(_batches(3))):
                run.log(loss=ce(model(x), y))
                if j == 0:
                    run.checkpoint(tmp_path / f"val-{epoch}.pt")  # inside the validation
                if j == 1:
                    break  # limit the validation batches, then save
            run.checkpoint(tmp_path / f"after-{epoch}.pt")
    assert_canonical_order(rec.names)
    saved = [p.path.rsplit("/", 1)[-1] for p in rec.payloads("on_model_save")]
    assert saved == [f"{what}-{e}.pt" for e in (0, 1) for what in ("top", "batch", "val", "after")]
    names = rec.names
    first_batch_save = names.index("on_model_save", names.index("on_train_batch_end"))
    assert names[first_batch_save - 1] == "on_train_batch_end"  # right after that batch
    assert all((tmp_path / name).exists() for name in saved)


def test_val_logs_read_after_a_break_out_of_the_validation_are_its() -> None:
    """Limit the validation batches, then step ReduceLROnPlateau on them (second review:
    ``run.val_logs`` was ``{}`` until the next ``run.log()``)."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    seen = []
    with instrument(bus, opt) as run:
        for _ in run.epochs(2):
            for _x, _y in run.batches(_batches(2)):
                run.log(loss=1.0)
            for j, _ in enumerate(run.validation(_batches(5))):
                run.log(loss=float(j))
                if j == 1:
                    break
            seen.append(run.val_logs["loss"])
            plateau.step(run.val_logs["loss"])
    assert seen == [0.5, 0.5]  # the mean of the two batches validated
    assert [p.logs for p in rec.payloads("on_val_end")] == [{"loss": 0.5}] * 2
    assert_canonical_order(rec.names)
