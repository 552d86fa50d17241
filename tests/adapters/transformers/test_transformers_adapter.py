"""The Hugging Face Trainer adapter with real transformers, offline, on CPU (issue #13)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _hf_support import Boom, Data, Tiny, make_trainer
from _network import NetworkGuard
from transformers import Trainer

from eventhooks import Callback, EventBus, SubscriberError
from eventhooks.adapters.transformers import TransformersCallback, train
from eventhooks.callbacks import CSVLogger, EarlyStopping, EventLog, History
from eventhooks.testing import Recorder, assert_canonical_order, check_adapter


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    """No network, and nothing written into the working directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with NetworkGuard().active() as guard:
        yield guard
    assert not guard.attempts
    assert list(cwd.iterdir()) == []


def epoch_block(names: list[str]) -> list[str]:
    start = names.index("on_train_epoch_start")
    return names[start : names.index("on_fit_epoch_end", start) + 1]


def test_trace_is_canonical_with_accumulation_evaluation_and_saving(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    saved: list[tuple[str, bool]] = []
    bus.subscribe("on_model_save", lambda p: saved.append((str(p.path), Path(p.path).is_dir())))
    keras_epochs: list[int] = []
    bus.subscribe("on_epoch_end", lambda p: keras_epochs.append(p.epoch))  # a Keras name
    trainer = make_trainer(tmp_path / "out", bus)
    trainer.train()
    names = rec.names
    assert_canonical_order(names)
    assert names[:4] == ["on_pretrain_routine_start", "on_pretrain_routine_end",
                         "on_train_start", "on_params_update"]  # fmt: skip
    assert names[-2:] == ["on_train_end", "teardown"]
    # 20 examples, batches of 4, accumulation 2: 5 micro-batches, optimizer steps after 2, 2, 1
    block = epoch_block(names)
    assert block[:8] == [
        "on_train_epoch_start",
        "on_train_batch_start", "on_train_batch_end",  # accumulated: no step
        "on_train_batch_start", "optimizer_step", "on_before_zero_grad", "on_params_update",
        "on_train_batch_end",
    ]  # fmt: skip
    assert block[-8:] == [
        "on_train_epoch_end", "on_val_start", "on_val_batch_start", "on_val_batch_end",
        "on_val_batch_start", "on_val_batch_end", "on_val_end", "on_fit_epoch_end",
    ]  # fmt: skip
    assert [p.batch for p in rec.payloads("on_train_batch_start")] == [0, 1, 2, 3, 4] * 2
    assert [p.step for p in rec.payloads("optimizer_step")] == [0, 1, 2, 3, 4, 5]
    assert [p.epoch for p in rec.payloads("optimizer_step")] == [0, 0, 0, 1, 1, 1]
    ends = rec.payloads("on_fit_epoch_end")
    assert [p.epoch for p in ends] == keras_epochs == [0, 1]
    for p in ends:
        assert isinstance(p.logs["loss"], float) and isinstance(p.logs["val_loss"], float)
        assert {"learning_rate", "grad_norm"} <= set(p.logs)
        assert not any(k.startswith("eval_") or k == "epoch" for k in p.logs)
        assert p.source is trainer
    # on_val_end: the evaluation's own names (``loss``), as Keras' on_test_end
    assert [p.logs["loss"] for p in rec.payloads("on_val_end")] == [
        p.logs["val_loss"] for p in ends
    ]
    out = tmp_path / "out"
    assert saved == [(str(out / "checkpoint-3"), True), (str(out / "checkpoint-6"), True)]
    assert names.index("on_model_save") > names.index("on_fit_epoch_end")
    lrs = [p.hyperparams["learning_rate"] for p in rec.payloads("on_params_update")]
    assert lrs[0] == pytest.approx(0.1) and lrs == sorted(lrs, reverse=True)  # linear decay
    params = ends[0].params or {}
    assert params["num_train_epochs"] == 2 and params["max_steps"] == 6
    assert params["gradient_accumulation_steps"] == 2
    assert rec.payloads("teardown")[0].error is None
    assert rec.payloads("on_train_end")[0].logs["train_loss"] > 0


def test_check_adapter_passes(tmp_path: Path) -> None:
    runs = iter(range(100))

    def run(bus: EventBus) -> object:
        return train(make_trainer(tmp_path / f"run{next(runs)}", bus), bus)

    seen = check_adapter(run)
    assert "optimizer_step" in seen.emitted and "on_val_end" in seen.emitted


def test_add_callback_and_logging_each_epoch(tmp_path: Path) -> None:
    """Added after construction, with HF's own per-epoch logging: the same epochs and logs."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = make_trainer(tmp_path, logging_strategy="epoch", save_strategy="no")
    trainer.add_callback(TransformersCallback(bus))
    trainer.train()
    ends = rec.payloads("on_fit_epoch_end")
    assert [p.epoch for p in ends] == [0, 1]
    assert all("loss" in p.logs and "val_loss" in p.logs for p in ends)
    assert ends[0].source is trainer
    assert "on_model_save" not in rec.names


def test_batch_logs_carry_the_logged_loss(tmp_path: Path) -> None:
    bus = EventBus()
    logs: list[dict[str, Any]] = []
    bus.subscribe("on_train_batch_end", lambda p: logs.append(dict(p.logs)))
    make_trainer(tmp_path, bus, logging_steps=1, eval_strategy="no", save_strategy="no").train()
    logged = [entry for entry in logs if entry]
    assert len(logs) == 10 and len(logged) == 6  # one log per optimizer step
    assert all(isinstance(e["loss"], float) and "learning_rate" in e for e in logged)


def test_history_csv_event_log(tmp_path: Path) -> None:
    bus = EventBus()
    history = History()
    bus.attach(history)
    bus.attach(CSVLogger(tmp_path / "log.csv"))
    bus.attach(EventLog(tmp_path / "events.jsonl"))
    train(make_trainer(tmp_path / "out", bus, epochs=3), bus)
    assert history.epoch == [0, 1, 2]
    assert len(history.history["loss"]) == 3 and len(history.history["val_loss"]) == 3
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(history.history["val_loss"])
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    events = [line.get("event") for line in lines]
    assert events.count("on_fit_epoch_end") == 3 and events[-1] == "teardown"


def test_early_stopping_stops_training(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    stopper = EarlyStopping(monitor="val_loss", patience=0, min_delta=1e9)
    bus.attach(stopper)
    trainer = make_trainer(tmp_path, bus, epochs=5)
    trainer.train()
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0, 1]
    assert stopper.stopped_epoch == 1
    assert trainer.state.global_step == 6
    assert rec.names[-2:] == ["on_train_end", "teardown"]


def test_request_stop_in_a_batch_stops_after_that_step(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    bus.subscribe("optimizer_step", lambda p: bus.request_stop("enough"))
    trainer = make_trainer(tmp_path, bus, epochs=3)
    trainer.train()
    assert trainer.state.global_step == 1
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0]
    assert rec.names[-2:] == ["on_train_end", "teardown"]


def test_subscriber_error_aborts_training_with_teardown(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)

    def broken(payload: Any) -> None:
        raise ValueError("subscriber broke")

    bus.subscribe("on_fit_epoch_end", broken)
    trainer = make_trainer(tmp_path, bus, epochs=3)
    with pytest.raises(SubscriberError) as info:
        trainer.train()  # plain train(): the callback emits the teardown itself
    assert "broken" in str(info.value) and "on_fit_epoch_end" in str(info.value)
    assert isinstance(info.value.original, ValueError)
    assert rec.names.count("teardown") == 1 and rec.names[-1] == "teardown"
    assert "subscriber broke" in (rec.payloads("teardown")[0].error or "")
    assert trainer.state.global_step == 3  # the first epoch only
    assert_canonical_order(rec.names)


@pytest.mark.parametrize("fail_at", [3, 12])
def test_forward_failure_ends_with_one_teardown_and_the_same_error(
    tmp_path: Path, fail_at: int
) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = make_trainer(tmp_path, bus, model=Tiny(fail_at=fail_at))
    with pytest.raises(Boom) as info:
        train(trainer, bus)
    assert rec.names.count("teardown") == 1 and rec.names[-1] == "teardown"
    down = rec.payloads("teardown")[0]
    assert down.exception is info.value
    assert "on_train_end" not in rec.names
    assert_canonical_order(rec.names)


def test_plain_train_failure_is_silent_until_abort(tmp_path: Path) -> None:
    """HF calls nothing on failure: without train(), the callback's abort() ends the run."""
    bus = EventBus()
    rec = Recorder(bus)
    callback = TransformersCallback(bus)
    trainer = make_trainer(tmp_path, model=Tiny(fail_at=2))
    trainer.add_callback(callback)
    with pytest.raises(Boom) as info:
        trainer.train()
    assert "teardown" not in rec.names
    callback.abort(info.value)
    callback.abort(info.value)
    assert rec.names.count("teardown") == 1


def test_failure_before_training_begins_still_tears_down(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = make_trainer(tmp_path, bus, train_data=False)
    with pytest.raises(ValueError) as info:
        train(trainer, bus)
    assert rec.names == ["teardown"]
    assert rec.payloads("teardown")[0].exception is info.value
    assert rec.payloads("teardown")[0].source is trainer


def test_train_reuses_the_callback_and_passes_train_kwargs(tmp_path: Path) -> None:
    bus = EventBus()
    rec = Recorder(bus)
    trainer = make_trainer(tmp_path, bus)
    result = train(trainer, bus, ignore_keys_for_eval=[])
    assert result.global_step == 6
    assert sum(isinstance(c, TransformersCallback) for c in trainer.callback_handler.callbacks) == 1
    assert rec.names.count("teardown") == 1


def test_evaluate_and_predict_are_sessions_of_their_own(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer: Trainer = make_trainer(tmp_path, bus, save_strategy="no")
    trainer.train()
    rec.clear()
    metrics = trainer.evaluate()
    trainer.predict(Data(6, seed=2))
    assert rec.names == [
        "on_val_start", "on_val_batch_start", "on_val_batch_end", "on_val_batch_start",
        "on_val_batch_end", "on_val_end",
        "on_predict_start", "on_predict_batch_start", "on_predict_batch_end",
        "on_predict_batch_start", "on_predict_batch_end", "on_predict_end",
    ]  # fmt: skip
    val_end = rec.payloads("on_val_end")[0]
    assert val_end.logs["loss"] == pytest.approx(metrics["eval_loss"])
    assert val_end.epoch is None and val_end.source is trainer
    assert rec.payloads("on_predict_start")[0].source is trainer


def test_importing_eventhooks_does_not_import_transformers() -> None:
    import subprocess
    import sys

    code = (
        "import sys, eventhooks, eventhooks.callbacks, eventhooks.testing, eventhooks.adapters;"
        "assert 'transformers' not in sys.modules and 'accelerate' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_resumed_run_starts_at_its_epoch_and_step(tmp_path: Path) -> None:
    first = EventBus()
    train(make_trainer(tmp_path, first, epochs=1), first)
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    train(make_trainer(tmp_path, bus, epochs=2), bus,
          resume_from_checkpoint=str(tmp_path / "checkpoint-3"))  # fmt: skip
    assert rec.payloads("on_train_start")[0].epoch == 1
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [1]
    assert [p.step for p in rec.payloads("optimizer_step")] == [3, 4, 5]
    assert [str(p.path) for p in rec.payloads("on_model_save")] == [
        str(tmp_path / "checkpoint-6")
    ]


def test_evaluations_inside_an_epoch_emit_nothing_but_join_its_logs(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = make_trainer(tmp_path, bus, eval_strategy="steps", eval_steps=2,
                           save_strategy="steps", save_steps=2, eval_on_start=True)  # fmt: skip
    trainer.train()
    assert "on_val_start" not in rec.names
    ends = rec.payloads("on_fit_epoch_end")
    assert [p.epoch for p in ends] == [0, 1]
    assert all("val_loss" in p.logs and "loss" in p.logs for p in ends)
    saves = rec.payloads("on_model_save")
    assert [Path(p.path).name for p in saves] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert [p.epoch for p in saves] == [0, 1, 1]
    assert_canonical_order(rec.names)


def test_max_steps_ends_inside_an_epoch(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    make_trainer(tmp_path, bus, epochs=3, max_steps=4).train()
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0, 1]
    assert len(rec.payloads("optimizer_step")) == 4
    assert rec.payloads("on_fit_epoch_end")[0].params["max_steps"] == 4
    assert rec.names[-2:] == ["on_train_end", "teardown"]


def test_an_evaluate_that_failed_does_not_swallow_the_next(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = Tiny()
    trainer = make_trainer(tmp_path, bus, model=model)
    trainer.evaluate()
    model.fail_at = model.calls + 2  # the second batch of the next evaluation fails
    with pytest.raises(Boom):
        trainer.evaluate()
    model.fail_at = None
    trainer.evaluate()
    assert rec.names.count("on_val_start") == 3 and rec.names.count("on_val_end") == 2
    assert rec.names[-6:] == [
        "on_val_start", "on_val_batch_start", "on_val_batch_end", "on_val_batch_start",
        "on_val_batch_end", "on_val_end",
    ]  # fmt: skip
    assert [p.batch for p in rec.payloads("on_val_batch_end")][-2:] == [0, 1]
    start = rec.payloads("on_val_start")[0]
    assert start.params is None and start.rank == 0 and start.source is trainer


class KerasNames(Callback):
    """Connected under Keras names only: records (name, epoch, batch)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, Any]] = []

    def _note(self, name: str, payload: Any) -> None:
        self.seen.append((name, getattr(payload, "epoch", None), getattr(payload, "batch", None)))

    def on_train_begin(self, payload: Any) -> None:
        self._note("on_train_begin", payload)

    def on_epoch_begin(self, payload: Any) -> None:
        self._note("on_epoch_begin", payload)

    def on_train_batch_begin(self, payload: Any) -> None:
        self._note("on_train_batch_begin", payload)

    def on_test_begin(self, payload: Any) -> None:
        self._note("on_test_begin", payload)

    def on_test_end(self, payload: Any) -> None:
        self._note("on_test_end", payload)

    def on_epoch_end(self, payload: Any) -> None:
        self._note("on_epoch_end", payload)

    def on_predict_begin(self, payload: Any) -> None:
        self._note("on_predict_begin", payload)


def test_keras_names_hear_the_matching_moments(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    keras = KerasNames()
    bus.attach(keras)
    trainer = make_trainer(tmp_path, bus, save_strategy="no", n_train=8)
    trainer.train()
    trainer.predict(Data(4))
    assert keras.seen == [
        ("on_train_begin", None, None),
        ("on_epoch_begin", 0, None), ("on_train_batch_begin", 0, 0),
        ("on_train_batch_begin", 0, 1), ("on_test_begin", 0, None), ("on_test_end", 0, None),
        ("on_epoch_end", 0, None),
        ("on_epoch_begin", 1, None), ("on_train_batch_begin", 1, 0),
        ("on_train_batch_begin", 1, 1), ("on_test_begin", 1, None), ("on_test_end", 1, None),
        ("on_epoch_end", 1, None),
        ("on_predict_begin", None, None),
    ]  # fmt: skip


def test_stop_after_an_accumulated_micro_batch(tmp_path: Path) -> None:
    """A stop requested at a micro-batch without a step: HF never runs the next one."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    bus.subscribe("on_train_batch_end", lambda p: bus.request_stop("now"))
    trainer = make_trainer(tmp_path, bus, epochs=3)
    trainer.train()
    assert trainer.state.global_step == 0
    assert [p.batch for p in rec.payloads("on_train_batch_start")] == [0]
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0]
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert_canonical_order(rec.names)


# -- found by review (session 6): each failed before its fix --------------------------------------


def test_a_stop_asked_at_a_batch_end_stops_that_step(tmp_path: Path) -> None:
    """A step that does not log ends its batch at once (bug: its ``on_train_batch_end`` was
    held until the next step's start, so HF ran one more step, and with accumulation one more
    micro-batch)."""
    for accumulate in (1, 2):
        bus = EventBus(check_order=True)
        rec = Recorder(bus)
        bus.subscribe("on_train_batch_end", lambda p, bus=bus: bus.request_stop(),
                      once=accumulate)  # fmt: skip
        trainer = make_trainer(tmp_path / str(accumulate), bus, epochs=3,
                               gradient_accumulation_steps=accumulate)  # fmt: skip
        trainer.train()
        assert trainer.state.global_step == 1, accumulate
        assert len(rec.payloads("on_train_batch_start")) == accumulate
        assert_canonical_order(rec.names)


def test_tokens_seen_keep_the_training_logs(tmp_path: Path) -> None:
    """``include_num_input_tokens_seen`` times every log (``train_runtime``): bug, every
    training log was taken for HF's end-of-training summary and dropped."""
    class Counted(Tiny):
        main_input_name = "x"  # what HF counts as the input's tokens

    bus = EventBus(check_order=True)
    history = History()
    bus.attach(history)
    trainer = make_trainer(tmp_path, bus, model=Counted(), include_num_input_tokens_seen=True)
    trainer.train()
    assert len(history.history["loss"]) == 2
    assert history.history["num_input_tokens_seen"][-1] > 0


def test_a_plain_train_that_failed_is_torn_down_when_the_trainer_is_used_again(
    tmp_path: Path,
) -> None:
    """bug: its run stayed open, so ``evaluate()`` and ``predict()`` emitted nothing and the
    next ``train()`` failed with an ``OrderError`` (or, unchecked, kept an old stop request)."""
    from eventhooks.adapters.transformers import TrainNotEnded

    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = Tiny(fail_at=3)
    trainer = make_trainer(tmp_path, bus, model=model)
    with pytest.raises(Boom):
        trainer.train()
    assert "teardown" not in rec.names
    model.fail_at = None
    trainer.evaluate()
    assert rec.names.count("teardown") == 1 and rec.names.index("teardown") < rec.names.index(
        "on_val_start")  # fmt: skip
    assert isinstance(rec.payloads("teardown")[0].exception, TrainNotEnded)
    rec.clear()
    trainer.train()
    assert rec.names[0] == "on_pretrain_routine_start" and rec.names[-1] == "teardown"
    assert rec.payloads("teardown")[0].error is None
    assert_canonical_order(rec.names)


def test_an_iterable_dataset_with_max_steps_counts_its_epochs(tmp_path: Path) -> None:
    """HF's epochs are fractions here (bug: two epochs numbered 0); ``params`` hold no
    ``epochs`` of ``sys.maxsize`` nor a ``steps`` they cannot know."""

    class Stream(torch.utils.data.IterableDataset[dict[str, torch.Tensor]]):
        def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
            data = Data(20)
            return (data[i] for i in range(len(data)))

    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = make_trainer(tmp_path, bus, train_data=False, max_steps=8,
                           gradient_accumulation_steps=1)  # fmt: skip
    trainer.train_dataset = Stream()
    trainer.train()
    assert [p.epoch for p in rec.payloads("on_train_epoch_start")] == [0, 1]
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0, 1]
    params = rec.payloads("on_train_start")[0].params or {}
    assert "epochs" not in params and "steps" not in params and params["max_steps"] == 8
    assert_canonical_order(rec.names)


def test_several_eval_datasets_are_one_validation_of_the_epoch(tmp_path: Path) -> None:
    """bug: the first dataset's evaluation closed the epoch; the second's metrics were lost."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    trainer = make_trainer(tmp_path, bus)
    trainer.eval_dataset = {"a": Data(8, seed=1), "b": Data(12, seed=2)}
    trainer.train()
    assert_canonical_order(rec.names)
    for payload in rec.payloads("on_fit_epoch_end"):
        assert {"val_a_loss", "val_b_loss"} <= set(payload.logs)
    for payload in rec.payloads("on_val_end"):
        assert {"a_loss", "b_loss"} <= set(payload.logs)
    assert len(rec.payloads("on_val_batch_end")) == 2 * (2 + 3)  # 2 epochs, 8 + 12 examples


def test_params_steps_are_an_epochs_batches(tmp_path: Path) -> None:
    """As under the other adapters, so that a progress bar's epoch ends at 100% (bug: HF's
    ``max_steps``, optimizer steps over the whole run)."""
    bus = EventBus()
    rec = Recorder(bus)
    make_trainer(tmp_path, bus, epochs=3).train()
    params = rec.payloads("on_train_start")[0].params or {}
    per_epoch = len(rec.payloads("on_train_batch_end")) // 3
    assert params["steps"] == per_epoch == 5 and params["epochs"] == 3
    assert params["max_steps"] == 9  # 5 batches, accumulating 2: 3 steps an epoch


def test_a_plain_train_that_failed_in_its_epoch_evaluation_is_torn_down_too(
    tmp_path: Path,
) -> None:
    """bug (second review): failing in the epoch's evaluation, the run stayed open and the
    next ``evaluate()`` was reported as that dead run's validation, ``predict()``'s batches as
    its validation batches."""
    from eventhooks.adapters.transformers import TrainNotEnded

    for then in ("evaluate", "predict"):
        bus = EventBus(check_order=True)
        rec = Recorder(bus)
        model = Tiny(fail_at=6)  # 5 training batches, then the epoch's first evaluation batch
        trainer = make_trainer(tmp_path / then, bus, model=model)
        with pytest.raises(Boom):
            trainer.train()
        model.fail_at = None
        rec.clear()
        getattr(trainer, then)(Data(8, seed=1))
        assert rec.names[0] == "teardown", then
        assert isinstance(rec.payloads("teardown")[0].exception, TrainNotEnded)
        kind = "val" if then == "evaluate" else "predict"
        assert rec.names[1:] == [f"on_{kind}_start", *[f"on_{kind}_batch_start",
                                 f"on_{kind}_batch_end"] * 2, f"on_{kind}_end"]  # fmt: skip


def test_params_steps_are_no_more_than_max_steps_runs(tmp_path: Path) -> None:
    bus = EventBus()
    rec = Recorder(bus)
    make_trainer(tmp_path, bus, max_steps=2).train()  # 2 steps of 2 micro-batches
    params = rec.payloads("on_train_start")[0].params or {}
    assert params["steps"] == len(rec.payloads("on_train_batch_end")) == 4
