"""Built-in subscribers driven by events emitted on a bus directly (no trainer).

The same subscribers run under the real NumPy trainer in test_callbacks_numpy.py; here the
events are chosen by the test (and by hypothesis), so edge cases are reachable on purpose.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventhooks import EventBus, Payload, SubscriberError, eventlog, events
from eventhooks.callbacks import (
    CSVLogger,
    EarlyStopping,
    EventLog,
    History,
    LambdaCallback,
    ModelCheckpoint,
    ProgressBar,
    TerminateOnNaN,
)
from eventhooks.registry import Registry
from eventhooks.testing import Recorder

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def run_epochs(bus: EventBus, logs: list[dict[str, float]], source: Any = None) -> int:
    """Emit a run of epochs, stopping as an adapter would; returns how many epochs ran."""
    bus.emit("on_train_start", source=source)
    ran = 0
    for epoch, epoch_logs in enumerate(logs):
        bus.emit("on_train_epoch_start", epoch=epoch, source=source)
        bus.emit("on_fit_epoch_end", epoch=epoch, logs=epoch_logs, source=source)
        ran += 1
        if bus.stop_requested:
            break
    bus.emit("on_train_end", source=source, logs=logs[ran - 1] if ran else {})
    bus.emit("teardown", source=source)
    return ran


class WeightsHolder:
    """The least a trainer needs for restore_best_weights: get/set weights."""

    def __init__(self) -> None:
        self.weights = [0.0]

    def get_weights(self) -> list[float]:
        return list(self.weights)

    def set_weights(self, weights: list[float]) -> None:
        self.weights = list(weights)


# -- History ---------------------------------------------------------------------------------


def test_history_collects_epoch_logs_keras_shaped_and_resets_per_run() -> None:
    bus = EventBus()
    history = History()
    bus.attach(history)
    logs = [{"loss": 1.0, "val_loss": 2.0}, {"loss": 0.5, "val_loss": 1.5}]
    run_epochs(bus, logs)
    assert history.epoch == [0, 1]
    assert history.history == {"loss": [1.0, 0.5], "val_loss": [2.0, 1.5]}
    run_epochs(bus, logs[:1])
    assert history.epoch == [0]
    assert history.history == {"loss": [1.0], "val_loss": [2.0]}


def test_history_hears_the_keras_name_of_the_epoch_end() -> None:
    bus = EventBus()
    history = History()
    bus.attach(history)
    bus.emit("on_train_begin")
    bus.emit("on_epoch_end", epoch=3, logs={"accuracy": 0.25})
    assert history.epoch == [3] and history.history == {"accuracy": [0.25]}


# -- EarlyStopping ---------------------------------------------------------------------------


def reference_stop(values: list[float], patience: int, min_delta: float, mode: str) -> int | None:
    """Index-based model of early stopping: stop at the first epoch > 0 that is ``patience``
    or more epochs after the last accepted improvement (-1 when none yet)."""
    sign = 1.0 if mode == "min" else -1.0
    best: float | None = None
    last_improvement = -1
    for epoch, value in enumerate(values):
        if not math.isnan(value) and (best is None or sign * (value - best) < -min_delta):
            best, last_improvement = value, epoch
            continue
        if epoch > 0 and epoch - last_improvement >= patience:
            return epoch
    return None


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.one_of(finite, st.just(math.nan)), min_size=1, max_size=15),
    patience=st.integers(0, 5),
    min_delta=st.sampled_from([0.0, 0.1, 1.0]),
    mode=st.sampled_from(["min", "max"]),
)
def test_early_stopping_matches_a_model_of_patience(
    values: list[float], patience: int, min_delta: float, mode: Literal["min", "max"]
) -> None:
    bus = EventBus()
    early = EarlyStopping(monitor="score", patience=patience, min_delta=min_delta, mode=mode)
    bus.attach(early)
    ran = run_epochs(bus, [{"score": v} for v in values])
    expected = reference_stop(values, patience, min_delta, mode)
    assert early.stopped_epoch == expected
    assert ran == (len(values) if expected is None else expected + 1)
    if expected is not None:
        assert early.bus is bus and "score did not improve" in (bus.stop_reason or "")


def test_early_stopping_auto_mode_reads_the_metric_name() -> None:
    assert EarlyStopping(monitor="val_loss").mode == "min"
    assert EarlyStopping(monitor="val_accuracy").mode == "max"
    assert EarlyStopping(monitor="auc").mode == "max"
    with pytest.raises(ValueError, match=r"'weirdness'.*mode='min' or mode='max'"):
        EarlyStopping(monitor="weirdness")
    with pytest.raises(ValueError, match="mode must be"):
        EarlyStopping(mode="upwards")  # type: ignore[arg-type]


def test_early_stopping_warns_like_keras_when_the_monitor_is_missing() -> None:
    bus = EventBus()
    bus.attach(EarlyStopping(monitor="val_loss", patience=0))
    with pytest.warns(UserWarning, match=r"`val_loss` which is not available.*loss,accuracy"):
        ran = run_epochs(bus, [{"loss": 1.0, "accuracy": 0.5}] * 3)
    assert ran == 3 and not bus.stop_requested


@settings(max_examples=100, deadline=None)
@given(values=st.lists(finite, min_size=2, max_size=12), patience=st.integers(0, 3))
def test_early_stopping_restores_the_best_epochs_weights(
    values: list[float], patience: int
) -> None:
    bus = EventBus()
    holder = WeightsHolder()
    early = EarlyStopping(monitor="loss", patience=patience, restore_best_weights=True)
    bus.attach(early)

    @bus.on("on_train_epoch_start")
    def train(payload: Any) -> None:
        holder.weights = [float(payload.epoch)]  # "training" sets weights to the epoch

    ran = run_epochs(bus, [{"loss": v} for v in values], source=holder)
    seen = values[:ran]
    best_epoch = seen.index(min(seen))  # strict improvement: the first minimum
    assert early.best_epoch == best_epoch
    assert holder.weights == [float(best_epoch)]
    assert early.restored


def test_restore_best_weights_without_get_weights_names_the_trainer() -> None:
    bus = EventBus()
    bus.attach(EarlyStopping(monitor="loss", restore_best_weights=True))
    with pytest.raises(SubscriberError) as info:
        bus.emit("on_train_start", source=object())
    assert isinstance(info.value.original, TypeError)
    assert "builtins.object has none" in str(info.value.original)
    assert "EarlyStopping.on_train_start" in str(info.value)


# -- TerminateOnNaN --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_terminate_on_nan_stops_on_an_invalid_batch_loss(bad: float) -> None:
    bus = EventBus()
    guard = TerminateOnNaN()
    bus.attach(guard)
    bus.emit("on_train_start")
    bus.emit("on_train_batch_end", batch=0, epoch=0, logs={"loss": 0.5})
    assert not bus.stop_requested and guard.terminated is None
    bus.emit("on_train_batch_end", batch=1, epoch=0, logs={"loss": bad})
    assert bus.stop_requested
    assert guard.terminated is not None and "epoch 0 batch 1" in guard.terminated


def test_terminate_on_nan_also_reads_epoch_logs() -> None:
    bus = EventBus()
    bus.attach(TerminateOnNaN())
    bus.emit("on_train_start")
    bus.emit("on_fit_epoch_end", epoch=0, logs={"loss": math.nan})
    assert bus.stop_requested and "epoch 0" in (bus.stop_reason or "")


# -- CSVLogger -------------------------------------------------------------------------------

metric_names = st.sampled_from(["loss", "accuracy", "val_loss", "val_accuracy", "lr", "mae"])
any_float = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(metric_names, min_size=1, max_size=4, unique=True),
    data=st.data(),
)
def test_csv_round_trip(tmp_path_factory: Any, keys: list[str], data: Any) -> None:
    rows = data.draw(
        st.lists(st.fixed_dictionaries({k: any_float for k in keys}), min_size=1, max_size=6)
    )
    path = tmp_path_factory.mktemp("csv") / "log.csv"
    bus = EventBus()
    bus.attach(CSVLogger(path))
    run_epochs(bus, rows)
    with open(path, newline="") as f:
        table = list(csv.reader(f))
    columns = sorted(keys)
    if not any(k.startswith("val_") for k in keys):
        columns += [f"val_{k}" for k in columns]
    assert table[0] == ["epoch", *columns]
    assert len(table) == len(rows) + 1
    for epoch, (row, logs) in enumerate(zip(table[1:], rows, strict=True)):
        assert int(row[0]) == epoch
        for key, cell in zip(columns, row[1:], strict=True):
            if key not in logs:
                assert cell == "NA"
            else:
                got = float(cell)
                assert got == logs[key] or (math.isnan(got) and math.isnan(logs[key]))


def test_csv_append_writes_one_header_and_flushes_each_row(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "log.csv"
    bus = EventBus()
    bus.attach(CSVLogger(path, append=True))
    bus.emit("on_train_start")
    bus.emit("on_fit_epoch_end", epoch=0, logs={"loss": 1.0, "val_loss": 2.0})
    assert path.read_text().splitlines() == ["epoch,loss,val_loss", "0,1.0,2.0"]  # flushed
    bus.emit("on_train_end")
    run_epochs(bus, [{"loss": 3.0, "val_loss": 4.0}])
    assert path.read_text().splitlines() == ["epoch,loss,val_loss", "0,1.0,2.0", "0,3.0,4.0"]


def test_writers_write_only_from_rank_0_unless_all_ranks(tmp_path: Path) -> None:
    bus = EventBus()
    bus.attach(CSVLogger(tmp_path / "r.csv"))
    bus.attach(EventLog(tmp_path / "r.jsonl"))
    bus.attach(CSVLogger(tmp_path / "all-{rank}.csv", all_ranks=True))
    bus.emit("on_train_start", rank=1, world_size=2)
    bus.emit("on_fit_epoch_end", epoch=0, logs={"loss": 1.0}, rank=1, world_size=2)
    bus.emit("on_train_end", rank=1, world_size=2)
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "r.jsonl").exists()
    assert (tmp_path / "all-1.csv").read_text().splitlines()[1] == "0,1.0,NA"


# -- EventLog --------------------------------------------------------------------------------


def test_event_log_writes_and_flushes_one_versioned_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    bus = EventBus()
    log = EventLog(path)
    bus.attach(log)
    emitted: list[tuple[str, dict[str, Any]]] = [
        ("on_pretrain_routine_start", {}),
        ("on_train_begin", {"params": {"epochs": 1}, "source": object()}),
        ("on_epoch_end", {"epoch": 0, "logs": {"loss": math.nan, "x": math.inf}}),
        ("teardown", {"exception": RuntimeError("disk full")}),
        ("on_predict_batch_end", {"batch": 0, "outputs": [1, 2]}),
    ]
    for count, (name, fields) in enumerate(emitted, start=1):
        bus.emit(name, **fields)
        assert len(path.read_text().splitlines()) == count  # on disk before the next event
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["v"] for line in lines] == [1] * 5
    assert [line["event"] for line in lines] == [
        "on_pretrain_routine_start", "on_train_start", "on_fit_epoch_end", "teardown",
        "on_predict_batch_end",
    ]  # fmt: skip
    assert all(isinstance(line["time"], float) for line in lines)
    logs = lines[2]["payload"]["logs"]
    assert math.isnan(logs["loss"]) and logs["x"] == math.inf
    assert "NaN" in path.read_text().splitlines()[2]  # the JSON constant, read back above
    assert lines[3]["payload"]["error"] == "RuntimeError: disk full"
    assert "source" not in lines[1]["payload"] and "params" not in lines[1]["payload"]
    assert "outputs" not in lines[4]["payload"]
    log.close()


def test_event_log_truncates_once_then_appends_across_teardown(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("stale\n")
    bus = EventBus()
    with EventLog(path) as log:
        bus.attach(log)
        bus.emit("on_train_start")
        bus.emit("teardown")
        assert not log._files  # closed at teardown
        bus.emit("on_export_start", format="npz")
    names = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert names == ["on_train_start", "teardown", "on_export_start"]


def test_event_log_writes_other_libraries_events_and_reads_them_back(tmp_path: Path) -> None:
    reg = Registry()
    sample = reg.register("mylib.on_sample", SamplePayload, counter="step")
    path = tmp_path / "events.jsonl"
    bus = EventBus(registry=reg)
    with EventLog(path) as log:
        bus.attach(log)
        bus.emit("on_train_start")
        bus.emit(sample, step=3, caption="a cat")
        bus.emit("teardown")
    records = list(eventlog.read(path, reg))
    assert [r.event for r in records] == [events.on_train_start, sample, events.teardown]
    assert records[1].fields == {"rank": 0, "world_size": 1, "step": 3, "caption": "a cat"}
    with pytest.raises(eventlog.EventLogError, match=r"unknown event 'mylib\.on_sample'"):
        list(eventlog.read(path))  # the default registry does not know the custom event


class SamplePayload(Payload):
    step: int
    caption: str


# -- ProgressBar -----------------------------------------------------------------------------


def drive_progress(bar: ProgressBar) -> None:
    bus = EventBus()
    bus.attach(bar)
    params = {"epochs": 2, "steps": 3}
    bus.emit("on_train_start", params=params)
    for epoch in range(2):
        bus.emit("on_train_epoch_start", epoch=epoch, params=params)
        for b in range(3):
            bus.emit("on_train_batch_end", batch=b, epoch=epoch, logs={"loss": 1.0 / (b + 1)})
        bus.emit("on_fit_epoch_end", epoch=epoch, logs={"loss": 0.5, "val_loss": 0.75})
    bus.emit("on_train_end")


def test_progress_bar_is_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = ProgressBar(file=out)
    assert not bar.enabled
    drive_progress(bar)
    assert out.getvalue() == ""


def test_progress_bar_shows_epochs_batches_and_metrics_when_enabled() -> None:
    out = io.StringIO()
    drive_progress(ProgressBar(file=out, disable=False))
    text = out.getvalue()
    assert "epoch 0 (1/2)" in text and "epoch 1 (2/2)" in text
    assert "2/2" in text and "val_loss=0.75" in text


def test_callbacks_import_neither_tqdm_nor_matplotlib() -> None:
    code = (
        "import sys, eventhooks, eventhooks.callbacks, eventhooks.replay\n"
        "print(sorted(m for m in ('tqdm', 'matplotlib', 'numpy', 'torch', 'keras') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- ModelCheckpoint -------------------------------------------------------------------------


class Saver:
    """A trainer-like object whose save() writes a file, announcing it on a bus or not."""

    def __init__(self, bus: EventBus | None = None) -> None:
        self.bus = bus
        self.saved: list[str] = []

    def save(self, path: str) -> None:
        Path(path).write_text(str(len(self.saved)))
        self.saved.append(path)
        if self.bus is not None:
            self.bus.emit("on_model_save", path=path, source=self)


@pytest.mark.parametrize("announces", [False, True])
def test_checkpoint_saves_every_epoch_and_on_model_save_is_emitted_once(
    tmp_path: Path, announces: bool
) -> None:
    bus = EventBus()
    rec = Recorder(bus)
    saver = Saver(bus if announces else None)
    ckpt = ModelCheckpoint(tmp_path / "ck" / "e{epoch:02d}-{loss:.1f}.txt")
    bus.attach(ckpt)
    run_epochs(bus, [{"loss": 1.0}, {"loss": 0.5}], source=saver)
    expected = [str(tmp_path / "ck" / "e01-1.0.txt"), str(tmp_path / "ck" / "e02-0.5.txt")]
    assert saver.saved == ckpt.saved == expected
    assert [p.path for p in rec.payloads("on_model_save")] == expected
    assert all(Path(p).exists() for p in expected)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=10))
def test_checkpoint_save_best_only_saves_exactly_the_improvements(
    tmp_path_factory: Any, values: list[float]
) -> None:
    folder = tmp_path_factory.mktemp("best")
    bus = EventBus()
    saver = Saver()
    bus.attach(ModelCheckpoint(folder / "{epoch}.txt", monitor="val_acc", save_best_only=True))
    run_epochs(bus, [{"val_acc": v} for v in values], source=saver)
    improving = [i + 1 for i, v in enumerate(values) if v > max(values[:i], default=-math.inf)]
    assert saver.saved == [str(folder / f"{e}.txt") for e in improving]


def test_checkpoint_without_save_is_a_clear_error_unless_save_fn(tmp_path: Path) -> None:
    bus = EventBus()
    bus.attach(ModelCheckpoint(tmp_path / "m.bin"))
    bus.emit("on_train_start")
    with pytest.raises(SubscriberError) as info:
        bus.emit("on_fit_epoch_end", epoch=0, logs={"val_loss": 1.0}, source=WeightsHolder())
    message = "test_builtin_callbacks.WeightsHolder has none; pass save_fn="
    assert message in str(info.value.original)

    bus2 = EventBus()
    rec = Recorder(bus2, ["on_model_save"])
    written: list[Any] = []
    bus2.attach(ModelCheckpoint(tmp_path / "m.bin", save_fn=lambda t, p: written.append((t, p))))
    holder = WeightsHolder()
    run_epochs(bus2, [{"val_loss": 1.0}], source=holder)
    assert written == [(holder, str(tmp_path / "m.bin"))]
    assert [p.path for p in rec.payloads("on_model_save")] == [str(tmp_path / "m.bin")]


def test_checkpoint_save_best_only_warns_when_the_monitor_is_missing(tmp_path: Path) -> None:
    bus = EventBus()
    saver = Saver()
    bus.attach(ModelCheckpoint(tmp_path / "m.txt", save_best_only=True))
    with pytest.warns(UserWarning, match="only with val_loss available"):
        run_epochs(bus, [{"loss": 1.0}], source=saver)
    assert saver.saved == []


def test_checkpoint_path_that_does_not_format_names_the_keys(tmp_path: Path) -> None:
    bus = EventBus()
    bus.attach(ModelCheckpoint(tmp_path / "{val_auc}.txt"))
    bus.emit("on_train_start")
    with pytest.raises(SubscriberError, match="ModelCheckpoint") as info:
        bus.emit("on_fit_epoch_end", epoch=0, logs={"loss": 1.0}, source=Saver())
    assert "['loss']" in str(info.value.original)


# -- LambdaCallback --------------------------------------------------------------------------


def test_lambda_callback_takes_any_event_name_and_rejects_misspellings() -> None:
    bus = EventBus()
    seen: list[tuple[str, int]] = []
    cb = LambdaCallback(
        on_epoch_end=lambda p: seen.append(("end", p.epoch)),
        on_train_epoch_start=lambda p: seen.append(("start", p.epoch)),
    )
    attachment = bus.attach(cb)
    run_epochs(bus, [{}, {}])
    assert seen == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    bus.disconnect(attachment)
    assert not bus.listening("on_epoch_end")
    with pytest.raises(TypeError, match="'on_epoch_ends' is not an event name"):
        LambdaCallback(on_epoch_ends=print)
    with pytest.raises(TypeError, match="must be callable"):
        LambdaCallback(on_epoch_end=3)  # type: ignore[arg-type]


def test_no_warning_from_a_quiet_run(tmp_path: Path) -> None:
    bus = EventBus()
    for cb in (History(), EarlyStopping(patience=2), TerminateOnNaN(), CSVLogger(tmp_path / "a")):
        bus.attach(cb)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_epochs(bus, [{"loss": 1.0, "val_loss": 1.0}] * 3)


def test_checkpoint_path_may_name_the_rank(tmp_path: Path) -> None:
    bus = EventBus()
    saver = Saver()
    bus.attach(ModelCheckpoint(tmp_path / "r{rank}-e{epoch}.txt", all_ranks=True))
    bus.emit("on_train_start")
    for rank in (0, 1):
        bus.emit("on_fit_epoch_end", epoch=0, rank=rank, world_size=2, source=saver)
    assert saver.saved == [str(tmp_path / "r0-e1.txt"), str(tmp_path / "r1-e1.txt")]


def test_checkpoint_epoch_and_rank_win_over_logs_of_the_same_name(tmp_path: Path) -> None:
    bus = EventBus()
    saver = Saver()
    bus.attach(ModelCheckpoint(tmp_path / "e{epoch}-r{rank}-{loss}.txt"))
    bus.emit("on_train_start")
    bus.emit("on_fit_epoch_end", epoch=1, logs={"epoch": 9.0, "rank": 5.0, "loss": 0.5},
             source=saver)  # fmt: skip
    assert saver.saved == [str(tmp_path / "e2-r0-0.5.txt")]
