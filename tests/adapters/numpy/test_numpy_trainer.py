"""The NumPy reference trainer: it learns, emits the 25 moments in order, stops, fails loudly."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventhooks import Callback, EventBus, SubscriberError, events
from eventhooks.adapters import _numpy_mlp as mlp
from eventhooks.adapters.numpy import NumpyTrainer, load
from eventhooks.testing import CountingBus, Recorder, assert_canonical_order

ALL = [event.name for event in events.BUILTIN]
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def blobs(n: int, dim: int = 4, classes: int = 3, seed: int = 0) -> tuple[Any, Any]:
    """Well separated Gaussian clusters: a linearly separable problem, up to rare outliers."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(size=(classes, dim)) * 5.0
    y = rng.integers(0, classes, size=n)
    return centres[y] + rng.normal(size=(n, dim)), y


def reference_loss(weights: list[Any], x: Any, y: Any) -> tuple[float, float]:
    """Mean cross-entropy and accuracy, computed independently of the trainer's code."""
    a = np.asarray(x, dtype=np.float64)
    pairs = [(weights[i].astype(np.float64), weights[i + 1]) for i in range(0, len(weights), 2)]
    for kernel, bias in pairs[:-1]:
        a = np.where(a @ kernel + bias > 0, a @ kernel + bias, 0.0)
    logits = a @ pairs[-1][0] + pairs[-1][1]
    losses = []
    for row, label in zip(logits, y, strict=True):
        top = max(row)
        log_total = top + math.log(sum(math.exp(v - top) for v in row))
        losses.append(log_total - row[label])
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y))
    return float(np.mean(losses)), accuracy


# -- order --------------------------------------------------------------------------------------


@FAST
@given(
    n=st.integers(1, 40),
    epochs=st.integers(0, 3),
    batch_size=st.integers(1, 17),
    validate=st.booleans(),
    checkpoint=st.booleans(),
    schedule=st.booleans(),
    n_val=st.integers(1, 9),
)
def test_canonical_order_over_shapes(
    tmp_path_factory: pytest.TempPathFactory,
    n: int,
    epochs: int,
    batch_size: int,
    validate: bool,
    checkpoint: bool,
    schedule: bool,
    n_val: int,
) -> None:
    tmp = tmp_path_factory.mktemp("order")
    x, y = blobs(n + n_val, seed=n)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = NumpyTrainer(
        bus=bus, hidden=(5,), n_classes=3, lr_schedule=(lambda e: 0.1 / (e + 1)) if schedule
        else None,
    )  # fmt: skip
    val = (x[n:], y[n:]) if validate else None
    trainer.fit(
        x[:n], y[:n], epochs=epochs, batch_size=batch_size, validation_data=val,
        checkpoint=tmp / "last.npz" if checkpoint else None,
    )  # fmt: skip
    trainer.evaluate(x, y, batch_size=batch_size)
    trainer.predict(x, batch_size=batch_size)
    trainer.export(tmp / "model.json")
    trainer.save(tmp / "model.npz")
    assert_canonical_order(rec.names, emitted=ALL)

    steps = math.ceil(n / batch_size)
    ends = rec.payloads("on_train_batch_end")
    assert [(p.epoch, p.batch) for p in ends] == [
        (e, b) for e in range(epochs) for b in range(steps)
    ]
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == list(range(epochs))
    assert len(rec.payloads("on_val_end")) == epochs * validate + 1  # + evaluate
    assert len(rec.payloads("on_model_save")) == epochs * checkpoint + 1  # + save()
    updates = rec.payloads("on_params_update")
    assert len(updates) == 1 + (max(epochs - 1, 0) if schedule else 0)  # 1: the first rate
    n_predict = len(rec.payloads("on_predict_batch_end"))
    assert n_predict == math.ceil((n + n_val) / batch_size)
    for name, payload in rec.records:
        assert payload.source is trainer, name
    for payload in rec.payloads("on_train_batch_start"):
        assert payload.params == {
            "verbose": 0, "epochs": epochs, "steps": steps, "batch_size": batch_size,
        }  # fmt: skip


def test_one_run_emits_every_one_of_the_25_moments(tmp_path: Path) -> None:
    x, y = blobs(50)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = NumpyTrainer(bus=bus, lr_schedule=lambda e: 0.01 * 0.5**e)
    trainer.fit(x, y, epochs=2, batch_size=16, validation_data=(x, y), checkpoint=tmp_path / "c")
    trainer.predict(x)
    trainer.export(tmp_path / "m.npz")
    assert set(rec.names) == set(ALL)
    assert_canonical_order(rec.names, emitted=ALL)
    assert rec.names[-2:] == ["on_export_start", "on_export_end"]


def test_step_events_bracket_the_weight_update() -> None:
    """optimizer_step sees updated weights and this step's gradients; zero-grad precedes it."""
    x, y = blobs(20)
    bus = EventBus(check_order=True)
    trainer = NumpyTrainer(bus=bus, hidden=(4,), optimizer="sgd", lr=0.5)
    seen: dict[str, Any] = {}

    @bus.on(events.on_before_zero_grad)
    def before(p: Any) -> None:
        seen["before"] = trainer.get_weights()
        seen["step"] = p.step

    @bus.on(events.optimizer_step)
    def after(p: Any) -> None:
        assert p.step == seen["step"]
        grads = trainer.gradients
        assert grads is not None
        # plain SGD: new = old - lr * grad, with this step's gradients
        for old, new, grad in zip(seen["before"], trainer.get_weights(), grads, strict=True):
            np.testing.assert_allclose(new, old - 0.5 * grad, rtol=1e-5, atol=1e-6)
        seen["checked"] = seen.get("checked", 0) + 1

    trainer.fit(x, y, epochs=2, batch_size=8, shuffle=False)
    assert seen["checked"] == 2 * 3
    assert trainer.iterations == 6


