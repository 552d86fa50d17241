"""Instrumenting a hand-written PyTorch loop: few lines, every moment, in order, unchanged maths."""

from __future__ import annotations

import copy
import difflib
import inspect
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventhooks import Callback, EventBus, SubscriberError, events
from eventhooks.adapters.torch import Run, instrument
from eventhooks.testing import Recorder, assert_canonical_order

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: What an instrumented loop emits: the whole FIT but the checkpoint (that needs model=).
INSTRUMENTED = {e.name for e in events.BUILTIN[:18]} - {"on_model_save"}


def data(n_batches: int, size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * size, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def mlp(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


# -- the two loops a user writes: plain, and instrumented ------------------------------------
# fmt: off
def plain_loop(model, opt, loss_fn, train, val, sched, epochs):  # type: ignore[no-untyped-def]
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for x, y in train:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total += loss.item()
        model.eval()
        val_loss = 0.0
        with torch.no_grad():
            for x, y in val:
                val_loss += loss_fn(model(x), y).item() / len(val)
        sched.step()
        print(f"epoch {epoch}: loss={total / len(train):.4f} val_loss={val_loss:.4f}")


def instrumented_loop(model, opt, loss_fn, train, val, sched, epochs, bus):  # type: ignore[no-untyped-def]
    with instrument(bus, opt) as run:
        for epoch in run.epochs(epochs):  # noqa: B007 (the print used it)
            model.train()
            total = 0.0
            for x, y in run.batches(train):
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                total += loss.item()
            model.eval()
            val_loss = 0.0
            with torch.no_grad():
                for x, y in run.validation(val):
                    val_loss += loss_fn(model(x), y).item() / len(val)
            sched.step()
            run.log(loss=total / len(train), val_loss=val_loss)
# fmt: on


def _body(fn: Any) -> list[str]:
    lines = inspect.getsource(fn).splitlines()[1:]  # the def line differs by the bus argument
    return [line.strip() for line in lines if line.strip()]


def test_a_plain_loop_needs_at_most_five_changed_lines() -> None:
    plain, instrumented = _body(plain_loop), _body(instrumented_loop)
    changed = 0
    for op, _, _, j1, j2 in difflib.SequenceMatcher(None, plain, instrumented).get_opcodes():
        if op in ("insert", "replace"):
            changed += j2 - j1
    assert 0 < changed <= 5


def _run_both(epochs: int = 3) -> tuple[torch.nn.Module, torch.nn.Module, Recorder, list[Any]]:
    train, val = data(4), data(2, seed=1)
    loss_fn = torch.nn.CrossEntropyLoss()
    plain_model, model = mlp(), mlp()
    results = []
    for m, bus in ((plain_model, None), (model, EventBus(check_order=True))):
        opt = torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.5)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        if bus is None:
            plain_loop(m, opt, loss_fn, train, val, sched, epochs)
        else:
            rec = Recorder(bus)
            instrumented_loop(m, opt, loss_fn, train, val, sched, epochs, bus)
        results.append(opt)
    return plain_model, model, rec, results


def test_instrumented_loop_emits_every_moment_in_canonical_order(capsys: Any) -> None:
    plain_model, model, rec, _ = _run_both(epochs=3)
    capsys.readouterr()
    assert set(rec.names) == INSTRUMENTED
    assert_canonical_order(rec.names, emitted=INSTRUMENTED)
    assert rec.names[:3] == ["on_pretrain_routine_start", "on_pretrain_routine_end",
                             "on_train_start"]  # fmt: skip
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert rec.names.count("on_train_batch_start") == 3 * 4
    assert rec.names.count("on_val_batch_end") == 3 * 2
    assert rec.names.count("optimizer_step") == rec.names.count("on_before_zero_grad") == 12
    # The maths is untouched: same weights as the plain loop.
    for a, b in zip(plain_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    # The user's metrics reach on_fit_epoch_end, as floats; the last val_loss is the model's.
    ends = rec.payloads("on_fit_epoch_end")
    assert [p.epoch for p in ends] == [0, 1, 2]
    assert all(set(p.logs) == {"loss", "val_loss"} for p in ends)
    val = data(2, seed=1)
    with torch.no_grad():
        expected = sum(float(torch.nn.CrossEntropyLoss()(model(x), y)) / 2 for x, y in val)
    assert ends[-1].logs["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert rec.payloads("on_train_end")[0].logs == ends[-1].logs
    assert rec.payloads("teardown")[0].error is None


def test_a_scheduler_stepped_between_epochs_is_announced_after_each_epoch_end() -> None:
    """``scheduler.step()`` after the epoch: announced between the epochs, where it happened,
    the change after the last epoch included (the old order had room only inside a batch)."""
    _, _, rec, (_, opt) = _run_both(epochs=3)
    first, *updates = rec.payloads("on_params_update")
    assert (first.epoch, first.batch, first.hyperparams["lr"]) == (None, None, 0.2)  # at start
    assert [(p.epoch, p.batch) for p in updates] == [(0, None), (1, None), (2, None)]
    assert [p.hyperparams["lr"] for p in updates] == pytest.approx([0.1, 0.05, 0.025])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    follows = [rec.names[i - 1] for i, n in enumerate(rec.names) if n == "on_params_update"]
    assert follows == ["on_train_start"] + ["on_fit_epoch_end"] * 3
    assert rec.names[-3:] == ["on_params_update", "on_train_end", "teardown"]


def test_step_payloads_count_steps_and_locate_them() -> None:
    _, _, rec, _ = _run_both(epochs=2)
    steps = rec.payloads("optimizer_step")
    assert [p.step for p in steps] == list(range(8))
    assert [(p.epoch, p.batch) for p in steps] == [(e, b) for e in range(2) for b in range(4)]
    zero = rec.payloads("on_before_zero_grad")
    assert [p.step for p in zero] == list(range(8))  # announces the step about to be made
    assert all(isinstance(p.source, Run) for _, p in rec.records)


def test_zero_grad_outside_a_batch_is_counted_not_emitted() -> None:
    """zero_grad() before the epoch loop or at the top of an epoch: still canonical order."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model, train = mlp(), data(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    with instrument(bus, opt) as run:
        opt.zero_grad()
        for _ in run.epochs(2):
            opt.zero_grad()
            for x, y in run.batches(train):
                loss_fn(model(x), y).backward()
                opt.step()
                opt.zero_grad()
            opt.step()  # a stray step between epochs counts as a step of the run
    assert_canonical_order(rec.names, emitted=INSTRUMENTED)
    steps = rec.payloads("optimizer_step")
    assert [(p.epoch, p.batch, p.step) for p in steps] == [(0, 0, 0), (0, 1, 1), (1, 0, 3),
                                                           (1, 1, 4)]  # fmt: skip
    assert all(p.batch is not None for p in rec.payloads("on_before_zero_grad"))
    assert run.steps == 6


def test_numpy_scalars_logged_become_floats_in_the_history() -> None:
    bus = EventBus(check_order=True)
    with instrument(bus) as run:
        for _ in run.epochs(1):
            for value in run.batches([0.5, 1.0]):
                run.log(acc=np.float64(value), n=np.int64(2))
    assert run.history == {"acc": [0.75], "n": [2.0]}
    assert all(type(v) is float for values in run.history.values() for v in values)


# -- batch logs: running means, floats, no .item() per batch unless someone listens ------------


def _logged_loop(bus: EventBus, epochs: int, batches: int) -> list[list[float]]:
    """A loop that logs tensors; returns the per-batch losses it computed (for checking)."""
    model, train = mlp(), data(batches)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    seen: list[list[torch.Tensor]] = []
    with instrument(bus, opt) as run:
        for _ in run.epochs(epochs):
            losses = []
            for x, y in run.batches(train):
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                run.log(loss=loss)
                losses.append(loss.detach().clone())
            seen.append(losses)
    return [[t.item() for t in losses] for losses in seen]


def test_batch_logs_are_running_means_and_epoch_logs_the_mean() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    losses = _logged_loop(bus, epochs=2, batches=5)
    batch_ends = rec.payloads("on_train_batch_end")
    for i, payload in enumerate(batch_ends):
        epoch_losses = losses[i // 5][: i % 5 + 1]
        assert type(payload.logs["loss"]) is float
        assert payload.logs["loss"] == pytest.approx(sum(epoch_losses) / len(epoch_losses))
    for payload, epoch_losses in zip(rec.payloads("on_train_epoch_end"), losses, strict=True):
        assert payload.logs["loss"] == pytest.approx(sum(epoch_losses) / 5)


def _count_conversions(monkeypatch: Any) -> list[int]:
    calls = [0]
    item, to_float = torch.Tensor.item, torch.Tensor.__float__

    def counted_item(self: torch.Tensor) -> Any:
        calls[0] += 1
        return item(self)

    def counted_float(self: torch.Tensor) -> float:
        calls[0] += 1
        return to_float(self)

    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    monkeypatch.setattr(torch.Tensor, "__float__", counted_float)
    return calls


@pytest.mark.parametrize("listen_to_batches", [False, True])
def test_no_tensor_conversion_per_batch_unless_someone_listens(
    monkeypatch: Any, listen_to_batches: bool
) -> None:
    bus = EventBus()  # check_order=True listens to everything: no conversion saved
    epochs_seen: list[float] = []
    bus.subscribe(events.on_fit_epoch_end, lambda p: epochs_seen.append(p.logs["loss"]))
    if listen_to_batches:
        bus.subscribe(events.on_train_batch_end, lambda p: None)
    model, train = mlp(), data(6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = _count_conversions(monkeypatch)
    with instrument(bus, opt) as run:
        for _ in run.epochs(3):
            for x, y in run.batches(train):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                run.log(loss=loss)
    assert len(epochs_seen) == 3
    # One conversion per epoch for the epoch mean; one per batch only for batch listeners.
    assert calls[0] == (3 * 6 if listen_to_batches else 3)


# -- on_params_update: schedulers per batch, hand-made changes, several param groups -----------


def test_params_update_per_batch_scheduler_and_hand_made_change() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model, train = mlp(), data(3)
    groups: list[dict[str, Any]] = [
        {"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.5}
    ]
    opt = torch.optim.SGD(groups, lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    with instrument(bus, opt) as run:
        for epoch in run.epochs(2):
            for batch, (x, y) in enumerate(run.batches(train)):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                sched.step()
                if (epoch, batch) == (1, 1):
                    opt.param_groups[1]["momentum"] = 0.9  # by hand: not a scheduler
    first, *updates = rec.payloads("on_params_update")
    assert (first.hyperparams["lr/pg0"], first.hyperparams["lr/pg1"]) == (0.1, 0.5)  # at start
    assert len(updates) == 6  # every batch changed the rate
    for k, p in enumerate(updates):
        assert p.hyperparams["lr/pg0"] == pytest.approx(0.1 / (k + 2))
        assert p.hyperparams["lr/pg1"] == pytest.approx(0.5 / (k + 2))
    assert updates[4].hyperparams["momentum/pg1"] == 0.9
    assert "momentum/pg1" not in updates[3].hyperparams
    assert_canonical_order(rec.names)


# -- failures --------------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_an_exception_in_the_loop_reaches_the_user_unchanged_after_teardown() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model, train = mlp(), data(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    error = Boom("bad batch")
    with pytest.raises(Boom) as caught, instrument(bus, opt) as run:
        for _ in run.epochs(2):
            for i, (x, y) in enumerate(run.batches(train)):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                if i == 1:
                    raise error
    assert caught.value is error
    assert rec.names[-1] == "teardown" and "on_train_end" not in rec.names
    teardown = rec.payloads("teardown")[0]
    assert teardown.error == "Boom: bad batch" and teardown.exception is error
    assert_canonical_order(rec.names)
    _assert_hooks_removed(opt, model, train)


def test_a_failing_teardown_subscriber_does_not_mask_the_users_exception() -> None:
    bus = EventBus(check_order=True)
    bus.subscribe(events.teardown, lambda p: 1 / 0)
    opt = torch.optim.SGD(mlp().parameters(), lr=0.1)
    error = Boom("original")
    with pytest.raises(Boom) as caught, instrument(bus, opt) as run:
        for _ in run.epochs(1):
            raise error
    assert caught.value is error


def test_a_failing_subscriber_aborts_the_run_with_teardown() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    bus.subscribe(events.on_train_batch_end, lambda p: 1 / 0 if p.batch == 2 else None)
    model, train = mlp(), data(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(SubscriberError), instrument(bus, opt) as run:
        for _ in run.epochs(2):
            for x, y in run.batches(train):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    assert "ZeroDivisionError" in rec.payloads("teardown")[0].error
    assert_canonical_order(rec.names)


def _assert_hooks_removed(opt: torch.optim.Optimizer, model: Any, train: Any) -> None:
    """After the run, the optimizer is as it was: stepping it emits nothing."""
    assert "zero_grad" not in vars(opt)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    x, y = train[0]
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert rec.names == []


def test_hooks_are_removed_after_a_normal_run() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model, train = mlp(), data(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with instrument(bus, opt) as run:
        for _ in run.epochs(1):
            for x, y in run.batches(train):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    n = len(rec.names)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(train[0][0]), train[0][1]).backward()
    opt.step()
    assert len(rec.names) == n  # the same bus hears nothing more
    _assert_hooks_removed(opt, model, train)


# -- stop requests ------------------------------------------------------------------------------


@FAST
@given(
    epochs=st.integers(1, 3),
    batches=st.integers(1, 4),
    stop_epoch=st.integers(0, 3),
    stop_batch=st.integers(0, 4),
    at_epoch_end=st.booleans(),
)
def test_request_stop_ends_the_loop_after_the_current_batch_or_epoch(
    epochs: int, batches: int, stop_epoch: int, stop_batch: int, at_epoch_end: bool
) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    if at_epoch_end:
        bus.subscribe(
            events.on_fit_epoch_end,
            lambda p: bus.request_stop("enough") if p.epoch == stop_epoch else None,
        )
    else:
        bus.subscribe(
            events.on_train_batch_end,
            lambda p: bus.request_stop("enough") if (p.epoch, p.batch) == (stop_epoch, stop_batch)
            else None,
        )  # fmt: skip
    model, train, val = mlp(), data(batches), data(1, seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ran: list[tuple[int, int]] = []
    with instrument(bus, opt) as run:
        for epoch in run.epochs(epochs):
            for b, (x, y) in enumerate(run.batches(train)):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                ran.append((epoch, b))
            for _ in run.validation(val):
                pass
    fired = stop_epoch < epochs and (at_epoch_end or stop_batch < batches)
    if not fired:
        expected = [(e, b) for e in range(epochs) for b in range(batches)]
    elif at_epoch_end:
        expected = [(e, b) for e in range(stop_epoch + 1) for b in range(batches)]
    else:
        expected = [(e, b) for e in range(stop_epoch) for b in range(batches)]
        expected += [(stop_epoch, b) for b in range(stop_batch + 1)]
    assert ran == expected
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    # The stopped epoch still closes: validation and on_fit_epoch_end, as in Keras.
    last = expected[-1][0]
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == list(range(last + 1))
    assert_canonical_order(rec.names)
    assert bus.stop_requested is fired


def test_breaking_out_of_the_loops_still_closes_batch_and_epoch() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model, train = mlp(), data(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with instrument(bus, opt) as run:
        for _ in run.epochs(5):
            for b, (x, y) in enumerate(run.batches(train)):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                run.log(loss=float(b))
                if b == 1:
                    break
            break
    assert rec.names.count("on_train_batch_end") == 2
    assert rec.payloads("on_fit_epoch_end")[0].logs == {"loss": 0.5}
    assert_canonical_order(rec.names, emitted=INSTRUMENTED)


# -- bad input, state, pickling ---------------------------------------------------------------


def test_bad_metrics_and_misuse_get_clear_errors() -> None:
    bus = EventBus(check_order=True)
    opt = torch.optim.SGD(mlp().parameters(), lr=0.1)
    run = instrument(bus, opt)
    with pytest.raises(RuntimeError, match=r"run\.epochs\(\) outside the run"):
        run.epochs(1)
    with pytest.raises(RuntimeError, match="inside `with run:`"):
        run.log(loss=1.0)
    with pytest.raises(TypeError, match="EventBus"):
        instrument("bus", opt)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        instrument(bus, [object()])  # type: ignore[list-item]
    with run:
        with pytest.raises(RuntimeError, match=r"inside `for epoch in run\.epochs"):
            run.batches([1])
        for _ in run.epochs(1):
            for _ in run.batches([1]):
                with pytest.raises(ValueError, match=r"'loss' must be a scalar.*\(3,\)"):
                    run.log(loss=torch.ones(3))
                for bad in ("high", "0.5", True, np.True_):  # float() takes all but the first
                    with pytest.raises(TypeError, match="'acc' must be a number"):
                        run.log(acc=bad)
        with pytest.raises(RuntimeError, match="already active"):
            run.__enter__()


def test_an_idle_run_pickles_and_an_active_one_refuses() -> None:
    bus = EventBus(check_order=True)
    heard: list[int] = []
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = instrument(bus, opt, model=model, sync_logs=True)
    copy_ = pickle.loads(pickle.dumps(run))
    assert isinstance(copy_, Run) and copy_.sync_logs and not copy_.active
    assert copy_.model is not model and len(copy_.optimizers) == 1
    copy_.bus.subscribe(events.on_train_start, lambda p: heard.append(1))
    with copy_:
        for _ in copy_.epochs(1):
            assert heard == [1]
        with pytest.raises(TypeError, match="active Run cannot be pickled"):
            pickle.dumps(copy_)


def test_a_callback_subclass_hears_the_instrumented_loop_under_keras_names() -> None:
    class Keep(Callback):
        def __init__(self) -> None:
            self.epochs: list[int] = []
            self.batches = 0

        def on_epoch_end(self, payload: Any) -> None:
            self.epochs.append(payload.epoch)

        def on_train_batch_begin(self, payload: Any) -> None:
            self.batches += 1

    bus = EventBus(check_order=True)
    keep = Keep()
    bus.attach(keep)
    _logged_loop(bus, epochs=2, batches=3)
    assert keep.epochs == [0, 1] and keep.batches == 6


def test_weights_api_snapshots_and_restores() -> None:
    model = mlp()
    run = instrument(EventBus(check_order=True), model=model)
    before = run.get_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    # Module.__getattr__ is typed Tensor | Module: torch cannot know weight is a Tensor.
    assert not torch.equal(before["0.weight"], model[0].weight)  # type: ignore[arg-type]
    run.set_weights(copy.deepcopy(before))
    assert torch.equal(before["0.weight"], model[0].weight)  # type: ignore[arg-type]


@FAST
@given(
    values=st.lists(
        st.tuples(
            st.floats(-1e3, 1e3, allow_nan=False, width=32),
            st.sampled_from(["float", "0d", "1d", "float64", "int"]),
        ),
        min_size=1,
        max_size=600,
    )
)
def test_epoch_means_are_exact_over_any_mix_of_scalar_forms(values: list[Any]) -> None:
    """Floats, 0-d and 1-element tensors of either precision: one mean (folds included)."""

    def form(value: float, kind: str) -> Any:
        return {
            "float": value,
            "0d": torch.tensor(value),
            "1d": torch.tensor([value]),
            "float64": torch.tensor(value, dtype=torch.float64),
            "int": int(value),
        }[kind]

    bus = EventBus(check_order=True)
    rec = Recorder(bus, events=[events.on_train_epoch_end])
    expected = [float(v) if kind != "int" else float(int(v)) for v, kind in values]
    with instrument(bus) as run:
        for _ in run.epochs(1):
            for value, kind in run.batches(values):
                run.log(m=form(value, kind))
    got = rec.payloads("on_train_epoch_end")[0].logs["m"]
    assert got == pytest.approx(sum(expected) / len(expected), rel=1e-5, abs=1e-4)


def test_several_optimizers_are_all_watched_and_named_apart() -> None:
    """A GAN-style loop: two optimizers, each step announced, hyper-parameters told apart."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    gen, disc = mlp(0), mlp(1)
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.1)
    opt_d = torch.optim.Adam(disc.parameters(), lr=0.01)
    train = data(2)
    with instrument(bus, [opt_g, opt_d]) as run:
        for _ in run.epochs(1):
            for b, (x, y) in enumerate(run.batches(train)):
                for net, opt in ((gen, opt_g), (disc, opt_d)):
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(net(x), y).backward()
                    opt.step()
                if b == 0:
                    opt_d.param_groups[0]["lr"] = 0.005
    assert rec.names.count("optimizer_step") == 4
    assert [p.step for p in rec.payloads("optimizer_step")] == [0, 1, 2, 3]
    first, update = rec.payloads("on_params_update")
    assert (first.hyperparams["lr/opt0"], first.hyperparams["lr/opt1"]) == (0.1, 0.01)  # start
    assert update.batch == 0
    assert update.hyperparams["lr/opt0"] == 0.1 and update.hyperparams["lr/opt1"] == 0.005
    assert "zero_grad" not in vars(opt_g) and "zero_grad" not in vars(opt_d)
    # Two steps in one batch, announced where they happen: the old order had room for one.
    first = rec.names.index("on_train_batch_start")
    assert rec.names[first : rec.names.index("on_train_batch_end") + 1] == [
        "on_train_batch_start", "on_before_zero_grad", "optimizer_step",
        "on_before_zero_grad", "optimizer_step", "on_params_update", "on_train_batch_end",
    ]  # fmt: skip
    assert_canonical_order(rec.names)


def test_gradient_accumulation_gives_batches_without_a_step() -> None:
    """Steps every other batch: the batches in between have none (the old order wanted one),
    and the maths is the plain accumulating loop's."""
    train, loss_fn = data(4), torch.nn.CrossEntropyLoss()
    plain, model = mlp(), mlp()
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    for i, (x, y) in enumerate(train):
        (loss_fn(plain(x), y) / 2).backward()
        if i % 2 == 1:
            plain_opt.step()
            plain_opt.zero_grad()
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with instrument(bus, opt) as run:
        for _ in run.epochs(1):
            for i, (x, y) in enumerate(run.batches(train)):
                (loss_fn(model(x), y) / 2).backward()
                if i % 2 == 1:
                    opt.step()
                    opt.zero_grad()
    assert_canonical_order(rec.names)
    steps = rec.payloads("optimizer_step")
    assert [(p.batch, p.step) for p in steps] == [(1, 0), (3, 1)]
    assert rec.names.count("on_train_batch_end") == 4 and run.steps == 2
    batch_0 = rec.names[rec.names.index("on_train_batch_start"):][:2]
    assert batch_0 == ["on_train_batch_start", "on_train_batch_end"]
    for a, b in zip(plain.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_validation_after_the_last_epoch_is_the_runs_own() -> None:
    """A test-set evaluation after the epoch loop, inside the run: accepted, before
    on_train_end, carrying the last epoch; its metrics under their own names."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model, train, test = mlp(), data(2), data(3, seed=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    with instrument(bus, opt) as run:
        for _ in run.epochs(2):
            _train_epoch(run, opt, model, train)
        with torch.no_grad():
            for x, y in run.validation(test):
                run.log(loss=loss_fn(model(x), y))
    assert_canonical_order(rec.names)
    assert rec.names[-11:] == [
        "on_fit_epoch_end", "on_val_start", *["on_val_batch_start", "on_val_batch_end"] * 3,
        "on_val_end", "on_train_end", "teardown",
    ]  # fmt: skip
    end = rec.payloads("on_val_end")[0]
    with torch.no_grad():
        expected = sum(float(loss_fn(model(x), y)) for x, y in test) / 3
    assert end.epoch == 1 and end.logs == {"loss": pytest.approx(expected, rel=1e-6)}
    assert run.val_logs == end.logs and "val_loss" not in run.history


def test_a_checkpoint_after_the_loop_comes_before_the_last_change_of_rate(
    tmp_path: Any,
) -> None:
    """The last epoch's ``scheduler.step()`` is announced once the run knows no save of that
    epoch follows: a final ``run.checkpoint`` inside the run is still in order."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model, train = mlp(), data(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with instrument(bus, opt, model=model) as run:
        for _ in run.epochs(2):
            _train_epoch(run, opt, model, train)
            sched.step()
        run.checkpoint(tmp_path / "final.pt")
    assert_canonical_order(rec.names)
    assert rec.names[-5:] == ["on_fit_epoch_end", "on_model_save", "on_params_update",
                              "on_train_end", "teardown"]  # fmt: skip
    assert [p.hyperparams["lr"] for p in rec.payloads("on_params_update")] == [0.4, 0.2, 0.1]


def test_a_checkpoint_where_the_epoch_has_no_room_is_a_save_of_its_own(tmp_path: Any) -> None:
    """Every other batch, or before the validation: the file is written, on_model_save is
    heard, and the run goes on in order around those saves."""
    bus = EventBus()
    rec = Recorder(bus)
    model, train, val = mlp(), data(4), data(1, seed=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with instrument(bus, opt, model=model) as run:
        for epoch in run.epochs(2):
            for b, (x, y) in enumerate(run.batches(train)):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                if b % 2 == 1:
                    run.checkpoint(tmp_path / f"e{epoch}b{b}.pt")
            run.checkpoint(tmp_path / "before_val.pt")
            for _ in run.validation(val):
                pass
            run.checkpoint(tmp_path / "after_val.pt")  # the epoch's own
    saves = rec.payloads("on_model_save")
    assert [Path(p.path).name for p in saves] == [
        name for e in (0, 1) for name in (f"e{e}b1.pt", f"e{e}b3.pt", "before_val.pt",
                                          "after_val.pt")
    ]  # fmt: skip
    assert all(Path(p.path).exists() for p in saves)
    own = [i for i, n in enumerate(rec.names) if n == "on_model_save"
           and Path(rec.records[i][1].path).name != "after_val.pt"]  # fmt: skip
    assert_canonical_order([n for i, n in enumerate(rec.names) if i not in own])
    assert [rec.names[i - 1] for i, n in enumerate(rec.names)
            if n == "on_model_save" and i not in own] == ["on_val_end"] * 2  # fmt: skip


def test_a_subscriber_every_50_batches_costs_conversions_on_those_batches_only(
    monkeypatch: Any,
) -> None:
    bus = EventBus()
    heard: list[tuple[int, float]] = []
    bus.on(events.on_train_batch_end, every=50)(lambda p: heard.append((p.batch, p.logs["loss"])))
    calls = _count_conversions(monkeypatch)
    with instrument(bus) as run:
        for _ in run.epochs(2):
            for i in run.batches(range(100)):
                run.log(loss=torch.tensor(float(i)))
    assert heard == [(49, 24.5), (99, 49.5)] * 2
    # One device sync per delivery (each folds the batches before it); the epoch's mean then
    # has nothing left to convert. Not one per batch: 200.
    assert calls[0] == 2 * 2


def test_params_know_epochs_at_train_start_and_steps_at_epoch_start() -> None:
    """Progress bars need totals: the run announces training and epochs once it knows them."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model, train = mlp(), data(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with instrument(bus, opt) as run:
        model.eval()  # work before the loops: only the routine announced yet
        assert rec.names == ["on_pretrain_routine_start", "on_pretrain_routine_end"]
        for _ in run.epochs(range(2, 5)):  # resuming at epoch 2
            for x, y in run.batches(train):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    start = rec.payloads("on_train_start")[0]
    assert start.epoch == 2 and start.params["epochs"] == 5
    assert [p.epoch for p in rec.payloads("on_train_epoch_start")] == [2, 3, 4]
    assert all(p.params["steps"] == 3 for p in rec.payloads("on_train_epoch_start"))
    assert_canonical_order(rec.names)


def test_an_empty_run_still_starts_ends_and_tears_down() -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    with instrument(bus, torch.optim.SGD(mlp().parameters(), lr=0.1)):
        pass
    assert rec.names == ["on_pretrain_routine_start", "on_pretrain_routine_end",
                         "on_train_start", "on_params_update", "on_train_end",
                         "teardown"]  # fmt: skip


# -- runs that share an optimizer, reused runs ---------------------------------------------------


def _train_epoch(run: Run, opt: torch.optim.Optimizer, model: Any, train: Any) -> None:
    for x, y in run.batches(train):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("inner_first", [True, False])
def test_nested_runs_on_one_optimizer_keep_the_outer_runs_zero_grad(inner_first: bool) -> None:
    """An inner run (a nested evaluation, a probe) must not take the outer run's hooks away."""
    model, train = mlp(), data(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outer_bus, inner_bus = EventBus(check_order=True), EventBus(check_order=True)
    outer, inner = Recorder(outer_bus), Recorder(inner_bus)
    with instrument(outer_bus, opt) as run:
        for epoch in run.epochs(2):
            if epoch == 0 and inner_first:
                with instrument(inner_bus, opt) as probe:
                    for _ in probe.epochs(1):
                        _train_epoch(probe, opt, model, train[:1])
            _train_epoch(run, opt, model, train)
            if epoch == 0 and not inner_first:
                with instrument(inner_bus, opt) as probe:
                    for _ in probe.epochs(1):
                        _train_epoch(probe, opt, model, train[:1])
    epochs = [p.epoch for p in outer.payloads("on_before_zero_grad")]
    # Every run watching the optimizer sees its zero_grad, but emits it only inside its own
    # batches: the inner run's one is not the outer run's; after the inner run ended, the
    # outer run still hears one per batch.
    assert epochs == [0] * len(train) + [1] * len(train)
    assert_canonical_order(outer.names, emitted=INSTRUMENTED)
    assert len(inner.payloads("on_before_zero_grad")) == 1
    _assert_hooks_removed(opt, model, train)


def test_a_zero_grad_the_user_put_on_the_optimizer_is_restored() -> None:
    model, train = mlp(), data(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls: list[bool] = []
    original = opt.zero_grad

    def mine(set_to_none: bool = True) -> None:
        calls.append(set_to_none)
        original(set_to_none=set_to_none)

    opt.zero_grad = mine  # type: ignore[method-assign]
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    with instrument(bus, opt) as run:
        for _ in run.epochs(1):
            _train_epoch(run, opt, model, train)
    assert vars(opt)["zero_grad"] is mine
    assert len(calls) == 1 and rec.names.count("on_before_zero_grad") == 1


def test_runs_on_one_optimizer_ending_out_of_order_leave_it_as_it_was() -> None:
    model, train = mlp(), data(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = instrument(EventBus(check_order=True), opt)
    second = instrument(EventBus(check_order=True), opt)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the outer run ends first
    second.__exit__(None, None, None)
    _assert_hooks_removed(opt, model, train)


def test_a_reused_run_starts_with_fresh_params() -> None:
    bus = EventBus(check_order=True)
    starts: list[dict[str, Any]] = []
    bus.subscribe(events.on_train_start, lambda p: starts.append(dict(p.params or {})))
    model, train = mlp(), data(5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = instrument(bus, opt)
    with run:
        for _ in run.epochs(2):
            _train_epoch(run, opt, model, train)
    first = run.params
    with run:
        for _ in run.epochs(range(1)):
            pass
    assert starts == [{"epochs": 2}, {"epochs": 1}]
    assert first == {"epochs": 2, "steps": 5}  # the first run's params are left as they ended


def test_a_failing_teardown_subscriber_is_noted_on_the_users_exception() -> None:
    bus = EventBus(check_order=True)
    bus.subscribe(events.teardown, lambda p: 1 / 0)
    opt = torch.optim.SGD(mlp().parameters(), lr=0.1)
    error = Boom("original")
    with pytest.raises(Boom) as caught, instrument(bus, opt) as run:
        for _ in run.epochs(1):
            raise error
    assert caught.value is error and str(error) == "original"
    notes = getattr(error, "__notes__", [])
    assert len(notes) == 1 and "teardown" in notes[0] and "ZeroDivisionError" in notes[0]


def test_a_learning_rate_gone_nan_is_announced_once_not_every_batch() -> None:
    """NaN != NaN: a rate set to NaN (a broken schedule) is one change, not one per batch."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model, train = mlp(), data(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with instrument(bus, opt) as run:
        for _ in run.epochs(2):
            for x, y in run.batches(train):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                opt.param_groups[0]["lr"] = float("nan")
    first, *updates = rec.payloads("on_params_update")
    assert first.hyperparams["lr"] == 0.1  # the run's first rate, at its start
    assert [(p.epoch, p.batch) for p in updates] == [(0, 0)]
    assert updates[0].hyperparams["lr"] != updates[0].hyperparams["lr"]
    assert_canonical_order(rec.names)


def test_breaking_out_of_a_validation_after_the_last_epoch_still_ends_it() -> None:
    """A `break` out of a test-set validation after the epoch loop: the validation ends (its
    batch and on_val_end) when the run ends, not with an OrderError at on_train_end."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model, train, test = mlp(), data(2), data(3, seed=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with instrument(bus, opt) as run:
        for _ in run.epochs(1):
            _train_epoch(run, opt, model, train)
        for _ in run.validation(test):
            run.log(loss=0.5)
            break
    assert_canonical_order(rec.names)
    assert rec.names[-6:] == [
        "on_val_start", "on_val_batch_start", "on_val_batch_end", "on_val_end", "on_train_end",
        "teardown",
    ]  # fmt: skip
    assert [p.logs for p in rec.payloads("on_val_end")] == [{"loss": 0.5}]
    assert rec.payloads("teardown")[0].error is None


def test_a_rate_set_inside_the_run_before_its_epochs_is_the_first_one_announced() -> None:
    """The run's first rate is read when training starts, not when the run is entered: a
    rate set (or a warm-up scheduler built) in between is the one announced, once."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model, train = mlp(), data(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with instrument(bus, opt) as run:
        opt.param_groups[0]["lr"] = 0.05
        for _ in run.epochs(2):
            for x, y in run.batches(train):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    (first,) = rec.payloads("on_params_update")
    assert (first.epoch, first.batch, first.hyperparams["lr"]) == (None, None, 0.05)
    assert_canonical_order(rec.names)
