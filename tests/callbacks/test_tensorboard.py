"""eventhooks.callbacks.TensorBoard: real event files, read back with TensorBoard's own reader.

Every run attaches a ``History`` to the same bus; what ``EventAccumulator`` reads back must be
what History recorded, epoch by epoch (as float32: TensorBoard's scalars are float32), under
every adapter. All tests run behind the network guard, in an empty working directory.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _network import NetworkGuard
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from eventhooks import Callback, EpochPayload, EventBus, SubscriberError, events
from eventhooks.adapters.numpy import NumpyTrainer
from eventhooks.callbacks import History
from eventhooks.callbacks.tensorboard import TensorBoard, preferred
from eventhooks.lifecycle import Run
from eventhooks.testing import Recorder

# Hugging Face, offline: read when transformers is first imported (here or by another module).
_HF_HOME = tempfile.mkdtemp(prefix="eventhooks-tb-hf-")
for _name in ("HF_HOME", "HF_DATASETS_CACHE", "TORCHINDUCTOR_CACHE_DIR"):
    os.environ.setdefault(_name, os.path.join(_HF_HOME, _name.lower()))
for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                      ("HF_HUB_DISABLE_TELEMETRY", "1"), ("DISABLE_MLFLOW_INTEGRATION", "TRUE"),
                      ("WANDB_DISABLED", "true")):  # fmt: skip
    os.environ.setdefault(_name, _value)

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
]


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No network, and nothing written into the working directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with NetworkGuard().active() as guard:
        yield
    assert not guard.attempts, f"network access attempted: {guard.attempts}"
    assert list(cwd.iterdir()) == [], "written into the working directory"


# -- reading event files back ------------------------------------------------------------------


def accumulator(path: Path) -> Any:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of a run folder (or one event file)."""
    if not path.exists():
        return {}
    acc = accumulator(path)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def texts(path: Path) -> dict[str, list[tuple[int, str]]]:
    """``{tag: [(step, text), ...]}``: the text plugin's summaries of a run folder."""
    acc = accumulator(path)
    for tag in acc.Tags()["tensors"]:
        assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "text", tag
    return {
        tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()) for e in
              acc.Tensors(tag)]
        for tag in acc.Tags()["tensors"]
    }  # fmt: skip


def f32(value: float) -> float:
    """What a TensorBoard scalar holds of ``value``."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def assert_history_written(log_dir: Path, tb: TensorBoard, history: History) -> None:
    """Every key of every epoch of ``history`` is in its run folder and tag, and nothing else
    but learning rates and hyper-parameters is."""
    assert history.epoch, "the run recorded no epoch"
    read = {run: scalars(log_dir / run) for run in ("train", "validation")}
    for key, values in history.history.items():
        assert len(values) == len(history.epoch), f"{key} is not in every epoch"
        run, tag = tb.tags[key]
        got = read[run][tag]
        assert [step for step, _ in got] == history.epoch, (key, run, tag)
        for (_, value), want in zip(got, values, strict=True):
            assert same(value, f32(want)), (key, value, want)
    placed = {(run, tag) for run, tag in tb.tags.values()}
    extra = {(run, tag) for run in read for tag in read[run] if tag.startswith("epoch_")} - placed
    assert all(run == "train" and tag.startswith("epoch_learning_rate") for run, tag in extra)


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*"))


def open_files_under(folder: Path) -> list[str]:
    """Files under ``folder`` that this process holds open (Linux: /proc/self/fd)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


# -- the NumPy reference trainer ---------------------------------------------------------------


def blobs(seed: int = 0, n: int = 64) -> tuple[Any, ...]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(0, 2.0, size=(2, 4))[y] + rng.normal(size=(n, 4))
    cut = n * 3 // 4
    return x[:cut], y[:cut], x[cut:], y[cut:]


def numpy_run(bus: EventBus, epochs: int = 3, **fit: Any) -> NumpyTrainer:
    x, y, xv, yv = blobs()
    trainer = NumpyTrainer(bus=bus, hidden=(8,), seed=0, lr=0.1,
                           lr_schedule=fit.pop("lr_schedule", None))  # fmt: skip
    trainer.fit(x, y, epochs=epochs, batch_size=16, validation_data=(xv, yv), **fit)
    return trainer