# -- learning -----------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer, lr", [("adam", 0.01), ("sgd", 0.1)])
def test_it_learns_a_separable_problem(optimizer: str, lr: float) -> None:
    x, y = blobs(400, dim=6, classes=4, seed=1)
    x_test, y_test = blobs(200, dim=6, classes=4, seed=2)
    trainer = NumpyTrainer(hidden=(16,), lr=lr, optimizer=optimizer, momentum=0.9, seed=3)
    trainer.build(6, 4)
    before = float(np.mean(trainer.predict(x_test).argmax(axis=1) == y_test))
    history = trainer.fit(x, y, epochs=8, batch_size=32, validation_data=(x_test, y_test))
    evaluated = trainer.evaluate(x_test, y_test)
    assert isinstance(evaluated, list)
    loss, trainer_accuracy = evaluated
    predicted = trainer.predict(x_test).argmax(axis=1)
    assert float(np.mean(predicted == y_test)) > 0.9
    assert trainer_accuracy > 0.9
    assert before < 0.9  # untrained, it does not already know the answer
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] == pytest.approx(trainer_accuracy)
    assert history["val_loss"][-1] == pytest.approx(loss)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 8 for v in history.values())


def test_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(0)
    sizes = [3, 5, 4, 3]
    weights = mlp.init_weights(sizes, rng, "float64")
    x = rng.normal(size=(7, 3))
    y = rng.integers(0, 3, size=7)
    _, _, grads = mlp.loss_and_grads(weights, x, y)
    eps = 1e-6
    for w, g in zip(weights, grads, strict=True):
        numeric = np.zeros_like(w)
        for index in np.ndindex(w.shape):
            keep = w[index]
            w[index] = keep + eps
            up = mlp.loss_and_correct(weights, x, y)[0]
            w[index] = keep - eps
            down = mlp.loss_and_correct(weights, x, y)[0]
            w[index] = keep
            numeric[index] = (up - down) / (2 * eps)
        np.testing.assert_allclose(g, numeric, rtol=1e-4, atol=1e-7)


def test_same_seed_same_run_different_seed_different_run() -> None:
    x, y = blobs(60)

    def run(seed: int) -> list[float]:
        history = NumpyTrainer(seed=seed, hidden=(6,)).fit(x, y, epochs=2, batch_size=7)
        return list(history["loss"])

    assert run(5) == run(5)
    assert run(5) != run(6)


# -- logs ---------------------------------------------------------------------------------------


@FAST
@given(n=st.integers(1, 30), batch_size=st.integers(1, 12), n_val=st.integers(1, 12))
def test_batch_logs_are_running_means_over_the_epoch(n: int, batch_size: int, n_val: int) -> None:
    x, y = blobs(n + n_val, seed=n)
    xv, yv = x[n:], y[n:]
    x, y = x[:n], y[:n]
    bus = EventBus(check_order=True)
    trainer = NumpyTrainer(bus=bus, hidden=(5,), n_classes=3, dtype="float64", lr=0.05)
    expected: list[tuple[float, float]] = []
    sums = {"loss": 0.0, "correct": 0.0, "seen": 0}

    @bus.on(events.on_train_epoch_start)
    def reset(_: Any) -> None:
        sums.update(loss=0.0, correct=0.0, seen=0)

    @bus.on(events.on_before_zero_grad)
    def measure(p: Any) -> None:  # before the update: the loss the batch is trained on
        rows = slice(p.batch * batch_size, (p.batch + 1) * batch_size)
        loss, accuracy = reference_loss(trainer.get_weights(), x[rows], y[rows])
        k = len(y[rows])
        sums["loss"] += loss * k
        sums["correct"] += accuracy * k
        sums["seen"] += k
        expected.append((sums["loss"] / sums["seen"], sums["correct"] / sums["seen"]))

    val_expected: list[tuple[float, float]] = []

    @bus.on(events.on_val_start)
    def val_reference(_: Any) -> None:
        val_expected.append(reference_loss(trainer.get_weights(), xv, yv))

    rec = Recorder(bus)
    trainer.fit(x, y, epochs=2, batch_size=batch_size, shuffle=False, validation_data=(xv, yv))
    got = [(p.logs["loss"], p.logs["accuracy"]) for p in rec.payloads("on_train_batch_end")]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    for begin in rec.payloads("on_train_batch_start"):
        assert begin.logs == {}
    epoch_ends = rec.payloads("on_fit_epoch_end")
    steps = math.ceil(n / batch_size)
    for epoch, payload in enumerate(epoch_ends):
        last = got[(epoch + 1) * steps - 1]
        assert payload.logs["loss"] == last[0] and payload.logs["accuracy"] == last[1]
        assert rec.payloads("on_train_epoch_end")[epoch].logs == {
            "loss": last[0], "accuracy": last[1]
        }  # fmt: skip
        val = rec.payloads("on_val_end")[epoch].logs
        np.testing.assert_allclose(
            [val["loss"], val["accuracy"]], val_expected[epoch], rtol=1e-9, atol=1e-12
        )
        assert payload.logs["val_loss"] == val["loss"]
        assert payload.logs["val_accuracy"] == val["accuracy"]
        last_val_batch = [p for p in rec.payloads("on_val_batch_end") if p.epoch == epoch][-1]
        assert last_val_batch.logs == val
    assert rec.payloads("on_train_end")[0].logs == epoch_ends[-1].logs
    assert trainer.history == {k: [p.logs[k] for p in epoch_ends] for k in epoch_ends[0].logs}


