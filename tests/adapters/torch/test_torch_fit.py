"""The ready-made PyTorch loop: fit/evaluate/predict/export emit every moment, logs are floats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from eventhooks import EventBus, events
from eventhooks.adapters.torch import evaluate, export, fit, predict
from eventhooks.callbacks import ModelCheckpoint
from eventhooks.testing import Recorder, assert_canonical_order

ALL = {e.name for e in events.BUILTIN}


def loaders(n: int = 48, batch: int = 8, seed: int = 0) -> tuple[DataLoader[Any], DataLoader[Any]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] - x[:, 2] > 0).long()
    xv = torch.randn(16, 4, generator=g)
    yv = (xv[:, 0] - xv[:, 2] > 0).long()
    return (
        DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, generator=g),
        DataLoader(TensorDataset(xv, yv), batch_size=batch),
    )


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(1) == targets).float().mean()


def test_a_session_of_fit_evaluate_predict_export_emits_all_25_moments(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    train, val = loaders()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    history = fit(
        model, opt, torch.nn.functional.cross_entropy, train, epochs=3, bus=bus,
        val_loader=val, metrics={"accuracy": accuracy}, scheduler=sched,
        checkpoint_dir=tmp_path / "ckpt",
    )  # fmt: skip
    evaluate(model, torch.nn.functional.cross_entropy, val, bus=bus)
    predict(model, val, bus=bus, postprocess=lambda out: out.argmax(1))
    export(model, (torch.randn(2, 4),), tmp_path / "model.pt2", bus=bus)
    assert set(rec.names) == ALL
    assert_canonical_order(rec.names, emitted=ALL)
    assert rec.names[:3] == [
        "on_pretrain_routine_start",
        "on_pretrain_routine_end",
        "on_train_start",
    ]
    # Logs carry floats, never tensors; the history is what on_fit_epoch_end delivered.
    for _, payload in rec.records:
        assert all(type(v) is float for v in getattr(payload, "logs", {}).values())
    ends = rec.payloads("on_fit_epoch_end")
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history == {k: [p.logs[k] for p in ends] for k in history}
    assert rec.payloads("on_train_end")[0].logs == ends[-1].logs


def test_last_epoch_validation_metrics_match_an_independent_evaluation() -> None:
    train, val = loaders()
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    history = fit(
        model, opt, torch.nn.functional.cross_entropy, train, epochs=4,
        bus=EventBus(check_order=True), val_loader=val, metrics={"accuracy": accuracy},
    )  # fmt: skip
    with torch.no_grad():
        batches = [(model(x), y) for x, y in val]
    losses = [float(torch.nn.functional.cross_entropy(o, y)) for o, y in batches]
    accs = [float((o.argmax(1) == y).float().mean()) for o, y in batches]
    assert history["val_loss"][-1] == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    assert history["val_accuracy"][-1] == pytest.approx(sum(accs) / len(accs))
    assert history["loss"][-1] < history["loss"][0]  # it learns
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    result = evaluate(model, torch.nn.functional.cross_entropy, val, bus=bus)
    assert result == {"loss": pytest.approx(sum(losses) / len(losses), rel=1e-6)}
    assert rec.names == ["on_val_start"] + ["on_val_batch_start", "on_val_batch_end"] * 2 + [
        "on_val_end"
    ]
    assert rec.payloads("on_val_end")[0].logs == result


def test_the_checkpoint_is_a_state_dict_file_that_restores_the_model(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    train, val = loaders()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fit(model, opt, torch.nn.functional.cross_entropy, train, epochs=2, bus=bus,
        val_loader=val, checkpoint_dir=tmp_path)  # fmt: skip
    saves = rec.payloads("on_model_save")
    assert [p.epoch for p in saves] == [0, 1]
    assert all(Path(p.path) == tmp_path / "last.pt" for p in saves)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["logs"] == rec.payloads("on_fit_epoch_end")[-1].logs
    fresh = mlp(seed=1)
    fresh.load_state_dict(state["model"])
    x = torch.randn(5, 4)
    assert torch.equal(fresh(x), model(x))
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(state["optimizer"])  # momentum buffers included
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("fmt", ["torch.export", "torchscript"])
def test_export_writes_an_artifact_that_computes_the_same(tmp_path: Path, fmt: Any) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = mlp()
    example = (torch.randn(3, 4),)
    if fmt == "torchscript":
        with pytest.warns(FutureWarning):  # PyTorch deprecates TorchScript; it still works
            path = export(model, example, tmp_path / "m.bin", bus=bus, format=fmt)
    else:
        path = export(model, example, tmp_path / "m.bin", bus=bus, format=fmt)
    assert rec.names == ["on_export_start", "on_export_end"]
    assert rec.payloads("on_export_start")[0].format == fmt
    assert Path(rec.payloads("on_export_end")[0].path) == path and path.exists()
    x = torch.randn(7, 4)
    if fmt == "torch.export":
        loaded = torch.export.load(path).module()
    else:
        with pytest.warns(FutureWarning):  # PyTorch deprecates TorchScript; it still works
            loaded = torch.jit.load(str(path))
    assert torch.allclose(loaded(x), model(x))
    assert model.training  # export put the model back the way it was


def test_predict_returns_the_outputs_and_announces_postprocessed_ones() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = mlp()
    x = torch.randn(20, 4)
    loader = DataLoader(TensorDataset(x), batch_size=6)
    out = predict(model, loader, bus=bus, postprocess=lambda o: o.softmax(1))
    with torch.no_grad():
        expected = model(x).softmax(1)
    assert torch.allclose(out, expected)
    posts = rec.payloads("on_predict_postprocess_end")
    assert [p.batch for p in posts] == [0, 1, 2, 3]
    assert torch.allclose(torch.cat([p.outputs for p in posts]), expected)
    assert_canonical_order(rec.names)
    assert predict(model, [], bus=bus) == []


def test_a_stop_request_ends_fit_after_that_batch_and_closes_the_run() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    bus.subscribe(
        events.on_train_batch_end,
        lambda p: bus.request_stop("enough") if (p.epoch, p.batch) == (1, 2) else None,
    )
    train, val = loaders()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ce = torch.nn.functional.cross_entropy
    history = fit(model, opt, ce, train, epochs=5, bus=bus, val_loader=val)
    assert len(history["loss"]) == 2
    assert rec.names.count("on_train_batch_start") == 6 + 3
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert bus.stop_reason == "enough"


def test_an_error_in_fit_emits_teardown_and_reaches_the_caller_unchanged() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    error = FloatingPointError("loss exploded")
    calls = [0]

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 4:
            raise error
        return torch.nn.functional.cross_entropy(out, y)

    train, _ = loaders()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError) as caught:
        fit(model, opt, loss_fn, train, epochs=2, bus=bus)
    assert caught.value is error
    assert rec.payloads("teardown")[0].error == "FloatingPointError: loss exploded"
    assert_canonical_order(rec.names)
    assert "zero_grad" not in vars(opt)


def test_reduce_lr_on_plateau_is_stepped_with_val_loss_and_announced() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    train, val = loaders()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)  # no real progress: a plateau
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    fit(model, opt, torch.nn.functional.cross_entropy, train, epochs=3, bus=bus,
        val_loader=val, scheduler=sched)  # fmt: skip
    first, *updates = rec.payloads("on_params_update")
    assert (first.epoch, first.batch) == (None, None)  # the run's first rate, at its start
    # Epochs 1 and 2 do not improve: each halves the rate, announced after its epoch's end
    # (the last one included: it used to wait for a step that never came).
    assert [(p.epoch, p.batch) for p in updates] == [(1, None), (2, None)]
    assert [p.hyperparams["lr"] for p in updates] == pytest.approx([5e-7, 2.5e-7])


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize(("epochs", "step_size"), [(3, 1), (4, 2)])
def test_an_epoch_scheduler_change_is_announced_in_the_epoch_that_made_it(
    epochs: int, step_size: int
) -> None:
    """Each change, the one after the final epoch included, between the epochs: right after
    the on_fit_epoch_end of the epoch that made it. fit steps the scheduler after validation,
    as PyTorch's own loops do, so every step of an epoch runs at the rate in force for it.
    """
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    used: list[tuple[int | None, float]] = []  # (epoch, rate) of every optimizer step
    bus.subscribe(
        events.optimizer_step, lambda p: used.append((p.epoch, lr_of(p.source.optimizers[0])))
    )
    train, val = loaders()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=0.5)
    fit(model, opt, torch.nn.functional.cross_entropy, train, epochs=epochs, bus=bus,
        val_loader=val, scheduler=sched)  # fmt: skip

    # The rates PyTorch's scheduler gives after each epoch, computed apart from fit.
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
    ref_sched = torch.optim.lr_scheduler.StepLR(reference, step_size=step_size, gamma=0.5)
    after: list[float] = []
    for _ in range(epochs):
        reference.step()
        ref_sched.step()
        after.append(lr_of(reference))
    before = [0.4, *after[:-1]]
    expected = [(e, after[e]) for e in range(epochs) if after[e] != before[e]]
    assert expected  # the case has changes to announce, the last one after the final epoch

    first, *updates = rec.payloads("on_params_update")
    assert (first.epoch, first.hyperparams["lr"]) == (None, 0.4)  # the run's first, at its start
    assert [(p.epoch, p.hyperparams["lr"]) for p in updates] == expected
    assert all(p.batch is None for p in updates)
    follows = [rec.names[i - 1] for i, n in enumerate(rec.names) if n == "on_params_update"]
    assert follows == ["on_train_start"] + ["on_fit_epoch_end"] * len(expected)
    assert updates[-1].hyperparams["lr"] == lr_of(opt)
    for epoch in range(epochs):  # every step of an epoch ran at the rate in force for it
        assert {rate for e, rate in used if e == epoch} == {before[epoch]}
    assert_canonical_order(rec.names)


class _Misreporting(list):  # type: ignore[type-arg]
    """A loader whose len() is wrong (iteration does not use it)."""

    def __init__(self, items: Any, reported: int) -> None:
        super().__init__(items)
        self.reported = reported

    def __len__(self) -> int:
        return self.reported


class _Unsized:
    def __init__(self, items: Any) -> None:
        self.items = list(items)

    def __iter__(self) -> Any:
        return iter(self.items)


@pytest.mark.parametrize("kind", ["len too small", "len too large", "no len"])
def test_a_loader_whose_len_is_wrong_or_missing_changes_no_rate(kind: str) -> None:
    """The schedule follows the epochs, not len(): no step runs at a rate a step too early."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    used: list[tuple[int | None, float]] = []
    bus.subscribe(
        events.optimizer_step, lambda p: used.append((p.epoch, lr_of(p.source.optimizers[0])))
    )
    batches = list(loaders()[0])
    train: Any = {
        "len too small": lambda: _Misreporting(batches, 2),
        "len too large": lambda: _Misreporting(batches, 9),
        "no len": lambda: _Unsized(batches),
    }[kind]()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    fit(model, opt, torch.nn.functional.cross_entropy, train, epochs=2, bus=bus,
        scheduler=sched)  # fmt: skip
    assert {rate for e, rate in used if e == 0} == {0.4}
    assert {rate for e, rate in used if e == 1} == {0.2}
    updates = rec.payloads("on_params_update")
    assert [(p.epoch, p.batch, p.hyperparams["lr"]) for p in updates] == [
        (None, None, 0.4), (0, None, 0.2), (1, None, 0.1),  # the first rate, at the start
    ]  # fmt: skip
    assert_canonical_order(rec.names)