@pytest.mark.parametrize("background", [True, False])
def test_numpy_epochs_in_keras_layout_equal_history(tmp_path: Path, background: bool) -> None:
    bus = EventBus(check_order=True)
    tb = TensorBoard(tmp_path / "logs")
    history = History()
    bus.attach(tb, background=background)
    bus.attach(history)
    numpy_run(bus)
    assert history.epoch == [0, 1, 2]
    assert tb.tags == {
        "loss": ("train", "epoch_loss"), "accuracy": ("train", "epoch_accuracy"),
        "val_loss": ("validation", "epoch_loss"),
        "val_accuracy": ("validation", "epoch_accuracy"),
    }  # fmt: skip
    assert_history_written(tmp_path / "logs", tb, history)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["train", "validation"]
    assert len(event_files(tmp_path / "logs" / "train")) == 1
    assert not open_files_under(tmp_path / "logs")


def test_background_is_the_class_default() -> None:
    assert TensorBoard.background is True


def test_the_runs_parameters_are_a_markdown_table(tmp_path: Path) -> None:
    bus = EventBus()
    bus.attach(TensorBoard(tmp_path))
    numpy_run(bus, epochs=1)
    written = texts(tmp_path / "train")
    assert list(written) == ["params"]
    [(step, table)] = written["params"]
    lines = table.splitlines()
    assert step == 0
    assert lines[:2] == ["| parameter | value |", "|---|---|"]
    assert "| epochs | 1 |" in lines and "| batch_size | 16 |" in lines
    assert "| steps | 3 |" in lines  # the params of on_train_start: known by then
    assert texts(tmp_path / "validation") == {}


def test_params_cells_are_escaped_and_no_params_write_no_text(tmp_path: Path) -> None:
    bus = EventBus()
    bus.attach(TensorBoard(tmp_path / "a"))
    with Run(bus, params={"a|b": "x\ny", "path": "c:\\d", "n": None}) as run:
        run.train_start()
    [(_, table)] = texts(tmp_path / "a" / "train")["params"]
    assert table.splitlines()[2:] == ["| a\\|b | x y |", "| path | c:\\\\d |", "| n | None |"]
    bus = EventBus()
    bus.attach(TensorBoard(tmp_path / "b"))
    with Run(bus, params=None) as run:
        run.train_start()
    assert not (tmp_path / "b").exists()  # nothing to write: no file at all


# -- batches -----------------------------------------------------------------------------------


@pytest.mark.parametrize("freq", [1, "batch", 2, 4])
def test_update_freq_writes_every_nth_batch_with_a_run_wide_step(
    tmp_path: Path, freq: int | str
) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus, ["on_train_batch_end"])
    bus.attach(TensorBoard(tmp_path, update_freq=freq))  # type: ignore[arg-type]
    numpy_run(bus)  # 48 examples in batches of 16: 3 batches an epoch, 9 in the run
    n = 1 if freq == "batch" else int(freq)
    ends = rec.payloads("on_train_batch_end")
    assert len(ends) == 9
    want = {step: ends[step - 1].logs for step in range(1, 10) if step % n == 0}
    read = scalars(tmp_path / "train")
    for key in ("loss", "accuracy"):
        assert read[f"batch_{key}"] == [(s, f32(logs[key])) for s, logs in want.items()]
    assert not any(tag.startswith("batch_") for tag in scalars(tmp_path / "validation"))


def test_epoch_frequency_does_not_listen_to_batches(tmp_path: Path) -> None:
    """With update_freq="epoch" the trainer builds no batch logs for the callback."""
    bus = EventBus()
    bus.attach(TensorBoard(tmp_path))
    assert not bus.listening(events.on_train_batch_end)
    other = EventBus()
    other.attach(TensorBoard(tmp_path, update_freq=3))
    assert other.listening(events.on_train_batch_end)