def test_evaluate_emits_the_val_sequence_alone_and_matches_a_reference() -> None:
    x, y = blobs(37)
    bus = EventBus(check_order=True)
    trainer = NumpyTrainer(bus=bus, dtype="float64")
    trainer.fit(x, y, epochs=1)
    rec = Recorder(bus)
    result = trainer.evaluate(x, y, batch_size=10, return_dict=True)
    assert isinstance(result, dict)
    assert rec.names == ["on_val_start", *["on_val_batch_start", "on_val_batch_end"] * 4,
                         "on_val_end"]  # fmt: skip
    np.testing.assert_allclose(
        [result["loss"], result["accuracy"]], reference_loss(trainer.get_weights(), x, y)
    )
    assert rec.payloads("on_val_end")[0].logs == result
    assert rec.payloads("on_val_end")[0].epoch is None


# -- stopping -----------------------------------------------------------------------------------


@FAST
@given(stop_after=st.integers(1, 12), batch_size=st.integers(1, 10), use_attribute=st.booleans())
def test_stop_request_after_n_batches(
    stop_after: int, batch_size: int, use_attribute: bool
) -> None:
    x, y = blobs(25)
    bus = EventBus(check_order=True)
    trainer = NumpyTrainer(bus=bus, hidden=(4,))
    rec = Recorder(bus)
    count = {"batches": 0}

    @bus.on(events.on_train_batch_end)
    def stopper(_: Any) -> None:
        count["batches"] += 1
        if count["batches"] == stop_after:
            if use_attribute:
                trainer.stop_training = True
            else:
                bus.request_stop("enough")

    epochs = 4
    steps = math.ceil(25 / batch_size)
    trainer.fit(x, y, epochs=epochs, batch_size=batch_size, validation_data=(x, y))
    assert_canonical_order(rec.names, emitted=ALL)
    total = min(stop_after, epochs * steps)
    assert len(rec.payloads("on_train_batch_end")) == total
    assert trainer.iterations == total
    # the stopped epoch is closed (validation included), then the run ends
    assert len(rec.payloads("on_fit_epoch_end")) == math.ceil(total / steps)
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert rec.payloads("teardown")[0].error is None
    assert trainer.stop_training == (stop_after <= epochs * steps)


def test_stop_requested_at_epoch_end_stops_after_that_epoch() -> None:
    x, y = blobs(20)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    bus.subscribe(events.on_epoch_end, lambda p: bus.request_stop() if p.epoch == 1 else None)
    trainer = NumpyTrainer(bus=bus, hidden=(4,))
    history = trainer.fit(x, y, epochs=5, batch_size=5)
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0, 1]
    assert len(history["loss"]) == 2
    assert len(rec.payloads("on_train_batch_end")) == 8


def test_stop_before_training_and_the_next_fit_runs_again() -> None:
    x, y = blobs(20)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = NumpyTrainer(bus=bus, hidden=(4,))
    sub = bus.subscribe(events.on_train_start, lambda _: bus.request_stop("no"))
    trainer.fit(x, y, epochs=3)
    assert "on_train_epoch_start" not in rec.names
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    bus.disconnect(sub)
    rec.clear()
    trainer.fit(x, y, epochs=3)  # the bus forgot the old request at pretrain start
    assert len(rec.payloads("on_fit_epoch_end")) == 3
    assert trainer.stop_training is False


# -- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("event", ["on_train_batch_end", "optimizer_step", "on_val_batch_end",
                                   "on_pretrain_routine_start", "on_train_end"])  # fmt: skip
def test_subscriber_error_mid_run_still_emits_teardown(event: str) -> None:
    x, y = blobs(30)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    calls = {"n": 0}

    def boom(_: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3 or event in ("on_pretrain_routine_start", "on_train_end"):
            raise ValueError("boom")

    bus.subscribe(event, boom)
    trainer = NumpyTrainer(bus=bus, hidden=(4,))
    with pytest.raises(SubscriberError) as info:
        trainer.fit(x, y, epochs=3, batch_size=4, validation_data=(x, y))
    assert isinstance(info.value.__cause__, ValueError)
    assert_canonical_order(rec.names, emitted=ALL)
    assert rec.names[-1] == "teardown"
    assert rec.names.count("teardown") == 1
    assert "on_train_end" not in rec.names[:-2] or event == "on_train_end"
    teardown = rec.payloads("teardown")[0]
    assert teardown.exception is info.value
    assert teardown.error is not None and "ValueError: boom" in teardown.error


def test_non_subscriber_failures_reach_the_caller_unchanged() -> None:
    x, y = blobs(30)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    failure = RuntimeError("schedule broke")

    def schedule(epoch: int) -> float:
        if epoch == 2:
            raise failure
        return 0.01

    trainer = NumpyTrainer(bus=bus, hidden=(4,), lr_schedule=schedule)
    with pytest.raises(RuntimeError) as info:
        trainer.fit(x, y, epochs=4, batch_size=8)
    assert info.value is failure
    assert rec.payloads("teardown")[0].exception is failure
    assert rec.payloads("teardown")[0].epoch == 1
    assert_canonical_order(rec.names, emitted=ALL)


def test_a_fit_reports_its_own_epoch_never_the_previous_fits() -> None:
    """The second and third runs on one trainer run no epoch: their ends carry none."""
    x, y = blobs(24)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = NumpyTrainer(bus=bus, hidden=(4,))
    trainer.fit(x, y, epochs=2, batch_size=8)
    assert [p.epoch for p in rec.payloads("teardown")] == [1]

    rec.clear()
    trainer.fit(x, y, epochs=0)  # no epoch runs
    for name in ("on_train_end", "teardown"):
        (payload,) = rec.payloads(name)
        assert payload.epoch is None and payload.logs == {}, name

    rec.clear()
    with pytest.raises(ValueError, match="x has 3 features, the model takes 4"):
        trainer.fit(x[:, :3], y, epochs=2)  # fails in the pretrain routine
    assert rec.names == ["on_pretrain_routine_start", "teardown"]
    (teardown,) = rec.payloads("teardown")
    assert teardown.epoch is None and teardown.logs == {} and teardown.error


def test_keyboard_interrupt_is_announced_and_propagates() -> None:
    x, y = blobs(30)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)

    def interrupt(p: Any) -> None:
        if p.batch == 1:
            raise KeyboardInterrupt

    bus.subscribe(events.on_train_batch_begin, interrupt)
    with pytest.raises(KeyboardInterrupt):
        NumpyTrainer(bus=bus).fit(x, y, epochs=2, batch_size=8)
    assert rec.names[-1] == "teardown"
    assert rec.payloads("teardown")[0].error == "KeyboardInterrupt: "


