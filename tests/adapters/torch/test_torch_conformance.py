"""The PyTorch adapter under the conformance kit, and under a bus that checks every emit's order.

Both paths (your loop with ``instrument``, the ready-made ``fit``), with what real loops have:
a scheduler stepped between epochs, a validation, a checkpoint at each epoch's end, and a
final validation after the last epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from eventhooks import EventBus
from eventhooks.adapters.torch import fit, instrument
from eventhooks.testing import Recorder, assert_canonical_order, check_adapter


def _data(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n * 8, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return [(x[i : i + 8], y[i : i + 8]) for i in range(0, len(x), 8)]


def instrumented(bus: EventBus, tmp: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    loss_fn = torch.nn.CrossEntropyLoss()
    train, val = _data(3, 0), _data(2, 1)
    with instrument(bus, opt, model=model, checkpoint_dir=tmp) as run:
        for _ in run.epochs(3):
            for x, y in run.batches(train):
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                run.log(loss=loss)
            with torch.no_grad():
                for x, y in run.validation(val):
                    run.log(loss=loss_fn(model(x), y))
            sched.step()
        with torch.no_grad():
            for x, y in run.validation(val):
                run.log(loss=loss_fn(model(x), y))


def ready_made(bus: EventBus, tmp: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    fit(model, opt, torch.nn.CrossEntropyLoss(), _data(3, 0), epochs=3, bus=bus,
        val_loader=_data(2, 1), scheduler=sched, checkpoint_dir=tmp)  # fmt: skip


@pytest.mark.parametrize("loop", [instrumented, ready_made], ids=["instrument", "fit"])
def test_the_adapter_conforms_and_every_emit_is_in_order(loop: Any, tmp_path: Path) -> None:
    seen = check_adapter(lambda bus: loop(bus, tmp_path))
    assert {"on_pretrain_routine_start", "on_params_update", "on_model_save",
            "teardown"} <= seen.emitted  # fmt: skip
    bus = EventBus(check_order=True)  # raises OrderError at the first emit out of place
    rec = Recorder(bus)
    loop(bus, tmp_path)
    assert_canonical_order(rec.names)
    assert rec.names.count("on_params_update") == 4  # the first rates at the start, 3 changes