@pytest.mark.parametrize("freq", [0, -1, True, 1.5, "step"])
def test_a_bad_update_freq_is_refused(tmp_path: Path, freq: Any) -> None:
    with pytest.raises(ValueError, match="update_freq"):
        TensorBoard(tmp_path, update_freq=freq)


# -- learning rates and other hyper-parameters --------------------------------------------------


def test_numpy_learning_rate_schedule_is_epoch_learning_rate(tmp_path: Path) -> None:
    bus = EventBus(check_order=True)
    rec = Recorder(bus, ["on_params_update"])
    bus.attach(TensorBoard(tmp_path, update_freq=3))
    numpy_run(bus, epochs=3, lr_schedule=lambda epoch: 0.1 / (epoch + 1))
    # the run's first rate is announced at its start; the rate of epoch e is set (and
    # announced) after epoch e - 1
    assert [(p.epoch, p.hyperparams) for p in rec.payloads("on_params_update")] == [
        (None, {"lr": 0.1}), (0, {"lr": 0.05}), (1, {"lr": 0.1 / 3})]  # fmt: skip
    read = scalars(tmp_path / "train")
    assert read["epoch_learning_rate"] == [(0, f32(0.1)), (1, f32(0.05)), (2, f32(0.1 / 3))]
    assert read["batch_learning_rate"] == [(3, f32(0.1)), (6, f32(0.05)), (9, f32(0.1 / 3))]
    assert "epoch_learning_rate" not in scalars(tmp_path / "validation")


def test_param_group_rates_tags_and_other_hyperparameters(tmp_path: Path) -> None:
    for options, folder in (({}, "lr"), ({"all_hyperparams": True}, "all")):
        bus = EventBus(check_order=True)
        bus.attach(TensorBoard(tmp_path / folder, **options))
        with Run(bus) as run:
            run.train_start()
            run.params_update({"lr/pg0": 0.1, "lr/pg1": 0.01, "momentum/pg0": 0.9, "lr_0": 1.0})
            for epoch in run.epochs(2):
                run.epoch_end({"loss": 1.0 / (epoch + 1)})
                run.params_update({"lr/pg1": 0.005})  # a change: the others are kept
        read = scalars(tmp_path / folder / "train")
        assert read["epoch_learning_rate/pg0"] == [(0, f32(0.1)), (1, f32(0.1))]
        assert read["epoch_learning_rate/pg1"] == [(0, f32(0.01)), (1, f32(0.005))]
        assert read["epoch_learning_rate_0"] == [(0, 1.0), (1, 1.0)]
        assert ("epoch_momentum/pg0" in read) is (folder == "all")


def test_a_learning_rate_in_the_logs_wins_over_the_announced_one(tmp_path: Path) -> None:
    """HF and Ultralytics put rates in epoch logs too: one value per step, History's."""
    bus = EventBus()
    history = History()
    tb = TensorBoard(tmp_path)
    bus.attach(tb)
    bus.attach(history)
    with Run(bus) as run:
        run.train_start()
        run.params_update({"learning_rate": 0.5, "lr/pg2": 0.25})
        for epoch in run.epochs(2):
            run.epoch_end({"loss": 1.0, "learning_rate": 0.1 * (epoch + 1)})
    read = scalars(tmp_path / "train")
    assert read["epoch_learning_rate"] == [(0, f32(0.1)), (1, f32(0.2))]
    assert read["epoch_learning_rate/pg2"] == [(0, 0.25), (1, 0.25)]
    assert_history_written(tmp_path, tb, history)