def test_failing_teardown_subscriber_does_not_mask_the_original_error() -> None:
    x, y = blobs(10)
    bus = EventBus(check_order=True)
    original = OSError("disk full")

    def fail(_: Any) -> None:
        raise original

    def fail_teardown(_: Any) -> None:
        raise ValueError("teardown broke too")

    bus.subscribe(events.on_train_epoch_end, fail)
    bus.subscribe(events.teardown, fail_teardown)
    with pytest.raises(SubscriberError) as info:
        NumpyTrainer(bus=bus).fit(x, y, epochs=1)
    assert info.value.original is original
    assert any("teardown broke too" in note for note in info.value.__notes__)


def test_a_raising_teardown_after_success_raises() -> None:
    x, y = blobs(10)
    bus = EventBus(check_order=True)
    bus.subscribe(events.teardown, lambda _: 1 / 0)
    with pytest.raises(SubscriberError, match="teardown"):
        NumpyTrainer(bus=bus).fit(x, y, epochs=1)


# -- learning-rate changes ----------------------------------------------------------------------


def test_params_update_announces_every_lr_change_once() -> None:
    x, y = blobs(24)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    schedule = {0: 0.01, 1: 0.01, 2: 0.005, 3: 0.001}
    trainer = NumpyTrainer(bus=bus, lr=0.3, lr_schedule=schedule.__getitem__)

    @bus.on(events.on_train_epoch_start)
    def check_rate(p: Any) -> None:
        assert trainer.lr == schedule[p.epoch]

    trainer.fit(x, y, epochs=4, batch_size=8)
    updates = rec.payloads("on_params_update")
    # The run's first rate at its start; then between epochs, after the epoch's end: where
    # PyTorch's scheduler.step() goes.
    assert [(u.epoch, u.batch, u.hyperparams) for u in updates] == [
        (None, None, {"lr": 0.01}), (1, None, {"lr": 0.005}), (2, None, {"lr": 0.001})
    ]  # fmt: skip
    assert [u.step for u in updates] == [0, 5, 8]  # the epoch's last optimizer step
    first, *between = [i for i, name in enumerate(rec.names) if name == "on_params_update"]
    assert rec.names[first - 1 : first + 2] == [
        "on_train_start", "on_params_update", "on_train_epoch_start"]  # fmt: skip
    for at in between:
        assert rec.names[at - 1] == "on_fit_epoch_end"
        assert rec.names[at + 1] == "on_train_epoch_start"


def test_a_stopped_run_sets_no_rate_for_an_epoch_it_will_not_train() -> None:
    x, y = blobs(24)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = NumpyTrainer(bus=bus, lr_schedule=lambda e: 0.01 / (e + 1))
    bus.subscribe(events.on_epoch_end, lambda p: bus.request_stop() if p.epoch == 1 else None)
    trainer.fit(x, y, epochs=4, batch_size=8)
    assert [u.epoch for u in rec.payloads("on_params_update")] == [None, 0]  # None: at the start
    assert trainer.lr == 0.005


def test_lr_set_by_a_subscriber_is_announced_after_the_next_step_or_at_the_epoch_end() -> None:
    x, y = blobs(16)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = NumpyTrainer(bus=bus, lr=0.01)
    bus.subscribe(
        events.on_train_batch_begin,
        lambda p: setattr(trainer, "lr", trainer.lr / 2) if p.batch == 1 else None,
    )
    trainer.fit(x, y, epochs=2, batch_size=8)
    updates = rec.payloads("on_params_update")
    assert [(u.epoch, u.batch, u.step, u.hyperparams["lr"]) for u in updates] == [
        (None, None, 0, 0.01), (0, 1, 1, 0.005), (1, 1, 3, 0.0025)
    ]  # fmt: skip

    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = NumpyTrainer(bus=bus, lr=0.01)
    bus.subscribe(events.on_epoch_end, lambda p: setattr(trainer, "lr", trainer.lr / 2))
    trainer.fit(x, y, epochs=3, batch_size=8)
    updates = rec.payloads("on_params_update")
    assert [(u.epoch, u.batch, u.hyperparams["lr"]) for u in updates] == [
        (None, None, 0.01), (0, None, 0.005), (1, None, 0.0025), (2, None, 0.00125)
    ]  # fmt: skip
    assert_canonical_order(rec.names, emitted=ALL)