def test_fit_with_a_scheduler_trains_as_the_plain_pytorch_loop() -> None:
    """fit steps the scheduler where the usual loop does: the same weights and rate."""
    ce = torch.nn.functional.cross_entropy
    train, val = loaders()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.4, momentum=0.5)
    fit(model, opt, ce, train, epochs=3, bus=EventBus(check_order=True), val_loader=val,
        scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))  # fmt: skip

    train, val = loaders()
    plain = mlp()
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.4, momentum=0.5)
    plain_sched = torch.optim.lr_scheduler.StepLR(plain_opt, step_size=1, gamma=0.5)
    for _ in range(3):
        plain.train()
        for x, y in train:
            plain_opt.zero_grad()
            ce(plain(x), y).backward()
            plain_opt.step()
        plain.eval()
        with torch.no_grad():
            for x, _ in val:
                plain(x)
        plain_sched.step()
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    assert lr_of(opt) == lr_of(plain_opt)


def test_a_scheduler_still_steps_once_an_epoch_when_a_stop_cuts_the_epoch_short() -> None:
    bus = EventBus(check_order=True)
    bus.subscribe(
        events.on_train_batch_end,
        lambda p: bus.request_stop("enough") if (p.epoch, p.batch) == (1, 2) else None,
    )
    train, _ = loaders()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    history = fit(model, opt, torch.nn.functional.cross_entropy, train, epochs=5, bus=bus,
                  scheduler=sched)  # fmt: skip
    assert len(history["loss"]) == 2 and sched.last_epoch == 2
    assert lr_of(opt) == pytest.approx(0.1)