def test_lr_decay_is_not_a_learning_rate(tmp_path: Path) -> None:
    """Adagrad's ``lr_decay`` (and ``initial_accumulator_value``...) are hyper-parameters,
    written only with ``all_hyperparams=True``, under their own names; a learning rate keeps
    Keras' name, also Lightning's ``lr_0`` and LearningRateMonitor's ``lr-Adam``."""
    announced = {"lr": 0.01, "lr_decay": 0.0, "eps": 1e-10, "lr_0": 0.5, "lr-Adam/pg1": 0.25}
    for options, folder in (({}, "rates"), ({"all_hyperparams": True}, "all")):
        bus = EventBus(check_order=True)
        bus.attach(TensorBoard(tmp_path / folder, **options))
        with Run(bus) as run:
            run.train_start()
            run.params_update(announced)
            for _ in run.epochs(1):
                run.epoch_end({"loss": 1.0, "lr_decay_in_logs": 2.0})
        read = scalars(tmp_path / folder / "train")
        rates = {"epoch_learning_rate", "epoch_learning_rate_0", "epoch_learning_rate-Adam/pg1"}
        others = {"epoch_lr_decay", "epoch_eps"} if folder == "all" else set()
        assert set(read) == {"epoch_loss", "epoch_lr_decay_in_logs", *rates, *others}
    assert preferred("lr_decay") == ("train", "lr_decay")
    assert preferred("lr_decay_in_logs") == ("train", "lr_decay_in_logs")


# -- the mapping of Ultralytics' keys ----------------------------------------------------------


def test_ultralytics_keys_map_to_train_and_validation_twins(tmp_path: Path) -> None:
    logs = {
        "train/box_loss": 1.0, "train/cls_loss": 2.0, "loss": 3.0,
        "metrics/precision(B)": 0.5, "metrics/mAP50(B)": 0.25, "val/box_loss": 1.5,
        "val/cls_loss": 2.5, "val_loss": 4.0, "lr/pg0": 0.01, "lr/pg1": 0.02, "fitness": 0.3,
        # classification: the adapter's sums collide with Ultralytics' own loss keys
        "train/loss": 3.0, "val/loss": 4.0,
    }  # fmt: skip
    bus = EventBus()
    history = History()
    tb = TensorBoard(tmp_path)
    bus.attach(tb)
    bus.attach(history)
    with Run(bus) as run:
        for epoch in run.epochs(2):
            run.epoch_end({k: v + epoch for k, v in logs.items()})
    assert tb.tags == {
        "train/box_loss": ("train", "epoch_box_loss"),
        "train/cls_loss": ("train", "epoch_cls_loss"),
        "loss": ("train", "epoch_loss"),
        "metrics/precision(B)": ("train", "epoch_metrics/precision(B)"),
        "metrics/mAP50(B)": ("train", "epoch_metrics/mAP50(B)"),
        "val/box_loss": ("validation", "epoch_box_loss"),
        "val/cls_loss": ("validation", "epoch_cls_loss"),
        "val_loss": ("validation", "epoch_loss"),
        "lr/pg0": ("train", "epoch_learning_rate/pg0"),
        "lr/pg1": ("train", "epoch_learning_rate/pg1"),
        "fitness": ("train", "epoch_fitness"),
        "train/loss": ("train", "epoch_train/loss"),
        "val/loss": ("validation", "epoch_val/loss"),
    }
    assert_history_written(tmp_path, tb, history)


def test_preferred_places() -> None:
    assert preferred("val_acc") == ("validation", "acc")
    assert preferred("val/x") == ("validation", "x")
    assert preferred("train/x") == ("train", "x")
    assert preferred("lr") == ("train", "learning_rate")
    assert preferred("train/lr/pg0") == ("train", "learning_rate/pg0")
    assert preferred("train_acc") == ("train", "acc")  # Lightning users' twins
    assert preferred("lr-Adam/pg1") == ("train", "learning_rate-Adam/pg1")
    assert preferred("lr_0") == ("train", "learning_rate_0")
    assert preferred("lr_decay") == ("train", "lr_decay")
    assert preferred("learning_rate_decay") == ("train", "learning_rate_decay")
    assert preferred("lrx") == ("train", "lrx")
    assert preferred("valx") == ("train", "valx")
    assert preferred("val_") == ("train", "val_")  # nothing left to name: kept whole
    assert preferred("train/") == ("train", "train/")


