"""The Ultralytics adapter on real, offline YOLO runs: order, payloads, control, failure, pickling.

One detection run (2 epochs of ``yolov8n.yaml`` on 8 synthetic images, then val, predict on
two images and a TorchScript export) is shared by most tests through a module fixture; the
classification model (``yolov8n-cls.yaml``, about a second per run) serves the runs that
stop, fail or pickle. Every run happens behind a network guard that fails on any attempt.
"""

from __future__ import annotations

import csv
import json
import math
import pickle
import socket
import subprocess
import sys
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from _network import NetworkAttempt, NetworkGuard
from _yolo_data import classification_dataset, detection_dataset, predict_images
from _yolo_support import EpochFile, NativeTrace
from hypothesis import given, settings
from hypothesis import strategies as st
from ultralytics import YOLO
from ultralytics.engine.exporter import Exporter
from ultralytics.models.yolo.classify import ClassificationTrainer
from ultralytics.models.yolo.detect import DetectionPredictor, DetectionValidator

from eventhooks import Callback, EpochPayload, EventBus, RunPayload, SubscriberError, events
from eventhooks import eventlog as eventlog_format
from eventhooks.adapters import _ultralytics_logs as ul
from eventhooks.adapters.ultralytics import NAMES, Forwarder, Link, attach, detach, train
from eventhooks.callbacks import CSVLogger, EarlyStopping, EventLog, History
from eventhooks.testing import Recorder, assert_canonical_order

#: What Ultralytics calls: all but its three "reserved" names.
RESERVED = {"optimizer_step", "on_before_zero_grad", "on_params_update"}
EMITTED = [name for name in NAMES if name not in RESERVED]
TESTS = Path(__file__).resolve().parent


def train_args(project: Path, **extra: Any) -> dict[str, Any]:
    """The offline recipe of PRODUCT.md §2, with an absolute project folder."""
    args: dict[str, Any] = dict(
        imgsz=64, batch=4, pretrained=False, amp=False, plots=False, device="cpu", workers=0,
        project=str(project), name="run", exist_ok=True, verbose=False,
    )  # fmt: skip
    args.update(extra)
    return args


def one_save_per_epoch(names: list[str]) -> list[str]:
    """Ultralytics calls on_model_save once per epoch; the adapter emits one per file written."""
    return [n for i, n in enumerate(names) if not (n == "on_model_save" == names[i - 1])]


def final_eval_block(native: NativeTrace) -> tuple[int, int]:
    """[start, stop) of the best-weights validation and its phantom on_fit_epoch_end."""
    names = native.names
    start = next(
        i for i, (name, _, _, training) in enumerate(native.records)
        if name == "on_val_start" and training is False and "on_train_end" in names[i:]
    )  # fmt: skip
    stop = names.index("on_fit_epoch_end", start) + 1
    return start, stop


# -- shared runs ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def network() -> Iterator[NetworkGuard]:
    """Every run of this module, module fixtures included, happens behind the guard."""
    guard = NetworkGuard()
    with guard.active():
        yield guard


@pytest.fixture(autouse=True)
def no_network_attempt(network: NetworkGuard) -> Iterator[None]:
    """Fails the test (as an error at its teardown) in which, or before which, a run tried."""
    yield
    assert network.attempts == [], f"network access attempted: {network.attempts}"


class KerasNames(Callback):
    """Connected under Keras names only."""

    def __init__(self) -> None:
        self.epoch_end: list[EpochPayload] = []
        self.test_end: list[RunPayload] = []
        self.train_begin: list[RunPayload] = []

    def on_train_begin(self, payload: RunPayload) -> None:
        self.train_begin.append(payload)

    def on_epoch_end(self, payload: EpochPayload) -> None:
        self.epoch_end.append(payload)

    def on_test_end(self, payload: RunPayload) -> None:
        self.test_end.append(payload)


@dataclass
class DetRun:
    root: Path
    data: Path
    model: Any
    bus: EventBus
    link: Link
    rec: Recorder
    native: NativeTrace
    keras: KerasNames
    history: History
    csv_path: Path
    log_path: Path
    train_metrics: Any = None
    val_metrics: Any = None
    images: list[Path] = field(default_factory=list)
    predictions: Any = field(default_factory=list)  # a list, from predict(stream=False)
    exported: str = ""
    trainer: Any = None


@pytest.fixture(scope="module")
def det(tmp_path_factory: pytest.TempPathFactory, network: NetworkGuard) -> DetRun:
    root = tmp_path_factory.mktemp("det")
    data = detection_dataset(root / "data")
    model = YOLO("yolov8n.yaml")
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    link = attach(model, bus)
    native = NativeTrace()
    native.attach(model, NAMES)
    keras = cast(KerasNames, bus.attach(KerasNames()).obj)
    history = History()
    bus.attach(history)
    run = DetRun(root, data, model, bus, link, rec, native, keras, history,
                 root / "epochs.csv", root / "events.jsonl")  # fmt: skip
    bus.attach(CSVLogger(run.csv_path))
    bus.attach(EventLog(run.log_path))
    run.train_metrics = model.train(data=str(data), epochs=2, **train_args(root / "runs"))
    run.trainer = model.trainer
    run.val_metrics = model.val(data=str(data), **train_args(root / "runs", name="val"))
    run.images = predict_images(root / "predict")
    run.predictions = model.predict(
        [str(p) for p in run.images], imgsz=64, device="cpu", verbose=False,
        project=str(root / "runs"), name="predict", exist_ok=True,
    )  # fmt: skip
    run.exported = str(model.export(format="torchscript", imgsz=64, device="cpu"))
    return run


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return classification_dataset(tmp_path_factory.mktemp("cls") / "data")