def test_bad_schedule_value_is_a_clear_error() -> None:
    x, y = blobs(16)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = NumpyTrainer(bus=bus, lr_schedule=lambda e: 0.01 if e < 1 else float("nan"))
    with pytest.raises(ValueError, match=r"lr_schedule\(1\) must be a positive finite number"):
        trainer.fit(x, y, epochs=2, batch_size=8)
    assert rec.payloads("teardown")[0].epoch == 0

    def fast(epoch: int) -> Any:
        return "fast"  # not a rate: refused at the first epoch

    with pytest.raises(ValueError, match=r"lr_schedule\(0\)"):
        NumpyTrainer(lr_schedule=fast).fit(x, y)


# -- prediction ---------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(n=st.integers(0, 30), batch_size=st.integers(1, 11))
def test_predict_outputs(n: int, batch_size: int) -> None:
    bus = EventBus(check_order=True)
    trainer = NumpyTrainer(bus=bus, hidden=(3,))
    trainer.build(4, 5)
    rec = Recorder(bus)
    x, _ = blobs(n)
    probs = trainer.predict(x, batch_size=batch_size)
    assert probs.shape == (n, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    classes = [p.outputs for p in rec.payloads("on_predict_postprocess_end")]
    outputs = [p.outputs for p in rec.payloads("on_predict_batch_end")]
    assert [len(o) for o in outputs] == [
        len(x[i : i + batch_size]) for i in range(0, n, batch_size)
    ]
    for cls, out in zip(classes, outputs, strict=True):
        np.testing.assert_array_equal(cls, out.argmax(axis=1))
    if n:
        np.testing.assert_array_equal(np.concatenate(outputs), probs)
    assert_canonical_order(rec.names, emitted=ALL)


# -- weights and artifacts ----------------------------------------------------------------------


def test_get_set_weights_round_trip() -> None:
    x, y = blobs(40)
    a = NumpyTrainer(hidden=(7, 5), seed=1)
    a.fit(x, y, epochs=2)
    weights = a.get_weights()
    assert [w.shape for w in weights] == [(4, 7), (7,), (7, 5), (5,), (5, 3), (3,)]
    weights[0][:] = 0  # a copy: the trainer is unaffected
    assert not np.all(a.get_weights()[0] == 0)
    b = NumpyTrainer(hidden=(7, 5), seed=2)
    assert b.get_weights() == []
    b.set_weights(a.get_weights())  # builds the unbuilt trainer from the shapes
    np.testing.assert_array_equal(b.predict(x), a.predict(x))
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("reset_at", [0, 2])
def test_set_weights_mid_epoch_training_continues_from_the_new_weights(reset_at: int) -> None:
    x, y = blobs(48)
    batch_size, lr = 8, 0.05
    bus = EventBus(check_order=True)
    trainer = NumpyTrainer(bus=bus, hidden=(6,), seed=0, optimizer="sgd", lr=lr)
    trainer.fit(x, y, epochs=1, batch_size=batch_size, shuffle=False)
    snapshot = trainer.get_weights()

    @bus.on(events.on_train_batch_end)
    def restore(payload: Any) -> None:
        if payload.epoch == 1 and payload.batch == reset_at:
            trainer.set_weights(snapshot)

    history = trainer.fit(
        x, y, epochs=2, batch_size=batch_size, shuffle=False, initial_epoch=1,
        validation_data=(x, y),
    )  # fmt: skip
    after = trainer.get_weights()
    assert not all(np.array_equal(a, s) for a, s in zip(after, snapshot, strict=True))
    # Plain SGD has no state: the rest of the epoch is a fit on the remaining batches.
    reference = NumpyTrainer(hidden=(6,), seed=5, optimizer="sgd", lr=lr)
    reference.set_weights(snapshot)
    reference.fit(x[(reset_at + 1) * batch_size :], y[(reset_at + 1) * batch_size :],
                  epochs=1, batch_size=batch_size, shuffle=False)  # fmt: skip
    for got, want in zip(after, reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    # Validation saw the weights training produced.
    validated = reference.evaluate(x, y, batch_size=batch_size, return_dict=True)
    assert isinstance(validated, dict) and history["val_loss"] == [validated["loss"]]


def test_set_weights_rejects_wrong_shapes() -> None:
    trainer = NumpyTrainer(hidden=(4,))
    trainer.build(3, 2)
    weights = trainer.get_weights()
    with pytest.raises(ValueError, match=r"array 2 has shape \(4, 3\), expected \(4, 2\)"):
        trainer.set_weights([*weights[:2], np.zeros((4, 3)), weights[3]])
    with pytest.raises(ValueError, match="expected 4 arrays"):
        trainer.set_weights(weights[:2])


@pytest.mark.parametrize("suffix", ["json", "npz"])
def test_export_and_load_round_trip(tmp_path: Path, suffix: str) -> None:
    x, y = blobs(40)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = NumpyTrainer(bus=bus, hidden=(6,))
    trainer.fit(x, y, epochs=2)
    path = tmp_path / f"model.{suffix}"
    assert trainer.export(path) == path
    start, end = rec.payloads("on_export_start")[0], rec.payloads("on_export_end")[0]
    assert start.format == suffix and start.path is None
    assert end.format == suffix and end.path == str(path)
    loaded = load(path)
    assert loaded.config == trainer.config
    np.testing.assert_array_equal(loaded.predict(x), trainer.predict(x))
    if suffix == "json":
        assert json.loads(path.read_text())["config"]["hidden"] == [6]


def test_save_emits_model_save_and_loads_back(tmp_path: Path) -> None:
    x, y = blobs(40)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = NumpyTrainer(bus=bus, hidden=(6,), lr=0.02)
    trainer.fit(x, y, epochs=2, batch_size=10)
    path = tmp_path / "checkpoint.weights"  # no .npz appended
    assert trainer.save(path) == path and path.is_file()
    saved = rec.payloads("on_model_save")[0]
    assert saved.path == str(path) and saved.epoch == 1
    assert saved.logs == rec.payloads("on_fit_epoch_end")[-1].logs
    loaded = load(path, bus=bus)
    assert loaded.bus is bus and loaded.iterations == 8 and loaded.lr == 0.02
    np.testing.assert_array_equal(loaded.predict(x), trainer.predict(x))
    loaded.fit(x, y, epochs=3, batch_size=10, initial_epoch=2)  # resumes training
    assert loaded.iterations == 12


def test_fit_checkpoint_is_written_each_epoch_before_epoch_end(tmp_path: Path) -> None:
    x, y = blobs(20)
    bus = EventBus(check_order=True)
    path = tmp_path / "last.npz"
    seen: list[Any] = []
    bus.subscribe(events.on_epoch_end, lambda p: seen.append(load(path).get_weights()))
    trainer = NumpyTrainer(bus=bus)
    trainer.fit(x, y, epochs=2, checkpoint=path)
    for saved, current in zip(seen[-1], trainer.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, current)


def test_loading_foreign_files_is_a_clear_error(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not an eventhooks"):
        load(other)
    npz = tmp_path / "plain.npz"
    np.savez(npz, a=np.zeros(3))
    with pytest.raises(ValueError, match="not an eventhooks"):
        load(npz)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"format": "eventhooks-numpy-mlp", "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        load(newer)
    with pytest.raises(FileNotFoundError, match="missing"):
        load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="'npz' or 'json'"):
        trainer = NumpyTrainer()
        trainer.build(2, 2)
        trainer.export(tmp_path / "model.onnx")


@pytest.mark.parametrize("optimizer, momentum", [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0)])
def test_a_checkpoint_resumes_with_its_own_optimizer(
    tmp_path: Path, optimizer: str, momentum: float
) -> None:
    x, y = blobs(40)
    kw: dict[str, Any] = {"hidden": (6,), "lr": 0.05, "optimizer": optimizer, "momentum": momentum}
    trainer = NumpyTrainer(**kw)
    trainer.fit(x, y, epochs=2, batch_size=10, shuffle=False)
    trainer.save(tmp_path / "c.npz")
    loaded = load(tmp_path / "c.npz")
    assert (loaded.optimizer_name, loaded.momentum, loaded.lr) == (optimizer, momentum, 0.05)
    if momentum == 0.0 and optimizer == "sgd":  # no optimizer state: resuming is exact
        loaded.fit(x, y, epochs=4, batch_size=10, shuffle=False, initial_epoch=2)
        straight = NumpyTrainer(**kw)
        straight.fit(x, y, epochs=4, batch_size=10, shuffle=False)
        for a, b in zip(loaded.get_weights(), straight.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


def _damaged(tmp_path: Path, how: str) -> Path:
    """A checkpoint or export of a small trainer, damaged in one way."""
    trainer = NumpyTrainer(hidden=(4,))
    trainer.build(3, 2)
    if how.startswith("json"):
        path = trainer.export(tmp_path / "m.json")
        doc = json.loads(path.read_text())
        if how == "json weight of a wrong shape":
            doc["weights"][0]["shape"] = [2, 8]
        elif how == "json without hidden":
            del doc["config"]["hidden"]
        elif how == "json classes disagree with the weights":
            doc["config"]["n_classes"] = 5
        path.write_text(json.dumps(doc))
        return path
    path = trainer.save(tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: np.array(data[name]) for name in data.files}
    header = json.loads(str(arrays["eventhooks"]))
    if how == "truncated npz":
        path.write_bytes(path.read_bytes()[:60])
        return path
    if how == "npz with an extra array":
        arrays["w9"] = np.zeros(2)
    elif how == "npz without a weight":
        del arrays["w1"]
    elif how == "npz state is a list":
        header["state"] = [1, 2]
    elif how == "npz iterations is a string":
        header["state"]["iterations"] = "abc"
    elif how == "npz epoch is a string":
        header["state"]["epoch"] = "abc"
    arrays["eventhooks"] = np.array(json.dumps(header))
    with path.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize("how", [
    "truncated npz", "npz with an extra array", "npz without a weight", "npz state is a list",
    "npz iterations is a string", "npz epoch is a string", "json weight of a wrong shape",
    "json without hidden", "json classes disagree with the weights",
])  # fmt: skip
def test_a_damaged_artifact_is_a_value_error_naming_the_file(tmp_path: Path, how: str) -> None:
    path = _damaged(tmp_path, how)
    with pytest.raises(ValueError) as info:
        load(path)
    assert str(info.value).startswith(repr(str(path)))


# -- inputs, defaults, hot path -----------------------------------------------------------------

X5, Y5 = np.zeros((5, 2)), np.zeros(5, dtype=int)
VAL_X3 = (np.zeros((2, 3)), np.zeros(2, dtype=int))


def fit_refused(
    trainer: NumpyTrainer,
    rec: Recorder,
    error: type[Exception],
    message: str,
    x: Any,
    y: Any,
    **kwargs: Any,
) -> Any:
    """Fit with a bad argument: the run opens, the check fails, one teardown carries the error."""
    with pytest.raises(error, match=message) as info:
        trainer.fit(x, y, **kwargs)
    assert type(info.value) is error  # unchanged: not wrapped, not a subclass
    assert rec.names == ["on_pretrain_routine_start", "teardown"]
    assert_canonical_order(rec.names, emitted=ALL)
    (teardown,) = rec.payloads("teardown")
    assert teardown.exception is info.value
    assert teardown.error == f"{error.__name__}: {info.value}"
    assert teardown.epoch is None and teardown.logs == {}
    opened = rec.payloads("on_pretrain_routine_start")[0]
    assert opened.params["steps"] is None  # the run opened before its data was checked
    return info.value


@pytest.mark.parametrize(
    "x, y, kwargs, error, message",
    [
        (np.zeros(5), np.zeros(5), {}, ValueError, "x must be 2-D"),
        (np.full((5, 2), "a"), Y5, {}, ValueError, "x must be real numbers"),
        (X5, np.zeros(4), {}, ValueError, "x has 5 samples but y has 4"),
        (X5, np.full(5, 0.5), {}, ValueError, "y must be integer class labels"),
        (X5, np.array([0.0, 1.0, np.inf, 0.0, 1.0]), {}, ValueError,
         "y must be integer class labels"),
        (X5, np.eye(5), {}, ValueError, "one-hot"),
        (X5, -np.ones(5, dtype=int), {}, ValueError, "negative label"),
        (np.zeros((0, 2)), np.zeros(0, dtype=int), {}, ValueError, "x is empty"),
        (X5, Y5, {"batch_size": 0}, ValueError, "batch_size must be an integer >= 1, got 0"),
        (X5, Y5, {"batch_size": 2.5}, ValueError, "batch_size must be an integer"),
        (X5, Y5, {"batch_size": True}, ValueError, "batch_size must be an integer"),
        (X5, Y5, {"epochs": -1}, ValueError, "epochs must be an integer >= 0, got -1"),
        (X5, Y5, {"epochs": "3"}, ValueError, "epochs must be an integer >= 0, got '3'"),
        (X5, Y5, {"epochs": 1.5}, ValueError, "epochs must be an integer"),
        (X5, Y5, {"initial_epoch": -1}, ValueError, "initial_epoch must be an integer >= 0"),
        (X5, Y5, {"validation_batch_size": -2}, ValueError, "validation_batch_size"),
        (X5, Y5, {"verbose": 3}, ValueError, "verbose must be 0, 1, 2 or 'auto'"),
        (X5, Y5, {"validation_data": (1,)}, ValueError, "pair"),
        (X5, Y5, {"validation_data": {"x": X5, "y": Y5}}, ValueError, "pair"),
        (X5, Y5, {"validation_data": VAL_X3}, ValueError, "x_val has 3 features but x has 2"),
        (X5, Y5, {"validation_data": (np.zeros(2), Y5[:2])}, ValueError, "x_val must be 2-D"),
        (X5, Y5, {"validation_data": (X5, Y5[:3])}, ValueError,
         "x_val has 5 samples but y_val has 3"),
        (X5, Y5, {"validation_data": (X5[:0], Y5[:0])}, ValueError, "validation_data is empty"),
        (X5, Y5, {"checkpoint": 123}, TypeError,
         "fit: checkpoint must be a str or os.PathLike, got 123"),
        (X5, Y5, {"checkpoint": Path("no-such-dir") / "c.npz"}, FileNotFoundError,
         "fit: checkpoint: the directory does not exist: 'no-such-dir/c.npz'"),
    ],
)  # fmt: skip
def test_a_bad_fit_argument_fails_inside_the_run_with_one_teardown(
    x: Any, y: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = NumpyTrainer(bus=bus, hidden=(3,))
    fit_refused(trainer, rec, error, message, x, y, **{"epochs": 2, **kwargs})
    assert not trainer.built
    rec.clear()
    trainer.fit(X5, Y5)  # the trainer is not left half-way: the next fit runs whole
    assert rec.names[0] == "on_pretrain_routine_start" and rec.names[-1] == "teardown"
    assert rec.payloads("teardown")[0].error is None
    assert rec.payloads("on_pretrain_routine_end")[0].params == {
        "verbose": 0, "epochs": 1, "steps": 1, "batch_size": 32,
    }  # fmt: skip


def test_a_bad_checkpoint_fails_before_any_epoch_is_trained(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = NumpyTrainer(bus=bus, hidden=(3,))
    fit_refused(
        trainer,
        rec,
        IsADirectoryError,
        "fit: checkpoint: is a directory",
        X5,
        Y5,
        checkpoint=tmp_path,
    )
    assert trainer.iterations == 0


@FAST
@given(
    n=st.integers(1, 12),
    dim=st.integers(1, 6),
    wrong=st.sampled_from(["y", "x_val features", "y_val"]),
    off=st.integers(1, 5),
    built=st.booleans(),
)
def test_mismatched_shapes_fail_inside_the_run(
    n: int, dim: int, wrong: str, off: int, built: bool
) -> None:
    bus = EventBus(check_order=True)
    trainer = NumpyTrainer(bus=bus, hidden=(3,), n_classes=2)
    if built:
        trainer.build(dim, 2)
    before = trainer.get_weights()
    rec = Recorder(bus)
    x, y = np.zeros((n, dim)), np.zeros(n, dtype=int)
    n_val = n + 1
    x_val, y_val = np.zeros((n_val, dim)), np.zeros(n_val, dtype=int)
    if wrong == "y":
        y, message = np.zeros(n + off, dtype=int), f"x has {n} samples but y has {n + off}"
    elif wrong == "x_val features":
        x_val = np.zeros((n_val, dim + off))
        message = f"fit: x_val has {dim + off} features but x has {dim}"
    else:
        y_val = np.zeros(n_val + off, dtype=int)
        message = f"x_val has {n_val} samples but y_val has {n_val + off}"
    exc = fit_refused(trainer, rec, ValueError, message, x, y, validation_data=(x_val, y_val))
    assert str(exc) == message
    assert trainer.built == built and trainer.iterations == 0
    for old, new in zip(before, trainer.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("where", ["y", "y_val"])
def test_labels_beyond_n_classes_fail_inside_the_run_and_build_nothing(where: str) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = NumpyTrainer(bus=bus, n_classes=2)
    y = np.array([0, 1, 2, 1] if where == "y" else [0, 1, 1, 1])
    val = (X5[:2], np.array([0, 2])) if where == "y_val" else None
    message = "label 2 is out of range for n_classes=2"
    fit_refused(trainer, rec, ValueError, message, X5[:4], y, validation_data=val)
    assert not trainer.built  # a refused fit does not build the model from data it refused


@pytest.mark.parametrize("how", ["missing directory", "a directory", "not a path"])
def test_a_refused_export_emits_nothing(tmp_path: Path, how: str) -> None:
    """A standalone EXPORT has no teardown: a bad path must fail before on_export_start."""
    bus = EventBus(check_order=True)
    trainer = NumpyTrainer(bus=bus, hidden=(3,))
    trainer.build(2, 2)
    rec = Recorder(bus)
    path: Any = {"missing directory": tmp_path / "no" / "m.json", "a directory": tmp_path,
                 "not a path": 123}[how]  # fmt: skip
    error = {"missing directory": FileNotFoundError, "a directory": IsADirectoryError,
             "not a path": TypeError}[how]  # fmt: skip
    with pytest.raises(error, match="export: "):
        trainer.export(path, format="json")
    assert rec.names == []
    assert list(tmp_path.iterdir()) == []


def test_predict_before_building_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="no weights yet"):
        NumpyTrainer().predict(np.zeros((2, 2)))


def test_works_without_a_bus() -> None:
    x, y = blobs(20)
    trainer = NumpyTrainer()
    assert isinstance(trainer.bus, EventBus)
    history = trainer.fit(x, y, epochs=2)
    assert len(history["loss"]) == 2


def test_per_batch_events_are_skipped_when_nobody_listens() -> None:
    x, y = blobs(40)
    bus = CountingBus()
    NumpyTrainer(bus=bus).fit(x, y, epochs=2, batch_size=4, validation_data=(x, y))
    per_batch = {"on_train_batch_start", "on_before_zero_grad", "optimizer_step",
                 "on_train_batch_end", "on_val_batch_start", "on_val_batch_end"}  # fmt: skip
    assert not per_batch & set(bus.emitted)
    assert bus.emitted == ["teardown"]  # nobody listens: of the run, only its teardown call
    bus.emitted.clear()
    bus.subscribe(events.optimizer_step, lambda _: None)
    NumpyTrainer(bus=bus).fit(x, y, epochs=1, batch_size=4)
    assert bus.emitted.count("optimizer_step") == 10
    assert "on_train_batch_end" not in bus.emitted


def test_batch_logs_are_built_only_for_the_batches_a_subscriber_gets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An every=3 subscriber: the trainer computes logs for batches 2, 5, 8, and epoch ends."""
    from eventhooks.adapters import numpy as numpy_adapter

    built = {"n": 0}
    original = numpy_adapter._RunningMean.logs

    def counting(self: Any) -> dict[str, float]:
        built["n"] += 1
        return original(self)

    monkeypatch.setattr(numpy_adapter._RunningMean, "logs", counting)
    x, y = blobs(36)
    bus = EventBus()
    got: list[tuple[int, dict[str, float]]] = []
    bus.subscribe(events.on_train_batch_end, lambda p: got.append((p.batch, p.logs)), every=3)
    bus.subscribe(events.on_val_batch_end, lambda p: None, every=2)
    NumpyTrainer(bus=bus, hidden=(4,)).fit(
        x, y, epochs=2, batch_size=4, shuffle=False, validation_data=(x[:8], y[:8])
    )
    assert [b for b, _ in got] == [2, 5, 8] * 2
    assert all(set(logs) == {"loss", "accuracy"} for _, logs in got)
    # per epoch: 3 heard training batches, 1 heard validation batch (of 2), the epoch's and
    # the validation's logs
    assert built["n"] == 2 * (3 + 1 + 2)


def test_class_subscriber_under_keras_names() -> None:
    x, y = blobs(20)
    bus = EventBus(check_order=True)

    class Epochs(Callback):
        def __init__(self) -> None:
            self.seen: list[tuple[int, float]] = []

        def on_epoch_end(self, payload: Any) -> None:
            self.seen.append((payload.epoch, payload.logs["val_accuracy"]))

    cb = Epochs()
    bus.attach(cb)
    history = NumpyTrainer(bus=bus).fit(x, y, epochs=3, validation_data=(x, y))
    assert cb.seen == list(enumerate(history["val_accuracy"]))