# st.text() includes lone surrogates: not UTF-8, yet a tag (written as "\\udcxx" text)
_names = st.text(max_size=12) | st.sampled_from(
    ["loss", "val_loss", "train/loss", "val/loss", "lr", "lr/pg0", "learning_rate",
     "train/lr", "val_", "val/", "train/", "epoch_loss", "loss (2)", "train/loss (2)"]
)  # fmt: skip
_values = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-1e6, 1e6)


@settings(max_examples=60)
@given(epochs=st.lists(st.dictionaries(_names, _values, max_size=8), min_size=1, max_size=3))
def test_any_metric_names_and_values_round_trip(epochs: list[dict[str, float]]) -> None:
    """Each key gets a tag of its own (fixed for the run) and every value reads back."""
    with tempfile.TemporaryDirectory() as folder:
        log_dir = Path(folder)
        bus = EventBus()
        tb = TensorBoard(log_dir)
        bus.attach(tb, background=False)
        with Run(bus) as run:
            for logs in epochs:
                run.epoch_start()
                run.epoch_end(logs)
        places = list(tb.tags.values())
        assert len(places) == len(set(places)) == len({k for logs in epochs for k in logs})
        read = {run: scalars(log_dir / run) for run in ("train", "validation")}
        for epoch, logs in enumerate(epochs):
            for key, value in logs.items():
                run_name, tag = tb.tags[key]
                [got] = [v for step, v in read[run_name][tag] if step == epoch]
                assert same(got, f32(value)), (key, got, value)
        assert not open_files_under(log_dir)


# -- ranks -------------------------------------------------------------------------------------


def fake_run(bus: EventBus, rank: int) -> None:
    with Run(bus, params={"epochs": 2}, rank=rank, world_size=2) as run:
        run.train_start()
        run.params_update({"lr": 0.1})
        for _ in run.epochs(2):
            run.batch_start()
            run.batch_end({"loss": 1.0})
            run.epoch_end({"loss": 1.0, "val_loss": 2.0})


def test_rank_other_than_zero_writes_nothing(tmp_path: Path) -> None:
    bus = EventBus()
    bus.attach(TensorBoard(tmp_path / "logs", update_freq=1))
    fake_run(bus, rank=1)
    assert not (tmp_path / "logs").exists()
    fake_run(bus, rank=0)
    assert scalars(tmp_path / "logs" / "train")["epoch_loss"] == [(0, 1.0), (1, 1.0)]


def test_all_ranks_write_to_their_rank_folder(tmp_path: Path) -> None:
    bus = EventBus()
    bus.attach(TensorBoard(tmp_path / "logs" / "rank{rank}", all_ranks=True))
    fake_run(bus, rank=1)
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["rank1"]
    validation = scalars(tmp_path / "logs" / "rank1" / "validation")
    assert validation == {"epoch_loss": [(0, 2.0), (1, 2.0)]}


# -- files: failures, second runs ---------------------------------------------------------------


class FailsAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_fit_epoch_end(self, payload: EpochPayload) -> None:
        if payload.epoch == self.epoch:
            raise RuntimeError("subscriber broke")


@pytest.mark.parametrize("background", [True, False])
def test_a_failing_subscriber_leaves_closed_readable_files(
    tmp_path: Path, background: bool
) -> None:
    bus = EventBus()
    history = History()
    tb = TensorBoard(tmp_path, update_freq=1)
    bus.attach(tb, background=background)
    bus.attach(history)
    bus.attach(FailsAt(1))
    rec = Recorder(bus, ["teardown"])
    with pytest.raises(SubscriberError):
        numpy_run(bus, epochs=3)
    assert rec.payloads("teardown")[0].error is not None
    assert not open_files_under(tmp_path)
    assert history.epoch == [0, 1]  # the subscriber failed after History heard epoch 1
    assert_history_written(tmp_path, tb, history)
    assert [s for s, _ in scalars(tmp_path / "train")["batch_loss"]] == list(range(1, 7))