def train_cls(bus: EventBus, project: Path, data: Path, epochs: int = 2, **kw: Any) -> Any:
    model = YOLO("yolov8n-cls.yaml")
    attach(model, bus, **kw)
    model.train(data=str(data), epochs=epochs, **train_args(project))
    return model


# -- no network -------------------------------------------------------------------------------


def test_the_network_guard_catches_an_attempt() -> None:
    guard = NetworkGuard()
    with guard.active():
        with pytest.raises(OSError, match="network access attempted"):
            urllib.request.urlopen("http://example.com", timeout=1)
        with pytest.raises(NetworkAttempt):
            socket.getaddrinfo("example.com", 443)
    assert len(guard.attempts) == 2 and "example.com" in guard.attempts[0]


def test_the_runs_make_no_network_access(det: DetRun, network: NetworkGuard) -> None:
    assert det.rec.names  # the run happened behind the guard
    assert network.attempts == []


# -- order ------------------------------------------------------------------------------------


def test_train_val_predict_export_trace_is_in_canonical_order(det: DetRun) -> None:
    assert_canonical_order(det.rec.names, emitted=EMITTED)
    assert det.rec.names.count("on_fit_epoch_end") == 2
    assert [p.epoch for p in det.rec.payloads("on_fit_epoch_end")] == [0, 1]


