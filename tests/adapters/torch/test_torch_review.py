"""Shapes of real PyTorch code a review found crashing or misreported (#11)."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator
from typing import Any

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