def test_the_models_step_raising_leaves_closed_readable_files(tmp_path: Path) -> None:
    import torch

    from eventhooks.adapters.torch import instrument

    bus = EventBus(check_order=True)
    history = History()
    tb = TensorBoard(tmp_path)
    bus.attach(tb)
    bus.attach(history)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    mse = torch.nn.MSELoss()
    steps = 0
    with pytest.raises(FloatingPointError, match="step 5"), instrument(bus, opt) as run:
        for _ in run.epochs(3):
            for i in range(0, 16, 8):
                if steps == 5:  # the third epoch's second batch
                    raise FloatingPointError("step 5 broke")
                steps += 1
                opt.zero_grad()
                loss = mse(model(x[i : i + 8]), y[i : i + 8])
                loss.backward()
                opt.step()
                run.log(loss=loss)
    assert not open_files_under(tmp_path)
    assert history.epoch == [0, 1]
    assert_history_written(tmp_path, tb, history)


def test_a_second_run_writes_new_event_files(tmp_path: Path) -> None:
    bus = EventBus()
    tb = TensorBoard(tmp_path, update_freq=2)
    bus.attach(tb)
    histories = []
    for epochs in (2, 3):
        history = History()
        attached = bus.attach(history)
        numpy_run(bus, epochs=epochs)
        attached.disconnect()
        histories.append(history)
    for run in ("train", "validation"):
        files = event_files(tmp_path / run)
        assert len(files) == 2
        for file, history in zip(files, histories, strict=True):
            loss = scalars(file)["epoch_loss"]
            key = "loss" if run == "train" else "val_loss"
            assert loss == [(e, f32(v)) for e, v in zip(history.epoch, history.history[key],
                                                         strict=True)]  # fmt: skip
    # the batch count restarts with each run
    assert [s for s, _ in scalars(event_files(tmp_path / "train")[1])["batch_loss"]] == [
        2, 4, 6, 8]  # fmt: skip
    assert not open_files_under(tmp_path)


@pytest.mark.parametrize("background", [False, True])
def test_a_run_started_inside_a_run_writes_its_own_folders(
    tmp_path: Path, background: bool
) -> None:
    """A subscriber's run inside the training run (MLflow makes it a child run) goes to
    ``nested-1/``, ``nested-2/``: the outer run's curves and batch steps stay its own."""
    log_dir = tmp_path / "tb"
    bus = EventBus()
    bus.attach(TensorBoard(log_dir, update_freq=1), background=background)

    def fit(epochs: int, base: float, nested: int = 0) -> None:
        with Run(bus, params={"base": base}) as run:
            for epoch in run.epochs(epochs):
                run.batch_start()
                run.batch_end({"loss": base + epoch})
                run.epoch_end({"loss": base + epoch, "val_loss": base + epoch + 0.5})
                if epoch < nested:
                    fit(2, 100.0 * (epoch + 1))

    fit(3, 0.0, nested=2)
    assert scalars(log_dir / "train")["epoch_loss"] == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert scalars(log_dir / "validation")["epoch_loss"] == [(0, 0.5), (1, 1.5), (2, 2.5)]
    assert [s for s, _ in scalars(log_dir / "train")["batch_loss"]] == [1, 2, 3]
    assert list(texts(log_dir / "train")) == ["params"]
    for n, base in ((1, 100.0), (2, 200.0)):
        nested = log_dir / f"nested-{n}"
        assert scalars(nested / "train")["epoch_loss"] == [(0, base), (1, base + 1)]
        assert scalars(nested / "validation")["epoch_loss"] == [(0, base + 0.5), (1, base + 1.5)]
    folders = sorted(p.name for p in log_dir.iterdir())
    assert folders == ["nested-1", "nested-2", "train", "validation"]
    assert not open_files_under(log_dir)


# -- without tensorboard -----------------------------------------------------------------------


def test_without_tensorboard_importing_works_and_creating_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['tensorboard'] = None\n"
        "import eventhooks, eventhooks.callbacks.tensorboard as m\n"
        "from eventhooks.plot import MissingExtraError\n"
        "try:\n"
        "    m.TensorBoard('logs')\n"
        "except MissingExtraError as exc:\n"
        "    assert isinstance(exc, ImportError)\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "pip install 'eventhooks[tensorboard]'" in done.stdout
    # and importing the module imports no tensorboard
    code = "import sys, eventhooks.callbacks.tensorboard\nprint('tensorboard' in sys.modules)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.stdout.strip() == "False", done.stderr


