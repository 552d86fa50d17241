"""``eventhooks replay LOG --tensorboard DIR --mlflow URI``: a recorded run into trackers.

Real files: TensorBoard's event files are read back with its own ``EventAccumulator``;
MLflow runs go to a sqlite store in a temporary folder (the working folder, since a sqlite
store puts artifacts under ``<cwd>/mlruns``) and are read back with ``MlflowClient``. A
killed run's log (no ``teardown``, maybe a last line cut off) ends its MLflow run ``FAILED``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _network import NetworkGuard
from test_cli import killed_run, one_line_error, run

from eventhooks import EventBus
from eventhooks._cli_commands import script_command
from eventhooks.callbacks import EventLog

EPOCHS = [
    {"loss": 0.9, "val_loss": 1.1, "accuracy": 0.5, "val_accuracy": 0.4, "lr": 0.01},
    {"loss": 0.6, "val_loss": 0.8, "accuracy": 0.7, "val_accuracy": 0.6, "lr": 0.005},
    {"loss": 0.4, "val_loss": 0.9, "accuracy": 0.8, "val_accuracy": 0.65, "lr": 0.0025},
]


def write_log(path: Path, runs: list[tuple[list[dict[str, float]], str | None]]) -> Path:
    """A log of whole runs: each its epochs and its teardown's error (None: it finished)."""
    bus = EventBus()
    with EventLog(path) as writer:
        bus.attach(writer)
        for epochs, error in runs:
            bus.emit("on_pretrain_routine_start")
            bus.emit("on_train_start")
            for epoch, logs in enumerate(epochs):
                bus.emit("on_fit_epoch_end", epoch=epoch, logs=logs)
            if error is None:
                bus.emit("on_train_end", epoch=len(epochs) - 1, logs=epochs[-1])
            bus.emit("teardown", error=error)
    return path


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A sqlite MLflow store in ``tmp_path``, the working folder; no network at all."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    guard = NetworkGuard()
    with guard.active():
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert guard.attempts == [], guard.attempts


def mlflow_runs(uri: str, experiment: str = "0") -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    return list(found)


def history(uri: str, run_id: str, key: str) -> list[tuple[int, Any]]:
    from mlflow import MlflowClient

    metrics = MlflowClient(uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in metrics)