def test_model_checkpoint_saves_through_the_run_without_a_second_announcement(
    tmp_path: Path,
) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    ckpt = ModelCheckpoint(tmp_path / "e{epoch}-{val_loss:.3f}.pt")
    bus.attach(ckpt)
    train, val = loaders()
    model = mlp()
    fit(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.functional.cross_entropy,
        train, epochs=2, bus=bus, val_loader=val)  # fmt: skip
    assert len(ckpt.saved) == 2 and all(Path(p).exists() for p in ckpt.saved)
    assert [p.path for p in rec.payloads("on_model_save")] == ckpt.saved
    assert_canonical_order(rec.names)


def test_bad_input_gets_clear_errors(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ce = torch.nn.functional.cross_entropy
    with pytest.raises(ValueError, match="epochs must be an int >= 0"):
        fit(model, opt, ce, [], epochs=-1, bus=bus)
    with pytest.raises(
        TypeError, match=r"fit\(train_loader\): batches must be \(inputs, targets\)"
    ):
        fit(model, opt, ce, [torch.randn(2, 4)], epochs=1, bus=bus)
    with pytest.raises(ValueError, match="format must be"):
        export(model, (torch.randn(1, 4),), tmp_path / "x", bus=bus, format="onnx")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="example_inputs must be a tuple"):
        export(model, torch.randn(1, 4), tmp_path / "x", bus=bus)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="checkpoint_dir= needs model="):
        from eventhooks.adapters.torch import instrument

        instrument(bus, opt, checkpoint_dir=tmp_path)


def test_fit_announces_its_totals_from_the_pretrain_routine_on() -> None:
    """Progress bars size themselves at the first events: params know epochs and steps."""
    bus = EventBus(check_order=True)
    seen: list[tuple[str, dict[str, Any]]] = []
    for name in ("on_pretrain_routine_start", "on_train_start"):
        bus.subscribe(name, lambda p, name=name: seen.append((name, dict(p.params))))
    train, _ = loaders(n=40, batch=8)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epochs in (2, 1):  # twice: each fit's own totals
        fit(model, opt, torch.nn.functional.cross_entropy, train, epochs=epochs, bus=bus)
    totals = [{"epochs": 2, "steps": len(train)}] * 2 + [{"epochs": 1, "steps": len(train)}] * 2
    names = ["on_pretrain_routine_start", "on_train_start"] * 2
    assert seen == list(zip(names, totals, strict=True))