# -- every adapter ------------------------------------------------------------------------------


def check_framework_run(log_dir: Path, tb: TensorBoard, history: History, epochs: int) -> None:
    assert history.epoch == list(range(epochs))
    assert tb.tags["loss"] == ("train", "epoch_loss")
    assert tb.tags["val_loss"] == ("validation", "epoch_loss")
    assert_history_written(log_dir, tb, history)
    assert not open_files_under(log_dir)


def attach_both(bus: EventBus, log_dir: Path, **options: Any) -> tuple[TensorBoard, History]:
    tb, history = TensorBoard(log_dir, **options), History()
    bus.attach(tb)
    bus.attach(history)
    return tb, history


def test_under_the_pytorch_fit_loop(tmp_path: Path) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from eventhooks.adapters.torch import fit

    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(32, 4, generator=g), torch.randn(16, 4, generator=g)
    y, yv = (x[:, 0] > 0).long(), (xv[:, 0] > 0).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.4)
    bus = EventBus(check_order=True)
    tb, history = attach_both(bus, tmp_path, update_freq=2)
    fit(model, opt, torch.nn.functional.cross_entropy, DataLoader(TensorDataset(x, y), 8),
        epochs=3, bus=bus, val_loader=DataLoader(TensorDataset(xv, yv), 8),
        metrics={"accuracy": lambda o, t: (o.argmax(1) == t).float().mean()},
        scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))  # fmt: skip
    check_framework_run(tmp_path, tb, history, 3)
    read = scalars(tmp_path / "train")
    # the initial rate at the run's start, then StepLR's after epochs 0 and 1 (and 2)
    assert read["epoch_learning_rate"] == [(0, f32(0.4)), (1, f32(0.2)), (2, f32(0.1))]
    assert [s for s, _ in read["batch_loss"]] == [2, 4, 6, 8, 10, 12]


def test_under_keras(tmp_path: Path) -> None:
    import keras  # type: ignore[import-untyped]

    from eventhooks.adapters.keras import fit

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, "relu"),
                              keras.layers.Dense(2, "softmax")])  # fmt: skip
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])  # fmt: skip
    x, y, xv, yv = (a.astype("float32") if a.dtype.kind == "f" else a for a in blobs())
    bus = EventBus(check_order=True)
    tb, history = attach_both(bus, tmp_path)
    keras_history = fit(model, x, y, epochs=3, batch_size=16, validation_data=(xv, yv),
                        verbose=0, bus=bus)  # fmt: skip
    check_framework_run(tmp_path, tb, history, 3)
    assert tb.tags["val_accuracy"] == ("validation", "epoch_accuracy")
    assert scalars(tmp_path / "validation")["epoch_accuracy"] == [
        (e, f32(v)) for e, v in enumerate(keras_history.history["val_accuracy"])]  # fmt: skip
    # the optimizer's rate, as Keras' own TensorBoard callback writes it
    assert scalars(tmp_path / "train")["epoch_learning_rate"] == [(e, f32(0.1)) for e in range(3)]


def test_under_keras_with_a_learning_rate_scheduler(tmp_path: Path) -> None:
    import keras

    from eventhooks.adapters.keras import KerasCallback

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, "softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    x, y, _, _ = blobs()
    bus = EventBus(check_order=True)
    tb = TensorBoard(tmp_path)
    bus.attach(tb)
    # ours first: the scheduler sets each epoch's rate after our on_epoch_begin
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    model.fit(x.astype("float32"), y, epochs=3, batch_size=16, verbose=0,
              callbacks=[KerasCallback(bus), scheduler])  # fmt: skip
    bus.flush()
    assert scalars(tmp_path / "train")["epoch_learning_rate"] == [
        (e, f32(0.1 / (e + 1))) for e in range(3)]  # fmt: skip