def test_trace_is_ultralytics_own_order_without_the_final_validation(det: DetRun) -> None:
    start, stop = final_eval_block(det.native)
    native = det.native.names
    assert native[start:stop] == [
        "on_val_start", *["on_val_batch_start", "on_val_batch_end"] * ((stop - start - 3) // 2),
        "on_val_end", "on_fit_epoch_end",
    ]  # fmt: skip
    # The quirk: the phantom epoch is last + 1.
    assert det.native.records[stop - 1][2] == det.trainer.epochs
    assert one_save_per_epoch(det.rec.names) == native[:start] + native[stop:]


def test_final_eval_keep_forwards_the_best_weights_validation_in_canonical_order(
    tmp_path: Path, cls_data: Path
) -> None:
    """The canonical order (revised, #11) has a validation after the last epoch: "keep"
    forwards the best-weights validation as that one. The phantom epoch is never forwarded."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = YOLO("yolov8n-cls.yaml")
    attach(model, bus, final_eval="keep")
    native = NativeTrace()
    native.attach(model, NAMES)
    model.train(data=str(cls_data), epochs=2, **train_args(tmp_path))
    _, stop = final_eval_block(native)
    names = one_save_per_epoch(rec.names)
    assert names == native.names[: stop - 1] + native.names[stop:]  # all but the phantom
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0, 1]
    assert_canonical_order(rec.names, emitted=EMITTED)
    assert rec.names[-4:] == ["on_val_batch_end", "on_val_end", "on_train_end", "teardown"]
    # The best-weights validation is no epoch's; its source is the trainer's validator.
    assert [p.epoch for p in rec.payloads("on_val_start")] == [0, 1, None]
    best, trainer = rec.payloads("on_val_end")[-1], cast(Any, model.trainer)
    assert best.source is trainer.validator and "val_loss" not in best.logs
    (end,) = rec.payloads("on_train_end")
    assert {f"best/{k}": v for k, v in best.logs.items()} == {
        k: v for k, v in end.logs.items() if k.startswith("best/")
    }


def test_keras_names_hear_the_matching_moments(det: DetRun) -> None:
    assert det.keras.epoch_end == det.rec.payloads("on_fit_epoch_end")
    assert det.keras.test_end == det.rec.payloads("on_val_end")
    assert det.keras.train_begin == det.rec.payloads("on_train_start")
    assert all(
        a is b
        for a, b in zip(det.keras.epoch_end, det.rec.payloads(events.on_epoch_end), strict=True)
    )


# -- payloads ---------------------------------------------------------------------------------


def results_csv(trainer: Any) -> list[dict[str, float]]:
    with open(trainer.csv, newline="") as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)


def test_epoch_logs_match_ultralytics_results_csv(det: DetRun) -> None:
    rows = results_csv(det.trainer)
    fits = det.rec.payloads("on_fit_epoch_end")
    assert [int(row["epoch"]) - 1 for row in rows] == [p.epoch for p in fits]
    for row, payload in zip(rows, fits, strict=True):
        for key, value in row.items():
            if key not in ("epoch", "time"):
                assert close(payload.logs[key], value), (key, payload.logs[key], value)
        logs = payload.logs
        assert close(logs["loss"], sum(v for k, v in logs.items() if k.startswith("train/")))
        assert close(logs["val_loss"], sum(v for k, v in logs.items() if k.startswith("val/")))
        assert "fitness" in logs


def test_loss_keys_are_the_trainers_loss_names(det: DetRun) -> None:
    expected = {f"train/{name}" for name in det.trainer.loss_names}
    for name in ("on_train_batch_end", "on_train_epoch_end", "on_fit_epoch_end"):
        for payload in det.rec.payloads(name):
            assert {k for k in payload.logs if k.startswith("train/")} == expected, name
    groups = len(det.trainer.optimizer.param_groups)
    assert {k for k in det.rec.payloads("on_train_epoch_end")[-1].logs if k.startswith("lr/")} == {
        f"lr/pg{i}" for i in range(groups)
    }


def test_batches_are_counted_from_zero_in_each_epoch(det: DetRun) -> None:
    per_epoch = len(det.trainer.train_loader)
    for name in ("on_train_batch_start", "on_train_batch_end"):
        payloads = det.rec.payloads(name)
        assert [(p.epoch, p.batch) for p in payloads] == [
            (epoch, batch) for epoch in (0, 1) for batch in range(per_epoch)
        ]


def test_validation_inside_training_versus_standalone(det: DetRun) -> None:
    vals = det.rec.payloads("on_val_end")
    inside, standalone = vals[:-1], vals[-1]
    assert [p.epoch for p in inside] == [0, 1]
    assert all(p.source is det.trainer.validator for p in inside)
    assert all("val_loss" in p.logs and "fitness" in p.logs for p in inside)
    assert standalone.epoch is None and standalone.source is not det.trainer.validator
    expected = det.val_metrics.results_dict
    assert set(standalone.logs) == set(expected)
    assert all(close(standalone.logs[k], float(v)) for k, v in expected.items())
    val_batches = det.rec.payloads("on_val_batch_end")
    assert {p.epoch for p in val_batches} == {0, 1, None}


def test_sources_are_the_ultralytics_objects(det: DetRun) -> None:
    for name in ("on_pretrain_routine_start", "on_train_batch_end", "on_fit_epoch_end",
                 "on_model_save", "on_train_end", "teardown"):  # fmt: skip
        assert all(p.source is det.trainer for p in det.rec.payloads(name)), name
    assert all(p.source is det.model.predictor for p in det.rec.payloads("on_predict_end"))
    assert type(det.rec.payloads("on_export_end")[0].source).__name__ == "Exporter"


def test_checkpoints_name_the_files_written(det: DetRun) -> None:
    saves = det.rec.payloads("on_model_save")
    last, best = str(det.trainer.last), str(det.trainer.best)
    assert [p.epoch for p in saves if p.path == last] == [0, 1]
    assert best in {p.path for p in saves}
    assert all(Path(p.path).is_file() for p in saves)
    names = det.rec.names
    for i, name in enumerate(names):  # each save precedes the epoch's end, same epoch
        if name == "on_model_save":
            nxt = names.index("on_fit_epoch_end", i)
            assert det.rec.records[nxt][1].epoch == det.rec.records[i][1].epoch


def test_train_end_carries_last_epoch_and_best_weights_metrics(det: DetRun) -> None:
    (end,) = det.rec.payloads("on_train_end")
    last = det.rec.payloads("on_fit_epoch_end")[-1]
    assert end.epoch == 1
    assert {k: v for k, v in end.logs.items() if not k.startswith("best/")} == last.logs
    best = det.trainer.metrics  # after training: the best.pt validation
    assert set(best) | {"fitness"} == {k.removeprefix("best/") for k in end.logs if "best/" in k}
    assert all(close(end.logs[f"best/{k}"], float(v)) for k, v in best.items())
    (teardown,) = det.rec.payloads("teardown")
    assert teardown.error is None and teardown.epoch == 1 and teardown.logs == last.logs


def test_predict_outputs_are_the_results(det: DetRun) -> None:
    ends = det.rec.payloads("on_predict_batch_end")
    posts = det.rec.payloads("on_predict_postprocess_end")
    assert [p.batch for p in ends] == list(range(len(ends)))
    outputs = [r for p in ends for r in p.outputs]
    assert len(outputs) == len(det.predictions) == len(det.images)
    assert all(a is b for a, b in zip(outputs, det.predictions, strict=True))
    assert [r for p in posts for r in p.outputs] == outputs


def test_export_end_carries_the_artifact(det: DetRun) -> None:
    (start,) = det.rec.payloads("on_export_start")
    (end,) = det.rec.payloads("on_export_end")
    assert start.format == end.format == "torchscript"
    assert end.path == det.exported and end.path.endswith(".torchscript")
    assert Path(end.path).is_file()
    assert torch.jit.load(end.path) is not None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                          st.floats(-1e6, 1e6)), max_size=5, unique_by=lambda t: t[0]))  # fmt: skip
def test_loss_components_as_tensor_or_dict_give_the_same_logs(items: list[Any]) -> None:
    names = [name for name, _ in items]
    values = [value for _, value in items]
    as_dict = ul._named({n: torch.tensor(v) for n, v in items}, names)
    as_tensor = ul._named(torch.tensor(values, dtype=torch.float64), names)
    assert ul.floats(as_dict) == pytest.approx(ul.floats(as_tensor), rel=1e-6)
    assert list(ul.floats(as_tensor, "train/")) == [f"train/{n}" for n in names]


# -- built-in subscribers ---------------------------------------------------------------------


def test_history_csvlogger_and_eventlog_record_the_epochs(det: DetRun) -> None:
    rows = results_csv(det.trainer)
    assert det.history.epoch == [0, 1]
    assert det.history.history["fitness"] == [p.logs["fitness"] for p in det.keras.epoch_end]
    for key in ("metrics/mAP50(B)", "val/box_loss", "train/box_loss"):
        assert all(
            close(a, row[key]) for a, row in zip(det.history.history[key], rows, strict=True)
        )
    with open(det.csv_path, newline="") as f:
        written = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in written] == [0, 1]
    for r, row in zip(written, rows, strict=True):
        assert close(float(r["metrics/mAP50(B)"]), row["metrics/mAP50(B)"])
        assert close(float(r["val_loss"]), sum(v for k, v in row.items() if k.startswith("val/")))
    records = list(eventlog_format.read(det.log_path))
    assert [r.event.name for r in records] == det.rec.names
    logged = [r.fields for r in records if r.event.name == "on_fit_epoch_end"]
    assert [r["epoch"] for r in logged] == [0, 1]
    assert [r["logs"] for r in logged] == [p.logs for p in det.rec.payloads("on_fit_epoch_end")]


@pytest.mark.parametrize("patience", [0, 2])
def test_early_stopping_stops_yolo_training(tmp_path: Path, cls_data: Path, patience: int) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    # Keras' default monitor, val_loss; with this min_delta no epoch after the first improves.
    stopper = EarlyStopping(patience=patience, min_delta=1e9)
    bus.attach(stopper)
    model = train_cls(bus, tmp_path, cls_data, epochs=5)
    assert all("val_loss" in p.logs for p in rec.payloads("on_fit_epoch_end"))
    ran = list(range(max(patience, 1) + 1))  # Keras: the patience-th epoch without gain stops
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == ran
    assert stopper.stopped_epoch == ran[-1] == model.trainer.epoch
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert_canonical_order(rec.names, emitted=EMITTED)


def validation_keys(logs: dict[str, float]) -> set[str]:
    """What only a validation can give: val_* and val/* losses, metrics/*, fitness."""
    return {k for k in logs if k.startswith(("val", "metrics/")) or k == "fitness"}


def test_epochs_without_validation_carry_no_validation_logs(tmp_path: Path, cls_data: Path) -> None:
    """val=False: Ultralytics validates only the last epoch, its metrics are zeros until then.

    As Keras leaves val_* out of the epochs it did not validate, so does the adapter, and
    EarlyStopping(monitor="val_loss") is not fooled into stopping on those zeros.
    """
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    stopper = EarlyStopping(monitor="val_loss", patience=1)
    bus.attach(stopper)
    model = YOLO("yolov8n-cls.yaml")
    attach(model, bus)
    with pytest.warns(UserWarning, match="`val_loss` which is not available"):
        model.train(data=str(cls_data), epochs=3, val=False, **train_args(tmp_path))
    fits = rec.payloads("on_fit_epoch_end")
    assert [p.epoch for p in fits] == [0, 1, 2] and stopper.stopped_epoch is None
    assert [p.epoch for p in rec.payloads("on_val_end")] == [2]  # only the final epoch
    (val_end,) = rec.payloads("on_val_end")
    for payload in fits[:-1]:
        assert validation_keys(payload.logs) == set(), payload.epoch
        assert "loss" in payload.logs and "lr/pg0" in payload.logs
    last = fits[-1].logs
    assert validation_keys(val_end.logs) <= validation_keys(last)
    assert all(close(last[k], v) for k, v in val_end.logs.items())
    for save in rec.payloads("on_model_save"):
        assert save.logs == fits[save.epoch].logs
    (end,) = rec.payloads("on_train_end")
    assert {k: v for k, v in end.logs.items() if not k.startswith("best/")} == last
    assert_canonical_order(rec.names, emitted=EMITTED)


# -- control and failure ----------------------------------------------------------------------


@pytest.mark.parametrize(("event", "epoch", "batch", "batches_after"), [
    ("on_train_batch_end", 0, 0, 1), ("on_train_batch_end", 1, 1, 2),
    ("on_fit_epoch_end", 0, None, None), ("on_train_epoch_start", 1, None, 1),
])  # fmt: skip
def test_request_stop_stops_training(
    tmp_path: Path,
    cls_data: Path,
    event: str,
    epoch: int,
    batch: int | None,
    batches_after: int | None,
) -> None:
    """Ultralytics stops after the current batch (the epoch still validates) or epoch."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)

    @bus.on(event, when=lambda p: p.epoch == epoch and getattr(p, "batch", None) == batch)
    def stop(payload: Any) -> None:
        bus.request_stop("test")

    model = train_cls(bus, tmp_path, cls_data, epochs=4)
    per_epoch = len(model.trainer.train_loader)
    assert per_epoch >= 2
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == list(range(epoch + 1))
    last_batches = [p.batch for p in rec.payloads("on_train_batch_end") if p.epoch == epoch]
    assert last_batches == list(range(batches_after or per_epoch))
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert_canonical_order(rec.names, emitted=EMITTED)


# -- restarts and batches Ultralytics leaves open (triggered for real) --------------------------


def test_an_epoch_restarted_after_running_out_of_memory(tmp_path: Path, cls_data: Path) -> None:
    """Ultralytics halves the batch size and restarts the first epoch when a batch runs out of
    memory, leaving that batch without its end. Triggered for real: a subscriber makes the
    torch model's next forward raise torch's out-of-memory message, once."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    sizes: list[int] = []

    def out_of_memory(payload: Any) -> None:
        if sizes:
            return
        trainer = payload.source
        sizes.append(trainer.batch_size)

        def fail(module: Any, args: Any) -> None:
            handle.remove()
            raise RuntimeError("CPU out of memory (injected by the test)")

        handle = trainer.model.register_forward_pre_hook(fail)

    bus.subscribe("on_train_batch_start", out_of_memory)
    model = train_cls(bus, tmp_path, cls_data, epochs=2)
    assert model.trainer.batch_size == sizes[0] // 2  # Ultralytics did restart, with half
    assert [p.epoch for p in rec.payloads("on_train_epoch_start")] == [0, 0, 1]
    first, again = [i for i, n in enumerate(rec.names) if n == "on_train_epoch_start"][:2]
    assert rec.names[first:again] == [
        "on_train_epoch_start", "on_train_batch_start", "on_train_batch_end",
    ]  # fmt: skip
    failed = rec.payloads("on_train_batch_end")[0]  # ended by the adapter: no loss to report
    assert (failed.epoch, failed.batch) == (0, 0) and "loss" not in failed.logs
    assert "lr/pg0" in failed.logs
    per_epoch = len(model.trainer.train_loader)
    batches = [(p.epoch, p.batch) for p in rec.payloads("on_train_batch_end")][1:]
    assert batches == [(e, b) for e in (0, 1) for b in range(per_epoch)]  # counted afresh
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0, 1]
    assert_canonical_order(rec.names, emitted=EMITTED)


def test_an_epoch_restarted_after_a_nan_loss(tmp_path: Path, cls_data: Path) -> None:
    """Ultralytics reloads last.pt and redoes an epoch (not the first) whose loss was NaN,
    after it validated it. Triggered for real: a subscriber fills the weights with NaN at the
    first batch of epoch 1, once.

    The canonical order's restart allows it there (PRODUCT.md: the framework wins): the failed
    attempt ends at its validation, with no ``on_fit_epoch_end``, and the same epoch begins
    again. Epoch 1 ends once, as in Ultralytics' results.csv.
    """
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    history = History()
    bus.attach(history)
    poisoned: list[int] = []

    def poison(payload: Any) -> None:
        if payload.epoch == 1 and not poisoned:
            poisoned.append(payload.batch)
            with torch.no_grad():
                for weights in payload.source.model.parameters():
                    weights.fill_(float("nan"))

    bus.subscribe("on_train_batch_start", poison)
    model = train_cls(bus, tmp_path, cls_data, epochs=3)
    assert [p.epoch for p in rec.payloads("on_train_epoch_start")] == [0, 1, 1, 2]
    fits = rec.payloads("on_fit_epoch_end")
    assert [p.epoch for p in fits] == history.epoch == [0, 1, 2]
    assert all(math.isfinite(p.logs["loss"]) for p in fits)
    attempt = rec.payloads("on_train_epoch_end")[1]  # the attempt restarted
    assert attempt.epoch == 1 and math.isnan(attempt.logs["loss"])
    rows = results_csv(model.trainer)
    assert [int(row["epoch"]) - 1 for row in rows] == [0, 1, 2]
    assert close(rows[1]["train/loss"], fits[1].logs["train/loss"])
    last = str(model.trainer.last)
    assert [p.epoch for p in rec.payloads("on_model_save") if p.path == last] == [0, 1, 2]
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert_canonical_order(rec.names, emitted=EMITTED)


def test_a_run_out_of_time_ends_the_batch_it_left(tmp_path: Path, cls_data: Path) -> None:
    """``time=``: out of time, Ultralytics leaves the batch without on_train_batch_end."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = YOLO("yolov8n-cls.yaml")
    attach(model, bus)
    native = NativeTrace()
    native.attach(model, NAMES)
    model.train(data=str(cls_data), **train_args(tmp_path, epochs=3, time=1e-9))
    start = native.names.index("on_train_batch_start")
    assert native.names[start + 1] == "on_train_epoch_end"  # Ultralytics' own order
    (ended,) = rec.payloads("on_train_batch_end")
    assert (ended.epoch, ended.batch) == (0, 0) and math.isfinite(ended.logs["loss"])
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0]
    assert_canonical_order(rec.names, emitted=EMITTED)


def test_classification_top1_is_keras_accuracy(tmp_path: Path, cls_data: Path) -> None:
    """Portable metrics (#11): top-1 is ``val_accuracy`` in a training's epoch and validation
    logs, ``accuracy`` in a validation of its own; a Keras-style monitor finds it."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    stopper = EarlyStopping(monitor="val_accuracy", patience=5)
    bus.attach(stopper)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not available", category=UserWarning)
        model = train_cls(bus, tmp_path, cls_data, epochs=2)
    assert stopper.mode == "max" and stopper.best_epoch in (0, 1)
    fits = rec.payloads("on_fit_epoch_end")
    for row, fit in zip(results_csv(model.trainer), fits, strict=True):
        assert close(fit.logs["val_accuracy"], row["metrics/accuracy_top1"])
        assert "accuracy" not in fit.logs  # Ultralytics measures none on training batches
        assert "val_loss" in fit.logs and "loss" in fit.logs
    inside = rec.payloads("on_val_end")
    assert [p.logs["val_accuracy"] for p in inside] == [p.logs["val_accuracy"] for p in fits]
    (end,) = rec.payloads("on_train_end")
    assert end.logs["best/accuracy"] == end.logs["best/metrics/accuracy_top1"]
    rec.clear()
    metrics = model.val(data=str(cls_data), **train_args(tmp_path, name="val"))
    (standalone,) = rec.payloads("on_val_end")
    assert close(standalone.logs["accuracy"], float(metrics.top1))
    assert "val_accuracy" not in standalone.logs and standalone.epoch is None


class Boom(Callback):
    def __init__(self) -> None:
        self.teardowns: list[Any] = []

    def on_epoch_end(self, payload: EpochPayload) -> None:
        raise RuntimeError("boom")

    def teardown(self, payload: Any) -> None:
        self.teardowns.append(payload)


def test_subscriber_error_aborts_training_and_teardown_reaches_everyone(
    tmp_path: Path, cls_data: Path
) -> None:
    bus = EventBus(errors="raise", check_order=True)
    rec = Recorder(bus)
    boom = cast(Boom, bus.attach(Boom()).obj)
    before: list[Any] = []
    after: list[Any] = []
    bus.subscribe("teardown", before.append, priority=10)
    bus.subscribe("teardown", after.append, priority=-10)
    with pytest.raises(SubscriberError) as caught:
        train_cls(bus, tmp_path, cls_data, epochs=3)
    err = caught.value
    assert err.event == "on_fit_epoch_end" and "Boom.on_epoch_end" in err.subscriber
    assert isinstance(err.original, RuntimeError) and "Boom.on_epoch_end" in str(err)
    assert "on_train_end" not in rec.names and rec.names[-1] == "teardown"
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0]
    for heard in (before, after, boom.teardowns, rec.payloads("teardown")):
        (payload,) = heard
        assert payload.exception is err and "boom" in (payload.error or "")
    assert_canonical_order(rec.names, emitted=EMITTED)


def test_a_subscriber_failing_at_train_end_reaches_teardown(tmp_path: Path, cls_data: Path) -> None:
    """The run ended, but on_train_end failed: the run failed, and teardown says so."""
    bus = EventBus(errors="raise", check_order=True)
    rec = Recorder(bus)
    before: list[Any] = []
    after: list[Any] = []
    bus.subscribe("teardown", before.append, priority=10)
    bus.subscribe("teardown", after.append, priority=-10)

    @bus.on("on_train_end")
    def boom(payload: RunPayload) -> None:
        raise RuntimeError("boom at train end")

    with pytest.raises(SubscriberError) as caught:
        train_cls(bus, tmp_path, cls_data, epochs=1)
    err = caught.value
    assert err.event == "on_train_end" and isinstance(err.original, RuntimeError)
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    for heard in (before, after, rec.payloads("teardown")):
        (payload,) = heard
        assert payload.exception is err and "boom at train end" in (payload.error or "")
        assert payload.epoch == 0
    assert_canonical_order(rec.names, emitted=EMITTED)


def failing_start(how: str, tmp_path: Path, cls_data: Path, bus: EventBus) -> tuple[str, Any]:
    """A training that fails in the trainer's constructor: the dataset, or a subscriber."""
    if how == "dataset":
        empty = tmp_path / "no-images"  # a folder that exists: a missing one is downloaded
        empty.mkdir()
        return str(empty), None

    def refuse(payload: Any) -> None:
        raise RuntimeError("not today")

    return str(cls_data), bus.subscribe("on_pretrain_routine_start", refuse)


def standalone_val(model: Any, rec: Recorder, cls_data: Path, tmp_path: Path) -> None:
    """A model.val() after the failed start is heard in full, as a standalone validation."""
    rec.clear()
    model.val(data=str(cls_data), **train_args(tmp_path, name="val"))
    assert rec.names[0] == "on_val_start" and rec.names[-1] == "on_val_end"
    assert "on_val_batch_end" in rec.names
    assert [p.epoch for p in rec.payloads("on_val_end")] == [None]


@pytest.mark.parametrize("how", ["dataset", "subscriber"])
def test_train_tears_down_a_run_that_fails_to_start(
    tmp_path: Path, cls_data: Path, how: str
) -> None:
    """Ultralytics starts a run in the trainer's constructor but tears down only in train()."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = YOLO("yolov8n-cls.yaml")
    data, refusal = failing_start(how, tmp_path, cls_data, bus)
    expected = SubscriberError if refusal is not None else RuntimeError
    with pytest.raises(expected) as caught:
        train(model, bus, data=data, epochs=1, **train_args(tmp_path))
    assert rec.names == ["on_pretrain_routine_start", "teardown"]
    (teardown,) = rec.payloads("teardown")
    assert teardown.exception is caught.value and teardown.error
    assert isinstance(teardown.source, ClassificationTrainer)  # the trainer that failed
    link = _forwarders_to(model, bus)[0].link
    assert link.run is not None and link.run.closed
    if refusal is not None:
        refusal.disconnect()
    standalone_val(model, rec, cls_data, tmp_path)


def test_a_plain_train_that_fails_to_start_leaves_validation_heard(
    tmp_path: Path, cls_data: Path
) -> None:
    """Without the wrapper Ultralytics sends no teardown; a later model.val() is still heard."""
    bus = EventBus()
    rec = Recorder(bus)
    model = YOLO("yolov8n-cls.yaml")
    attach(model, bus)
    data, _ = failing_start("dataset", tmp_path, cls_data, bus)
    with pytest.raises(RuntimeError):
        model.train(data=data, epochs=1, **train_args(tmp_path))
    assert rec.names == ["on_pretrain_routine_start"]  # Ultralytics' quirk: no teardown
    standalone_val(model, rec, cls_data, tmp_path)


def test_a_plain_train_refused_at_its_start_by_a_subscriber_still_tears_down(
    tmp_path: Path, cls_data: Path
) -> None:
    """The lifecycle ends a run it could not open: no wrapper needed for this failure."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = YOLO("yolov8n-cls.yaml")
    attach(model, bus)
    failing_start("subscriber", tmp_path, cls_data, bus)
    with pytest.raises(SubscriberError) as caught:
        model.train(data=str(cls_data), epochs=1, **train_args(tmp_path))
    assert rec.names == ["on_pretrain_routine_start", "teardown"]
    assert rec.payloads("teardown")[0].exception is caught.value


def test_a_good_run_trained_inside_an_except_block_tears_down_without_error(
    tmp_path: Path, cls_data: Path
) -> None:
    """Ultralytics' teardown runs in a ``finally``; an exception being handled around the
    whole training is not the run's."""
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    try:
        raise KeyError("handled by the caller, before training")
    except KeyError:
        train_cls(bus, tmp_path, cls_data, epochs=1)
    (teardown,) = rec.payloads("teardown")
    assert teardown.error is None and teardown.exception is None


def test_train_attaches_and_a_good_run_tears_down_once(tmp_path: Path, cls_data: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    model = YOLO("yolov8n-cls.yaml")
    metrics = train(model, bus, data=str(cls_data), epochs=1, **train_args(tmp_path))
    assert metrics is not None and metrics is model.metrics  # what model.train() returns
    assert rec.names.count("teardown") == 1 and rec.names[-2:] == ["on_train_end", "teardown"]
    assert rec.payloads("teardown")[0].error is None
    assert len(_forwarders_to(model, bus)) == 25  # attached once, and it stays attached
    train(model, bus, data=str(cls_data), epochs=1, **train_args(tmp_path))
    assert len(_forwarders_to(model, bus)) == 25 and rec.names.count("teardown") == 2
    assert_canonical_order(rec.names, emitted=EMITTED)


@pytest.mark.parametrize("fails", ["at start", "in an epoch", "nowhere"])
def test_a_failing_teardown_subscriber_never_hides_the_runs_error(
    tmp_path: Path, cls_data: Path, fails: str
) -> None:
    """The run's own error reaches the caller, noting the teardown failure; one teardown."""
    bus = EventBus(check_order=True)
    heard: list[Any] = []

    def broken(payload: Any) -> None:
        heard.append(payload.exception)
        raise ValueError("teardown subscriber broke")

    bus.subscribe("teardown", broken)
    data = str(cls_data)
    if fails == "at start":
        data, _ = failing_start("dataset", tmp_path, cls_data, bus)
    elif fails == "in an epoch":
        bus.attach(Boom())
    model = YOLO("yolov8n-cls.yaml")
    with pytest.raises(Exception) as caught:
        train(model, bus, data=data, epochs=1, **train_args(tmp_path))
    error = caught.value
    assert len(heard) == 1  # train() does not tear down a second time
    if fails == "nowhere":  # nothing to protect: the teardown failure is the error
        assert isinstance(error, SubscriberError) and error.event == "teardown"
        assert heard == [None]
    else:
        assert heard == [error] and "teardown subscriber broke" not in str(error)
        assert any("teardown subscriber broke" in note for note in error.__notes__)


def _forwarders_to(model: Any, bus: EventBus) -> list[Forwarder]:
    return [fn for name in NAMES for fn in model.callbacks[name]
            if isinstance(fn, Forwarder) and fn.link.bus is bus]  # fmt: skip


# -- attaching --------------------------------------------------------------------------------


def test_attach_registers_one_forwarder_per_callback_once(tmp_path: Path) -> None:
    model = YOLO("yolov8n-cls.yaml")
    bus, other = EventBus(), EventBus()
    link = attach(model, bus)
    assert attach(model, bus) is link  # idempotent
    assert attach(model, bus, final_eval="keep") is link and link.final_eval == "keep"
    assert attach(model, bus) is link and link.final_eval == "keep"  # not given: unchanged
    with pytest.raises(ValueError, match="final_eval"):
        attach(model, bus, final_eval="smooth")  # type: ignore[arg-type]
    assert link.final_eval == "keep"
    attach(model, other)
    for name in NAMES:
        mine = [fn for fn in model.callbacks[name] if isinstance(fn, Forwarder)]
        assert [(fn.event, fn.link.bus) for fn in mine] == [(name, bus), (name, other)]
    assert detach(model, bus) == 25 and detach(model) == 25 and detach(model) == 0
    with pytest.raises(TypeError, match="add_callback"):
        attach(object(), bus)
    with pytest.raises(TypeError, match="EventBus"):
        attach(model, object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="final_eval"):
        attach(model, bus, final_eval="smooth")  # type: ignore[arg-type]


def test_attach_to_a_trainer(tmp_path: Path, cls_data: Path) -> None:
    trainer = ClassificationTrainer(overrides=dict(
        model="yolov8n-cls.yaml", data=str(cls_data), epochs=1, **train_args(tmp_path),
    ))  # fmt: skip
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    attach(trainer, bus)
    trainer.train()
    # Its constructor already ran on_pretrain_routine_start: the adapter opens the run at
    # on_pretrain_routine_end (the lifecycle fills the start in, late), so the trace is whole.
    assert rec.names[:2] == ["on_pretrain_routine_start", "on_pretrain_routine_end"]
    assert_canonical_order(rec.names, emitted=EMITTED)
    for name in ("on_pretrain_routine_start", "on_fit_epoch_end", "teardown"):
        assert all(p.source is trainer for p in rec.payloads(name)), name


def test_attach_to_a_validator_predictor_and_exporter(det: DetRun, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(Path(det.trainer.best).read_bytes())
    common = dict(imgsz=64, device="cpu", verbose=False, project=str(tmp_path), exist_ok=True)
    validator = DetectionValidator(args=dict(model=str(weights), data=str(det.data), batch=4,
                                             plots=False, name="v", **common))  # fmt: skip
    predictor = DetectionPredictor(overrides=dict(model=str(weights), save=False, name="p",
                                                  **common))  # fmt: skip
    exporter = Exporter(overrides=dict(format="torchscript", imgsz=64, device="cpu"))
    bus = EventBus(check_order=True)
    rec = Recorder(bus)
    for obj in (validator, predictor, exporter):
        attach(obj, bus)
    validator(model=str(weights))
    results = list(predictor(source=[str(p) for p in det.images]))
    # Ultralytics infers Model.model as str | None (from its constructor); it is the nn.Module.
    artifact = exporter(model=YOLO(str(weights)).model)  # type: ignore[arg-type]
    assert_canonical_order(rec.names, emitted=EMITTED)
    assert rec.names[0] == "on_val_start" and rec.names[-1] == "on_export_end"
    assert rec.payloads("on_val_end")[0].epoch is None
    assert [r for p in rec.payloads("on_predict_batch_end") for r in p.outputs] == results
    assert rec.payloads("on_export_end")[0].path == str(artifact)


# -- pickling and imports ---------------------------------------------------------------------


def test_forwarders_pickle_and_come_back_to_the_live_bus() -> None:
    model = YOLO("yolov8n-cls.yaml")
    bus = EventBus()
    link = attach(model, bus)
    forwarders = {name: fn for name in NAMES for fn in model.callbacks[name]
                  if isinstance(fn, Forwarder)}  # fmt: skip
    assert len(forwarders) == 25
    for name, fn in forwarders.items():
        back = pickle.loads(pickle.dumps(fn))
        assert back.event == name and back.link is link and back.link.bus is bus


CHILD = """
import importlib, json, pickle, pkgutil, sys
sys.path[:0] = [{tests!r}, {shared!r}]
import eventhooks, eventhooks.adapters
from _network import NetworkGuard

# 1. Every eventhooks module imports without importing ultralytics.
for pkg in (eventhooks, eventhooks.adapters):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] == "ultralytics")
print("IMPORTS " + json.dumps({{"leaked": leaked, "modules": sorted(sys.modules)}}))

# 2. Forwarders pickled in the parent drive a training here, as in an Ultralytics DDP worker.
with NetworkGuard().active() as guard:
    forwarders = pickle.loads(open({blob!r}, "rb").read())
    from ultralytics import YOLO
    model = YOLO("yolov8n-cls.yaml")
    for name, fn in forwarders.items():
        model.add_callback(name, fn)
    model.train(data={data!r}, epochs=2, **{args!r})
print("NETWORK " + json.dumps(guard.attempts))
"""


@dataclass
class ChildRun:
    epochs_file: Path
    imports: dict[str, Any]
    network: list[str]


@pytest.fixture(scope="module")
def child(tmp_path_factory: pytest.TempPathFactory, cls_data: Path) -> ChildRun:
    """One fresh interpreter (they are slow to start): an import check, then a training."""
    tmp = tmp_path_factory.mktemp("child")
    out = tmp / "epochs.txt"
    bus = EventBus()
    bus.attach(EpochFile(out))
    model = YOLO("yolov8n-cls.yaml")
    attach(model, bus)
    forwarders = {name: fn for name in NAMES for fn in model.callbacks[name]
                  if isinstance(fn, Forwarder)}  # fmt: skip
    blob = tmp / "forwarders.pkl"
    blob.write_bytes(pickle.dumps(forwarders))
    script = CHILD.format(
        tests=str(TESTS), shared=str(TESTS.parents[1]), blob=str(blob), data=str(cls_data),
        args=train_args(tmp / "runs"),
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tagged = [line.partition(" ") for line in proc.stdout.splitlines()]
    found = {tag: json.loads(rest) for tag, _, rest in tagged if tag in ("IMPORTS", "NETWORK")}
    return ChildRun(out, found["IMPORTS"], found["NETWORK"])


def test_no_eventhooks_module_imports_ultralytics(child: ChildRun) -> None:
    assert "eventhooks.adapters.ultralytics" in child.imports["modules"]
    assert "eventhooks.adapters._ultralytics_link" in child.imports["modules"]
    assert child.imports["leaked"] == []


def test_pickled_forwarders_train_in_another_process(child: ChildRun) -> None:
    """What Ultralytics does for multi-GPU training: callbacks pickled into a worker."""
    lines = child.epochs_file.read_text().splitlines()
    expected = [["fit", "0"], ["fit", "1"], ["teardown", "None"]]
    assert [line.split()[:2] for line in lines] == expected
    assert all(math.isfinite(float(line.split()[2])) for line in lines[:2])
    assert child.network == []