def scalars(folder: Path) -> dict[str, list[tuple[int, Any]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# -- TensorBoard ---------------------------------------------------------------------------


def test_a_recorded_run_lands_in_tensorboard(capsys: Any, tmp_path: Path) -> None:
    log = write_log(tmp_path / "run" / "events.jsonl", [(EPOCHS, None)])
    tb = tmp_path / "tb"
    code, out, err = run(capsys, "replay", str(log), "--tensorboard", str(tb))
    assert code == 0 and err == ""
    tensorboard = script_command("tensorboard", "tensorboard.main")
    assert f"TensorBoard: {tb} (see it: {tensorboard} --logdir {tb})" in out.splitlines()
    train, validation = scalars(tb / "train"), scalars(tb / "validation")
    for key, tag in (("loss", "epoch_loss"), ("accuracy", "epoch_accuracy"),
                     ("lr", "epoch_learning_rate")):  # fmt: skip
        assert train[tag] == [(i, pytest.approx(e[key], rel=1e-6)) for i, e in enumerate(EPOCHS)]
    for key, tag in (("val_loss", "epoch_loss"), ("val_accuracy", "epoch_accuracy")):
        assert validation[tag] == [
            (i, pytest.approx(e[key], rel=1e-6)) for i, e in enumerate(EPOCHS)
        ]


def test_the_tensorboard_command_printed_runs_as_shown(
    capsys: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The printed ``tensorboard --logdir`` is pasteable as the demo's commands are: the
    environment's own script when ``tensorboard`` on PATH is not it (a venv not activated)."""
    log = write_log(tmp_path / "run" / "events.jsonl", [(EPOCHS, None)])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "replay", str(log), "--tensorboard", "tb dir")
    assert code == 0
    (line,) = [line for line in out.splitlines() if line.startswith("TensorBoard: ")]
    command = line.split("(see it: ", 1)[1].removesuffix(")")
    assert command == f"{Path(sys.executable).parent / 'tensorboard'} --logdir 'tb dir'"
    pasted = subprocess.run(
        f"{command} --help", shell=True, capture_output=True, text=True, cwd=tmp_path
    )  # fmt: skip
    assert pasted.returncode == 0, pasted.stderr


def test_a_killed_runs_log_lands_in_tensorboard_up_to_where_it_ends(
    capsys: Any, tmp_path: Path
) -> None:
    log, tb = tmp_path / "killed.jsonl", tmp_path / "tb"
    killed_run(log, 3, per_mille_kept=500)  # epoch 2's line cut off
    code, out, _ = run(capsys, "replay", str(log), "--tensorboard", str(tb))
    assert code == 3 and out.splitlines()[-1].startswith("log ends early: line 5 is cut off")
    assert scalars(tb / "train")["epoch_loss"] == [(0, 1.0), (1, 0.5)]


# -- MLflow --------------------------------------------------------------------------------


def test_a_recorded_run_lands_in_mlflow_finished(capsys: Any, tmp_path: Path, store: str) -> None:
    log = write_log(tmp_path / "run" / "events.jsonl", [(EPOCHS, None)])
    code, out, err = run(capsys, "replay", str(log), "--mlflow", store,
                         "--mlflow-experiment", "replays")  # fmt: skip
    assert code == 0, err
    from mlflow import MlflowClient

    experiment = MlflowClient(store).get_experiment_by_name("replays")
    assert experiment is not None
    (mlrun,) = mlflow_runs(store, experiment.experiment_id)
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run/events.jsonl"
    assert (
        f"MLflow: run {mlrun.info.run_id} (FINISHED) in experiment "
        f"{experiment.experiment_id} at {store}"
    ) in out.splitlines()
    for key in EPOCHS[0]:
        assert history(store, mlrun.info.run_id, key) == [
            (i, pytest.approx(e[key])) for i, e in enumerate(EPOCHS)
        ]
    assert "eventhooks.error" not in mlrun.data.tags


@pytest.mark.parametrize("per_mille_kept", [None, 400])
def test_a_killed_runs_log_ends_failed_in_mlflow(
    capsys: Any, tmp_path: Path, store: str, per_mille_kept: int | None
) -> None:
    """No teardown in the log (the process was killed, maybe mid-line): the replay ends the
    run with a teardown carrying an error, so MLflow shows it as crashed."""
    log = tmp_path / "killed.jsonl"
    killed_run(log, 3, per_mille_kept=per_mille_kept)
    code, out, err = run(capsys, "replay", str(log), "--mlflow", store)
    assert code == 3 and err == ""
    epochs = 3 if per_mille_kept is None else 2
    assert out.splitlines()[0] == f"replayed {2 + epochs} events, {epochs} epochs from {log}"
    (mlrun,) = mlflow_runs(store)
    assert mlrun.info.status == "FAILED"
    error = mlrun.data.tags["eventhooks.error"]
    assert error.startswith(f"RunCutOff: {log}: log ends early: ")
    assert "the run that starts at line 1 has no teardown" in error
    assert history(store, mlrun.info.run_id, "loss") == [
        (i, pytest.approx(1.0 / (i + 1))) for i in range(epochs)
    ]
    assert f"MLflow: run {mlrun.info.run_id} (FAILED) in experiment 0 at {store}" in out


def test_a_ctrl_c_runs_log_ends_killed_in_mlflow(capsys: Any, tmp_path: Path, store: str) -> None:
    """A run stopped by Ctrl-C is KILLED live; replayed from its log, it is KILLED too."""
    log = write_log(tmp_path / "interrupted.jsonl", [(EPOCHS[:2], "KeyboardInterrupt: ")])
    code, out, err = run(capsys, "replay", str(log), "--mlflow", store)
    assert code == 0 and err == ""
    (mlrun,) = mlflow_runs(store)
    assert mlrun.info.status == "KILLED"
    assert f"MLflow: run {mlrun.info.run_id} (KILLED) in experiment 0 at {store}" in out


def test_a_checkpoint_saved_every_epoch_is_uploaded_once(
    capsys: Any, tmp_path: Path, store: str
) -> None:
    """A replay reads a checkpoint's file as it is now, not as it was at each recorded save:
    a ``last.pt`` saved every epoch is one upload, not one per epoch."""
    from mlflow import MlflowClient

    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(b"weights")
    log = tmp_path / "events.jsonl"
    bus = EventBus()
    with EventLog(log) as writer:
        bus.attach(writer)
        bus.emit("on_pretrain_routine_start")
        bus.emit("on_train_start")
        for epoch, logs in enumerate(EPOCHS):
            bus.emit("on_model_save", path=str(checkpoint), epoch=epoch, logs=logs)
            bus.emit("on_fit_epoch_end", epoch=epoch, logs=logs)
        bus.emit("on_train_end", epoch=len(EPOCHS) - 1, logs=EPOCHS[-1])
        bus.emit("teardown")
    uploads: list[str] = []
    real = MlflowClient.log_artifact

    def counted(self: Any, run_id: str, local_path: str, artifact_path: Any = None) -> None:
        uploads.append(local_path)
        real(self, run_id, local_path, artifact_path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MlflowClient, "log_artifact", counted)
        code, _, err = run(capsys, "replay", str(log), "--mlflow", store)
    assert code == 0 and err == ""
    assert uploads == [str(checkpoint)]
    (mlrun,) = mlflow_runs(store)
    client = MlflowClient(store)
    assert [a.path for a in client.list_artifacts(mlrun.info.run_id, "checkpoints")] == [
        "checkpoints/last.pt"
    ]


def test_a_crashed_run_with_its_teardown_recorded_is_failed_once(
    capsys: Any, tmp_path: Path, store: str
) -> None:
    """Two runs: one finished, one that crashed (its teardown with the error is in the log)."""
    log = write_log(tmp_path / "two.jsonl", [
        (EPOCHS, None), (EPOCHS[:1], "RuntimeError: CUDA out of memory"),
    ])  # fmt: skip
    code, out, err = run(capsys, "replay", str(log), "--mlflow", store, "--tensorboard",
                         str(tmp_path / "tb"))  # fmt: skip
    assert code == 0, err
    first, second = mlflow_runs(store)
    assert first.info.status == "FINISHED" and second.info.status == "FAILED"
    assert second.data.tags["eventhooks.error"] == "RuntimeError: CUDA out of memory"
    assert history(store, second.info.run_id, "loss") == [(0, pytest.approx(0.9))]
    assert sum(line.startswith("MLflow: run ") for line in out.splitlines()) == 2


def test_names_mlflow_refuses_are_reported_once(capsys: Any, tmp_path: Path, store: str) -> None:
    logs = [{"metrics/mAP50(B)": 0.1 * (i + 1), "loss": 1.0} for i in range(2)]
    log = write_log(tmp_path / "yolo.jsonl", [(logs, None)])
    code, out, err = run(capsys, "replay", str(log), "--mlflow", store)
    assert code == 0 and err == ""  # no warning per name
    assert "MLflow: names it refuses were renamed: 'metrics/mAP50(B)' -> 'metrics/mAP50_B_'" in out
    (mlrun,) = mlflow_runs(store)
    assert history(store, mlrun.info.run_id, "metrics/mAP50_B_") == [
        (0, pytest.approx(0.1)), (1, pytest.approx(0.2))
    ]  # fmt: skip


def test_a_log_without_training_logs_nothing(capsys: Any, tmp_path: Path, store: str) -> None:
    log = tmp_path / "predict.jsonl"
    log.write_text(
        '{"v": 1, "event": "on_predict_start", "payload": {}}\n'
        '{"v": 1, "event": "on_predict_end", "payload": {}}\n'
    )
    code, out, _ = run(capsys, "replay", str(log), "--mlflow", store, "--tensorboard",
                       str(tmp_path / "tb"))  # fmt: skip
    assert code == 0
    assert "MLflow: no training run in the log: nothing logged" in out
    assert "TensorBoard: no training run in the log: nothing written" in out
    assert mlflow_runs(store) == [] and not (tmp_path / "tb").exists()


# -- a tracker not installed ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "module", "extra"),
    [("--mlflow", "mlflow", "mlflow"), ("--tensorboard", "tensorboard", "tensorboard")],
)
def test_a_missing_tracker_is_a_one_line_error(
    tmp_path: Path, option: str, module: str, extra: str
) -> None:
    log = write_log(tmp_path / "events.jsonl", [(EPOCHS, None)])
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"  # as if it were not installed
        "from eventhooks.cli import main\n"
        f"sys.exit(main(['replay', {str(log)!r}, {option!r}, {str(tmp_path / 'out')!r}, "
        f"'--csv', {str(tmp_path / 'h.csv')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert f"pip install 'eventhooks[{extra}]'" in one_line_error(done.stderr, "eventhooks replay")
    assert not (tmp_path / "out").exists() and not (tmp_path / "h.csv").exists()


# -- review of #14: several runs, a replay that fails midway -----------------------------------


def test_each_run_of_a_log_gets_its_own_tensorboard_folder(capsys: Any, tmp_path: Path) -> None:
    """Two runs in one log are two TensorBoard runs, not one chart whose steps go 0, 1, 2,
    0, 1: each goes to ``DIR/run-<n>`` (numbered from 1, in the log's order)."""
    log = write_log(tmp_path / "two.jsonl", [(EPOCHS, None), (EPOCHS[1:], None)])
    tb = tmp_path / "tb"
    code, out, err = run(capsys, "replay", str(log), "--tensorboard", str(tb))
    assert code == 0 and err == ""
    assert sorted(p.name for p in tb.iterdir()) == ["run-1", "run-2"]
    for folder, epochs in (("run-1", EPOCHS), ("run-2", EPOCHS[1:])):
        assert scalars(tb / folder / "validation")["epoch_loss"] == [
            (i, pytest.approx(e["val_loss"])) for i, e in enumerate(epochs)
        ]
        assert scalars(tb / folder / "train")["epoch_loss"] == [
            (i, pytest.approx(e["loss"])) for i, e in enumerate(epochs)
        ]
    line = next(line for line in out.splitlines() if line.startswith("TensorBoard: "))
    assert line.startswith(f"TensorBoard: {tb} (2 runs: run-1, run-2; see it: ")


def test_a_replay_that_fails_midway_leaves_no_mlflow_run_running(
    capsys: Any, tmp_path: Path, store: str
) -> None:
    """One tracker failing (TensorBoard's folder is a file) stops the replay with a one-line
    error; the MLflow run it had opened is ended FAILED with that error, not left RUNNING."""
    log = write_log(tmp_path / "events.jsonl", [(EPOCHS, None)])
    (tmp_path / "tb").write_text("a file, not a folder")
    code, _, err = run(capsys, "replay", str(log), "--mlflow", store,
                         "--tensorboard", str(tmp_path / "tb"))  # fmt: skip
    assert code == 1 and "Not a directory" in one_line_error(err, "eventhooks replay")
    (mlrun,) = mlflow_runs(store)
    assert mlrun.info.status == "FAILED"
    assert "Not a directory" in mlrun.data.tags["eventhooks.error"]


def test_a_killed_run_whose_nested_run_had_ended_ends_failed(
    capsys: Any, tmp_path: Path, store: str
) -> None:
    """A run killed after a run started inside it had ended: the inner run's teardown is not
    the outer run's. The log ends early (status 3, said in the last line) and the outer
    MLflow run ends FAILED, not RUNNING."""
    log = tmp_path / "nested.jsonl"
    bus = EventBus()
    with EventLog(log) as writer:
        bus.attach(writer)
        bus.emit("on_pretrain_routine_start")
        bus.emit("on_train_start")
        bus.emit("on_fit_epoch_end", epoch=0, logs={"loss": 1.0})
        bus.emit("on_pretrain_routine_start")  # a run started by a subscriber
        bus.emit("on_train_start")
        bus.emit("on_fit_epoch_end", epoch=0, logs={"loss": 9.0})
        bus.emit("on_train_end")
        bus.emit("teardown")
        bus.emit("on_fit_epoch_end", epoch=1, logs={"loss": 0.5})  # then killed
    code, out, err = run(capsys, "replay", str(log), "--mlflow", store)
    assert code == 3 and err == ""
    assert out.splitlines()[-1] == (
        "log ends early: the run that starts at line 1 has no teardown (a killed run?)"
    )
    outer, inner = mlflow_runs(store)
    assert inner.data.tags["mlflow.parentRunId"] == outer.info.run_id
    assert (outer.info.status, inner.info.status) == ("FAILED", "FINISHED")
    assert outer.data.tags["eventhooks.error"].startswith(f"RunCutOff: {log}: log ends early")
    assert history(store, outer.info.run_id, "loss") == [(0, 1.0), (1, 0.5)]