def test_under_lightning(tmp_path: Path) -> None:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from eventhooks.adapters.lightning import LightningCallback

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
            self.log("loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}

    def loader(n: int, seed: int) -> DataLoader[Any]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 4, generator=g)
        return DataLoader(TensorDataset(x, x[:, :1] * 2), batch_size=4)

    torch.manual_seed(0)
    bus = EventBus(check_order=True)
    tb, history = attach_both(bus, tmp_path / "tb", update_freq=1)
    trainer = pl.Trainer(
        callbacks=[LightningCallback(bus)], max_epochs=3, accelerator="cpu", devices=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path / "pl", num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Tiny(), loader(12, 0), loader(8, 1))
    check_framework_run(tmp_path / "tb", tb, history, 3)
    read = scalars(tmp_path / "tb" / "train")
    assert read["epoch_learning_rate"] == [(0, f32(0.1)), (1, f32(0.05)), (2, f32(0.025))]
    assert [s for s, _ in read["batch_loss"]] == list(range(1, 10))
    [(_, table)] = texts(tmp_path / "tb" / "train")["params"]
    assert "| max_epochs | 3 |" in table.splitlines()


def test_under_the_hugging_face_trainer(tmp_path: Path) -> None:
    import torch
    from transformers import Trainer, TrainingArguments

    from eventhooks.adapters.transformers import TransformersCallback, train

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
            logits = self.linear(x)
            return {"logits": logits, "loss": torch.nn.functional.cross_entropy(logits, labels)}

    class Data(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
        def __init__(self, n: int, seed: int) -> None:
            g = torch.Generator().manual_seed(seed)
            self.x, self.y = torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"x": self.x[i], "labels": self.y[i]}

    bus = EventBus(check_order=True)
    tb, history = attach_both(bus, tmp_path / "tb")
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, num_train_epochs=2,
        per_device_train_batch_size=4, per_device_eval_batch_size=4, eval_strategy="epoch",
        save_strategy="no", learning_rate=0.1, disable_tqdm=True, dataloader_num_workers=0,
        seed=0,
    )  # fmt: skip
    trainer = Trainer(model=Tiny(), args=args, train_dataset=Data(16, 0),
                      eval_dataset=Data(8, 1), callbacks=[TransformersCallback(bus)])  # fmt: skip
    train(trainer, bus)
    check_framework_run(tmp_path / "tb", tb, history, 2)
    read = scalars(tmp_path / "tb" / "train")
    # linear decay from 0.1 over 8 steps: the rate at each epoch's end
    assert [s for s, _ in read["epoch_learning_rate"]] == [0, 1]
    [(_, table)] = texts(tmp_path / "tb" / "train")["params"]
    assert "| learning_rate | 0.1 |" in table.splitlines()


def test_under_ultralytics(tmp_path: Path) -> None:
    from _yolo_data import classification_dataset
    from ultralytics import YOLO

    from eventhooks.adapters.ultralytics import train

    data = classification_dataset(tmp_path / "data")
    model = YOLO("yolov8n-cls.yaml")
    bus = EventBus(check_order=True)
    tb, history = attach_both(bus, tmp_path / "tb")
    train(model, bus, data=str(data), epochs=2, imgsz=32, batch=4, pretrained=False, amp=False,
          plots=False, device="cpu", workers=0, project=str(tmp_path / "runs"), name="run",
          exist_ok=True, verbose=False)  # fmt: skip
    check_framework_run(tmp_path / "tb", tb, history, 2)
    assert tb.tags["train/loss"] == ("train", "epoch_train/loss")  # `loss` has epoch_loss
    assert tb.tags["val/loss"] == ("validation", "epoch_val/loss")
    assert tb.tags["lr/pg0"] == ("train", "epoch_learning_rate/pg0")
    assert tb.tags["val_accuracy"] == ("validation", "epoch_accuracy")
    assert tb.tags["metrics/accuracy_top1"] == ("train", "epoch_metrics/accuracy_top1")
