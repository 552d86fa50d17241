"""MLflowLogger against a real local store (sqlite) and a real ``mlflow server`` on 127.0.0.1.

Results are read back with ``MlflowClient``. Every test runs under a network guard that lets
the loopback through and fails on anything else. The server is started once per session in a
temporary folder, in its own process group, and that group is ended (PRODUCT.md §4).
"""

from __future__ import annotations

import math
import os
import posixpath
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _network import NetworkAttempt, NetworkGuard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from mlflow.entities import Run as MlflowRun
from mlflow.utils.validation import path_not_unique, validate_param_and_metric_name

from eventhooks import EventBus, SubscriberError, events
from eventhooks.adapters.numpy import NumpyTrainer
from eventhooks.callbacks import History, ModelCheckpoint
from eventhooks.callbacks.mlflow_logger import (
    MAX_KEY_LENGTH,
    MAX_PARAM_LENGTH,
    MLflowLogger,
    flatten_params,
    mlflow_name,
)
from eventhooks.lifecycle import Run
from eventhooks.plot import MissingExtraError

SERVER_START_TIMEOUT = 90.0

# MLflow's sqlite store configures SQLAlchemy with a deprecated loader (its business, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:.*``noload`` loader strategy:DeprecationWarning")


# -- stores ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the local store and its artifacts live (the tests run from here: a sqlite
    store puts artifacts under ``<cwd>/mlruns``)."""
    return tmp_path_factory.mktemp("mlflow-local")


@pytest.fixture(autouse=True)
def _in_store_dir(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(store_dir)


@pytest.fixture(autouse=True)
def guard() -> Iterator[NetworkGuard]:
    """Loopback only: any other connection or name lookup fails the test."""
    with NetworkGuard(allow_loopback=True).active() as guard:
        yield guard
    assert guard.attempts == [], f"network access beyond loopback: {guard.attempts}"


@pytest.fixture(scope="session")
def local_uri(store_dir: Path) -> str:
    return f"sqlite:///{store_dir / 'mlflow.db'}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (its job consumers too), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (a free port), started in a temp folder."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    command = [
        str(mlflow_cli), "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    out, err = open(folder / "stdout.txt", "wb"), open(folder / "stderr.txt", "wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        command, cwd=folder, env=env, stdout=out, stderr=err, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with NetworkGuard(allow_loopback=True).active() as guard:
            while True:
                if proc.poll() is not None:
                    problem = f"exited with code {proc.returncode}"
                    break
                if time.monotonic() - started > SERVER_START_TIMEOUT:
                    problem = f"did not answer /health within {SERVER_START_TIMEOUT:.0f} s"
                    break
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                        if answer.status == 200:
                            problem = ""
                            break
                except OSError:
                    time.sleep(0.25)
        assert guard.attempts == [], guard.attempts
        if problem:
            err.flush()
            stderr = (folder / "stderr.txt").read_text(errors="replace")[-4000:]
            pytest.fail(f"mlflow server {problem}: {' '.join(command)}\nstderr:\n{stderr}")
        print(f"\nmlflow server answered /health after {time.monotonic() - started:.1f} s")
        yield url
    finally:
        _end_group(proc)
        out.close()
        err.close()


@pytest.fixture(params=["local", "server"])
def uri(request: pytest.FixtureRequest) -> str:
    name = "local_uri" if request.param == "local" else "server_uri"
    return str(request.getfixturevalue(name))


def _experiment() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


# -- reading back ------------------------------------------------------------------------------


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            found |= _artifacts(client, run_id, item.path)
        else:
            found.add(item.path)
    return found


def _only_run(client: MlflowClient, experiment: str) -> MlflowRun:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, runs
    return runs[0]


# -- data --------------------------------------------------------------------------------------


def blobs(seed: int, n: int = 120, dim: int = 4, classes: int = 3) -> tuple[Any, ...]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 3.0, size=(classes, dim))
    y = rng.integers(0, classes, size=n)
    x = centers[y] + rng.normal(0.0, 1.0, size=(n, dim))
    cut = n * 3 // 4
    return x[:cut], y[:cut], x[cut:], y[cut:]


# -- a NumPy run -------------------------------------------------------------------------------


def test_a_numpy_run_is_one_mlflow_run_with_what_history_recorded(uri: str, tmp_path: Path) -> None:
    bus = EventBus()
    history = History()
    experiment = _experiment()
    logger = MLflowLogger(uri, experiment, "numpy-run", tags={"team": "vision"})
    for cb in (history, logger, ModelCheckpoint(tmp_path / "ckpt-{epoch:02d}.npz")):
        bus.attach(cb)
    x, y, xv, yv = blobs(0)
    trainer = NumpyTrainer(bus=bus, hidden=(8,), seed=0)
    trainer.fit(x, y, epochs=3, batch_size=16, validation_data=(xv, yv))
    # after the run: a save and an export go to the run just ended
    trainer.save(tmp_path / "final.npz")
    trainer.export(tmp_path / "model.json")
    bus.flush()  # no teardown after those: wait for the background logger

    client = MlflowClient(uri)
    run = _only_run(client, experiment)
    assert run.info.run_id == logger.run_id and logger.run_ids == [logger.run_id]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "numpy-run"
    assert run.data.tags["team"] == "vision"
    assert run.data.tags["eventhooks.trainer"] == "eventhooks.adapters.numpy.NumpyTrainer"
    assert {"mlflow.user", "mlflow.source.name"} <= set(run.data.tags)  # as start_run adds
    assert run.data.params == {"verbose": "0", "epochs": "3", "steps": "6", "batch_size": "16"}
    # History's metrics, and the learning rate the trainer announced (its default, 0.001),
    # named as TensorBoard names it
    assert set(run.data.metrics) == {*history.history, "learning_rate"}
    for key, values in history.history.items():
        assert _history(client, run.info.run_id, key) == list(enumerate(values)), key
    expected = [(0, 0.001), (1, 0.001), (2, 0.001)]
    assert _history(client, run.info.run_id, "learning_rate") == expected
    assert _artifacts(client, run.info.run_id) == {
        "checkpoints/ckpt-01.npz", "checkpoints/ckpt-02.npz", "checkpoints/ckpt-03.npz",
        "checkpoints/final.npz", "exports/model.json",
    }  # fmt: skip
    # no batch logging asked: the logger does not even hear training batches
    assert not bus.listening(events.on_train_batch_end)


def test_every_n_batches_logs_batch_metrics_with_the_global_step(uri: str) -> None:
    bus = EventBus()
    logger = MLflowLogger(uri, _experiment(), log_every_n_batches=2)
    bus.attach(logger)
    seen: list[dict[str, float]] = []
    bus.on(events.on_train_batch_end)(lambda p: seen.append(dict(p.logs)))
    x, y, _, _ = blobs(1)  # 90 samples, batches of 16: 6 a epoch
    NumpyTrainer(bus=bus, hidden=(8,), seed=0).fit(x, y, epochs=2, batch_size=16)
    assert len(seen) == 12
    client = MlflowClient(uri)
    assert logger.run_id is not None
    expected = [(step, seen[step]["loss"]) for step in range(1, 12, 2)]
    assert _history(client, logger.run_id, "batch/loss") == expected
    assert [s for s, _ in _history(client, logger.run_id, "loss")] == [0, 1]


def test_learning_rates_are_logged_as_announced_with_epochs_and_batches(uri: str) -> None:
    """A schedule's rates, with the epochs (the rate in effect at each epoch's end, as
    TensorBoard writes it) and with the logged batches; under TensorBoard's name."""
    bus = EventBus(check_order=True)
    logger = MLflowLogger(uri, _experiment(), log_every_n_batches=3)
    bus.attach(logger)
    announced: list[tuple[int | None, dict[str, float]]] = []
    bus.on(events.on_params_update)(lambda p: announced.append((p.epoch, dict(p.hyperparams))))
    x, y, _, _ = blobs(1)  # 90 samples, batches of 16: 6 a epoch
    NumpyTrainer(bus=bus, hidden=(8,), seed=0, lr=0.1,
                 lr_schedule=lambda epoch: 0.1 / (epoch + 1)).fit(x, y, epochs=3, batch_size=16)
    assert announced == [(None, {"lr": 0.1}), (0, {"lr": 0.05}), (1, {"lr": 0.1 / 3})]
    client = MlflowClient(uri)
    assert logger.run_id is not None
    assert _history(client, logger.run_id, "learning_rate") == [(0, 0.1), (1, 0.05), (2, 0.1 / 3)]
    assert set(client.get_run(logger.run_id).data.metrics) == {
        "loss", "accuracy", "learning_rate", "batch/loss", "batch/accuracy", "batch/learning_rate",
    }  # fmt: skip
    assert _history(client, logger.run_id, "batch/learning_rate") == [
        (2, 0.1), (5, 0.1), (8, 0.05), (11, 0.05), (14, 0.1 / 3), (17, 0.1 / 3)]  # fmt: skip


def test_other_hyperparameters_only_when_asked_and_logs_win(local_uri: str) -> None:
    for every in (False, True):
        bus = EventBus()
        logger = MLflowLogger(local_uri, _experiment(), all_hyperparams=every)
        bus.attach(logger, background=False)
        with Run(bus) as run:
            run.train_start()
            run.params_update({"lr/pg0": 0.1, "lr/pg1": 0.01, "momentum": 0.9})
            for epoch in run.epochs(2):
                # HF and Ultralytics put a rate in the epoch's logs too: that value is logged
                run.epoch_end({"loss": 1.0, "lr/pg0": 0.5 * (epoch + 1)})
                run.params_update({"lr/pg1": 0.005})  # a change: the others are kept
        client = MlflowClient(local_uri)
        assert logger.run_id is not None
        # the logs' rate keeps its name; the announced lr/pg0 (learning_rate/pg0) is not
        # logged beside it
        assert _history(client, logger.run_id, "lr/pg0") == [(0, 0.5), (1, 1.0)]
        assert _history(client, logger.run_id, "learning_rate/pg1") == [(0, 0.01), (1, 0.005)]
        momentum = _history(client, logger.run_id, "momentum")
        assert momentum == ([(0, 0.9), (1, 0.9)] if every else [])
        metrics = set(client.get_run(logger.run_id).data.metrics)
        assert metrics == {"loss", "lr/pg0", "learning_rate/pg1", *(["momentum"] * every)}


def test_a_nested_runs_rates_stay_in_its_own_mlflow_run(local_uri: str) -> None:
    bus = EventBus()
    logger = MLflowLogger(local_uri, _experiment())
    bus.attach(logger, background=False)
    with Run(bus) as outer:
        outer.train_start()
        outer.params_update({"lr": 0.1})
        for _ in outer.epochs(1):
            with Run(bus) as inner:  # a subscriber's own run, say
                inner.train_start()
                inner.params_update({"lr": 7.0})
                for _ in inner.epochs(1):
                    inner.epoch_end({"loss": 2.0})
            outer.epoch_end({"loss": 1.0})
    client = MlflowClient(local_uri)
    first, second = logger.run_ids
    assert _history(client, first, "learning_rate") == [(0, 0.1)]
    assert _history(client, second, "learning_rate") == [(0, 7.0)]


def test_a_rate_in_the_logs_under_another_spelling_wins_with_its_own_name(local_uri: str) -> None:
    """Announced ``lr`` and ``learning_rate`` in the logs are one rate (``learning_rate``):
    the logs' value is logged, the announced one is not, for the epoch and the logged batch;
    no stale second curve."""
    bus = EventBus(check_order=True)
    logger = MLflowLogger(local_uri, _experiment(), log_every_n_batches=1)
    bus.attach(logger, background=False)
    with Run(bus) as run:
        run.train_start()
        run.params_update({"lr": 0.5, "lr-Adam": 0.25, "lr_0": 0.125})
        for epoch in run.epochs(2):
            run.batch_start()
            run.batch_end({"loss": 1.0, "lr-Adam": 0.75})
            run.epoch_end({"loss": 1.0, "learning_rate": 0.1 * (epoch + 1)})
    client = MlflowClient(local_uri)
    assert logger.run_id is not None
    assert set(client.get_run(logger.run_id).data.metrics) == {
        "loss", "learning_rate", "learning_rate-Adam", "learning_rate_0",
        "batch/loss", "batch/learning_rate", "batch/lr-Adam", "batch/learning_rate_0",
    }  # fmt: skip
    assert _history(client, logger.run_id, "learning_rate") == [(0, 0.1), (1, 0.2)]
    assert _history(client, logger.run_id, "learning_rate-Adam") == [(0, 0.25), (1, 0.25)]
    assert _history(client, logger.run_id, "learning_rate_0") == [(0, 0.125), (1, 0.125)]
    assert _history(client, logger.run_id, "batch/learning_rate") == [(0, 0.5), (1, 0.5)]
    assert _history(client, logger.run_id, "batch/lr-Adam") == [(0, 0.75), (1, 0.75)]


def test_lr_decay_is_a_hyperparameter_not_a_learning_rate(local_uri: str) -> None:
    """Adagrad's ``lr_decay``: logged only with ``all_hyperparams=True``, as ``lr_decay``."""
    for every in (False, True):
        bus = EventBus()
        logger = MLflowLogger(local_uri, _experiment(), all_hyperparams=every)
        bus.attach(logger, background=False)
        with Run(bus) as run:
            run.train_start()
            run.params_update({"lr": 0.01, "lr_decay": 0.0, "initial_accumulator_value": 0.1})
            for _ in run.epochs(1):
                run.epoch_end({"loss": 1.0})
        assert logger.run_id is not None
        metrics = MlflowClient(local_uri).get_run(logger.run_id).data.metrics
        others = {"lr_decay": 0.0, "initial_accumulator_value": 0.1} if every else {}
        assert metrics == {"loss": 1.0, "learning_rate": 0.01, **others}


def test_a_keras_fit_logs_its_learning_rate(local_uri: str) -> None:
    import keras  # type: ignore[import-untyped]

    from eventhooks.adapters.keras import KerasCallback

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, "softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    x, y, _, _ = blobs(0)
    bus = EventBus(check_order=True)
    logger = MLflowLogger(local_uri, _experiment())
    bus.attach(logger)
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    model.fit(x.astype("float32"), y, epochs=3, batch_size=30, verbose=0,
              callbacks=[KerasCallback(bus), scheduler])  # fmt: skip
    assert logger.run_id is not None
    rates = [float(np.float32(0.1 / (epoch + 1))) for epoch in range(3)]
    history = _history(MlflowClient(local_uri), logger.run_id, "learning_rate")
    assert history == list(enumerate(rates))


# -- failures ----------------------------------------------------------------------------------


def test_a_run_failed_by_a_subscriber_is_failed_with_its_error(uri: str, tmp_path: Path) -> None:
    bus = EventBus()  # errors="raise"
    experiment = _experiment()
    logger = MLflowLogger(uri, experiment)
    bus.attach(logger)

    @bus.on(events.on_fit_epoch_end)
    def explode(payload: Any) -> None:
        if payload.epoch == 1:
            raise RuntimeError("disk full at epoch 1")

    x, y, _, _ = blobs(2)
    with pytest.raises(SubscriberError, match="disk full"):
        NumpyTrainer(bus=bus, hidden=(8,), seed=0).fit(x, y, epochs=4, batch_size=32)
    client = MlflowClient(uri)
    run = _only_run(client, experiment)
    assert run.info.status == "FAILED"
    error = run.data.tags["eventhooks.error"]
    assert "disk full at epoch 1" in error
    assert [s for s, _ in _history(client, run.info.run_id, "loss")] == [0, 1]
    assert _artifacts(client, run.info.run_id) == {"error.txt"}
    downloaded = client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))
    report = Path(downloaded).read_text()
    assert "Traceback" in report and "disk full at epoch 1" in report and "explode" in report


def test_a_run_refused_in_its_pretrain_routine_is_failed_with_its_params(
    local_uri: str,
) -> None:
    bus = EventBus()
    experiment = _experiment()
    bus.attach(MLflowLogger(local_uri, experiment))
    x, y, _, _ = blobs(3)
    with pytest.raises(ValueError, match="y"):
        NumpyTrainer(bus=bus, hidden=(8,), seed=0).fit(x, y[:-5], epochs=2)
    run = _only_run(MlflowClient(local_uri), experiment)
    assert run.info.status == "FAILED"
    assert run.data.metrics == {}
    assert run.data.params["epochs"] == "2" and run.data.params["steps"] == "None"
    assert "ValueError" in run.data.tags["eventhooks.error"]


def test_ctrl_c_marks_the_run_killed(local_uri: str) -> None:
    bus = EventBus()
    logger = MLflowLogger(local_uri, _experiment())
    bus.attach(logger)

    @bus.on(events.on_train_epoch_end)
    def interrupt(payload: Any) -> None:
        raise KeyboardInterrupt

    x, y, _, _ = blobs(4)
    with pytest.raises(KeyboardInterrupt):
        NumpyTrainer(bus=bus, hidden=(8,), seed=0).fit(x, y, epochs=2)
    assert logger.run_id is not None
    assert MlflowClient(local_uri).get_run(logger.run_id).info.status == "KILLED"


def test_a_ctrl_c_known_only_by_its_description_is_killed(local_uri: str) -> None:
    """A teardown read back from an event log (``eventhooks replay``) carries the error's
    description, not the exception: a Ctrl-C is KILLED there too, another error FAILED."""
    statuses = {}
    for error in ("KeyboardInterrupt: ", "RuntimeError: KeyboardInterrupt: not one"):
        bus = EventBus()
        logger = MLflowLogger(local_uri, _experiment())
        bus.attach(logger, background=False)
        bus.emit(events.on_pretrain_routine_start)
        bus.emit(events.teardown, error=error)
        assert logger.run_id is not None
        statuses[error] = MlflowClient(local_uri).get_run(logger.run_id).info.status
    assert statuses == {
        "KeyboardInterrupt: ": "KILLED",
        "RuntimeError: KeyboardInterrupt: not one": "FAILED",
    }


# -- ranks, threads, nesting -------------------------------------------------------------------


def test_rank_other_than_zero_logs_nothing(local_uri: str, tmp_path: Path) -> None:
    bus = EventBus()
    experiment = _experiment()
    logger = MLflowLogger(local_uri, experiment, log_every_n_batches=1)
    bus.attach(logger)
    (tmp_path / "w.bin").write_bytes(b"0")
    with Run(bus, params={"lr": 0.1}, rank=1, world_size=2) as run:
        for _ in run.epochs(2):
            run.batch_start()
            run.batch_end({"loss": 1.0})
            run.model_save(tmp_path / "w.bin")
            run.epoch_end({"loss": 1.0})
    assert logger.run_id is None and logger.run_ids == []
    assert MlflowClient(local_uri).get_experiment_by_name(experiment) is None


def test_validation_prediction_and_export_alone_open_no_run(local_uri: str, tmp_path: Path) -> None:
    bus = EventBus()
    experiment = _experiment()
    logger = MLflowLogger(local_uri, experiment)
    bus.attach(logger)
    trainer = NumpyTrainer(bus=bus, hidden=(8,), seed=0)
    trainer.build(4, 3)
    x, y, _, _ = blobs(10)
    trainer.evaluate(x, y)
    trainer.predict(x)
    trainer.export(tmp_path / "model.json")
    trainer.save(tmp_path / "w.npz")
    bus.flush()
    assert logger.run_ids == []
    assert MlflowClient(local_uri).get_experiment_by_name(experiment) is None


def test_runs_on_another_thread_than_the_first_and_leave_a_users_fluent_run_alone(
    local_uri: str,
) -> None:
    import mlflow

    bus = EventBus()
    experiment = _experiment()
    logger = MLflowLogger(local_uri, experiment)
    bus.attach(logger)
    x, y, _, _ = blobs(5)
    trainer = NumpyTrainer(bus=bus, hidden=(8,), seed=0)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(local_uri)
    try:
        with mlflow.start_run() as mine:
            trainer.fit(x, y, epochs=1)  # on this thread: the client is made here
            failures: list[BaseException] = []

            def train() -> None:
                try:
                    trainer.fit(x, y, epochs=2)
                except BaseException as exc:
                    failures.append(exc)

            worker = threading.Thread(target=train)
            worker.start()
            worker.join(60)
            assert failures == []
            active = mlflow.active_run()
            assert active is not None and active.info.run_id == mine.info.run_id
    finally:
        mlflow.set_tracking_uri(previous)
    client = MlflowClient(local_uri)
    assert len(logger.run_ids) == 2 and mine.info.run_id not in logger.run_ids
    for run_id, epochs in zip(logger.run_ids, (1, 2), strict=True):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert len(_history(client, run_id, "loss")) == epochs
    assert client.get_run(mine.info.run_id).data.metrics == {}


def test_a_run_started_inside_a_run_is_a_child_run(local_uri: str) -> None:
    bus = EventBus()
    logger = MLflowLogger(local_uri, _experiment())
    bus.attach(logger)
    with Run(bus, params={"outer": 1}) as outer:
        for _ in outer.epochs(1):
            with Run(bus, params={"inner": 2}) as inner:
                for _ in inner.epochs(1):
                    inner.epoch_end({"loss": 2.0})
            outer.epoch_end({"loss": 1.0})
    client = MlflowClient(local_uri)
    first, second = (client.get_run(r) for r in logger.run_ids)
    assert second.data.tags["mlflow.parentRunId"] == first.info.run_id
    assert first.data.params == {"outer": "1"} and second.data.params == {"inner": "2"}
    assert first.data.metrics == {"loss": 1.0} and second.data.metrics == {"loss": 2.0}
    assert {first.info.status, second.info.status} == {"FINISHED"}


# -- a framework -------------------------------------------------------------------------------


def test_a_pytorch_run(local_uri: str, tmp_path: Path) -> None:
    import torch

    from eventhooks.adapters.torch import fit

    def data(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n * 8, 4, generator=g)
        y = (x[:, 0] > 0).long()
        return [(x[i : i + 8], y[i : i + 8]) for i in range(0, len(x), 8)]

    bus = EventBus()
    history = History()
    experiment = _experiment()
    logger = MLflowLogger(local_uri, experiment, log_every_n_batches=3)
    bus.attach(history)
    bus.attach(logger)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, opt, torch.nn.CrossEntropyLoss(), data(3, 0), epochs=2, bus=bus,
        val_loader=data(2, 1), checkpoint_dir=tmp_path)  # fmt: skip
    client = MlflowClient(local_uri)
    run = _only_run(client, experiment)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2" and run.data.params["steps"] == "3"
    assert set(history.history) <= set(run.data.metrics)
    for key, values in history.history.items():
        assert _history(client, run.info.run_id, key) == list(enumerate(values)), key
    assert [s for s, _ in _history(client, run.info.run_id, "batch/loss")] == [2, 5]
    assert _artifacts(client, run.info.run_id) == {"checkpoints/last.pt"}


def test_a_lightning_run_then_a_crashed_one(local_uri: str, tmp_path: Path) -> None:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint as LightningCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    from eventhooks.adapters.lightning import LightningCallback

    class Tiny(pl.LightningModule):
        def __init__(self, fail_at: int | None = None) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.fail_at, self.calls = fail_at, 0

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.calls += 1
            if self.fail_at is not None and self.calls > self.fail_at:
                raise ValueError("training_step broke")
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def loader(n: int, seed: int) -> DataLoader[Any]:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 4, generator=gen)
        return DataLoader(TensorDataset(x, x[:, :1] * 2), batch_size=4)

    def fit(module: Tiny, *extra: Any) -> None:
        pl.Trainer(
            max_epochs=2, accelerator="cpu", devices=1, logger=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
            num_sanity_val_steps=0, callbacks=[LightningCallback(bus), *extra],
        ).fit(module, loader(12, 0), loader(8, 1))  # fmt: skip

    bus = EventBus()
    history = History()
    logger = MLflowLogger(local_uri, _experiment(), log_checkpoints="end")
    bus.attach(history)
    bus.attach(logger)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(Tiny(), LightningCheckpoint(dirpath=tmp_path / "ckpt", filename="best"))
        with pytest.raises(ValueError, match="training_step broke"):
            fit(Tiny(fail_at=4))
    client = MlflowClient(local_uri)
    done, crashed = (client.get_run(run_id) for run_id in logger.run_ids)
    assert done.info.status == "FINISHED" and crashed.info.status == "FAILED"
    assert done.data.params["max_epochs"] == "2" and done.data.params["steps"] == "3"
    assert _artifacts(client, done.info.run_id) == {"checkpoints/best.ckpt"}
    assert "ValueError: training_step broke" in crashed.data.tags["eventhooks.error"]
    assert [s for s, _ in _history(client, crashed.info.run_id, "loss")] == [0]
    assert done.data.tags["eventhooks.trainer"] == "lightning.pytorch.trainer.trainer.Trainer"


# -- names, params, the extra ------------------------------------------------------------------


def _mlflow_accepts(name: str) -> bool:
    """MLflow's own checks of a metric, param or tag name (``mlflow.utils.validation``)."""
    valid = validate_param_and_metric_name(name)  # type: ignore[no-untyped-call]
    resolves = path_not_unique(name)  # type: ignore[no-untyped-call]
    return bool(valid) and not resolves


@given(st.text(max_size=300))
def test_every_name_becomes_one_mlflow_accepts_and_valid_ones_stay(name: str) -> None:
    safe = mlflow_name(name)
    assert _mlflow_accepts(safe) and len(safe) <= MAX_KEY_LENGTH
    assert mlflow_name(safe) == safe
    # MLflow's pattern ends in ``$``, which also matches before a final newline: such a name
    # passes its check, and is renamed here all the same.
    if _mlflow_accepts(name) and len(name) <= MAX_KEY_LENGTH and not name.endswith("\n"):
        assert safe == name


@given(st.sampled_from(["", ".", "..", "/", "a//b", "/a", "a/", "../x", "a/./b", "..a", "a:b"]))
def test_names_that_would_resolve_to_other_paths(name: str) -> None:
    assert _mlflow_accepts(mlflow_name(name))


_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_tree = st.recursive(
    st.dictionaries(st.text(alphabet="abc_", min_size=1, max_size=4), _leaf, max_size=4),
    lambda inner: st.dictionaries(
        st.text(alphabet="abc_", min_size=1, max_size=4), inner | _leaf, max_size=4
    ),
    max_leaves=12,
)


def _leaves(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from _leaves(value, (*path, key))
    elif path:
        yield "/".join(path), tree


@given(_tree)
def test_nested_params_flatten_to_one_string_per_leaf(params: dict[str, Any]) -> None:
    flat = flatten_params(params)
    assert flat == {key: str(value) for key, value in _leaves(params)}


@given(st.text(min_size=1, max_size=5), st.integers(1, 50))
def test_long_param_values_are_cut_to_mlflows_limit(chunk: str, over: int) -> None:
    value = (chunk * (MAX_PARAM_LENGTH + over))[: MAX_PARAM_LENGTH + over]
    (logged,) = flatten_params({"long": value}).values()
    assert len(logged) == MAX_PARAM_LENGTH and logged.endswith("...")


_metric_names = st.text(min_size=0, max_size=40) | st.sampled_from(
    ["val acc%", "train/box_loss", "lr/pg0", "a//b", "..x", "loss?", "loss!"]
)


@given(st.dictionaries(_metric_names, st.floats(allow_nan=False, allow_infinity=False), max_size=6))
@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_metric_names_reach_a_real_store(local_uri: str, logs: dict[str, float]) -> None:
    bus = EventBus()
    logger = MLflowLogger(local_uri, "names", log_params=False)
    bus.attach(logger)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Run(bus) as run:
            for _ in run.epochs(1):
                run.epoch_end(logs)
    assert logger.run_id is not None
    logged = MlflowClient(local_uri).get_run(logger.run_id).data.metrics
    names = {key: logger.renamed.get(key, key) for key in logs}
    assert len(set(names.values())) == len(logs)
    assert logged == {names[key]: value for key, value in logs.items()}


def test_params_mlflow_refuses_as_given_are_logged_renamed_and_cut(uri: str) -> None:
    bus = EventBus()
    logger = MLflowLogger(uri, _experiment())
    bus.attach(logger)
    params = {"optim": {"lr": 0.1, "betas": (0.9, 0.99)}, "why?": "x" * 7000, "s": "a\ud800",
              "empty": {}, **{f"p{i}": i for i in range(150)}}  # fmt: skip
    with pytest.warns(UserWarning, match="'why\\?' is logged as 'why_'"):
        with Run(bus, params=params) as run:
            for _ in run.epochs(1):
                run.epoch_end({"loss": math.nan, "big": math.inf})
    assert logger.run_id is not None
    data = MlflowClient(uri).get_run(logger.run_id).data
    # a NaN loss is kept; MLflow stores an infinity as the largest double
    assert math.isnan(data.metrics["loss"]) and data.metrics["big"] == sys.float_info.max
    logged = data.params
    assert len(logged) == 155
    assert logged["optim/lr"] == "0.1" and logged["optim/betas"] == "(0.9, 0.99)"
    assert logged["why_"] == "x" * (MAX_PARAM_LENGTH - 3) + "..."
    assert logged["s"] == "a?" and logged["empty"] == "{}" and logged["p149"] == "149"


def test_a_folder_checkpoint_is_logged_as_a_folder(local_uri: str, tmp_path: Path) -> None:
    bus = EventBus()
    logger = MLflowLogger(local_uri, _experiment(), artifact_location=str(tmp_path / "art"))
    bus.attach(logger)
    folder = tmp_path / "checkpoint-6"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"1")
    (folder / "sub" / "config.json").write_text("{}")
    with pytest.warns(UserWarning, match="checkpoint '.*gone.pt' is gone, not logged"):
        with Run(bus) as run:  # its teardown waits for the background logger
            for _ in run.epochs(1):
                run.model_save(folder)
                run.model_save(tmp_path / "gone.pt")  # never written: warned, not logged
                run.epoch_end({"loss": 0.5})
    assert logger.run_id is not None
    client = MlflowClient(local_uri)
    assert _artifacts(client, logger.run_id) == {
        posixpath.join("checkpoints/checkpoint-6", p) for p in ("model.bin", "sub/config.json")
    }
    assert (tmp_path / "art").is_dir()  # the experiment's artifact_location


def test_checkpoints_at_the_end_upload_each_path_once_as_it_ended(
    local_uri: str, tmp_path: Path
) -> None:
    bus = EventBus()
    logger = MLflowLogger(local_uri, _experiment(), log_checkpoints="end")
    bus.attach(logger)
    bus.attach(ModelCheckpoint(tmp_path / "last.npz"))  # the same file every epoch
    x, y, xv, yv = blobs(8)
    NumpyTrainer(bus=bus, hidden=(8,), seed=0).fit(x, y, epochs=3, validation_data=(xv, yv))
    assert logger.run_id is not None
    client = MlflowClient(local_uri)
    assert _artifacts(client, logger.run_id) == {"checkpoints/last.npz"}
    got = client.download_artifacts(logger.run_id, "checkpoints/last.npz", str(tmp_path / "dl"))
    assert Path(got).read_bytes() == (tmp_path / "last.npz").read_bytes()


class _WhereLogger(MLflowLogger):
    """Notes the thread each epoch is logged on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threads: set[str] = set()

    def on_fit_epoch_end(self, payload: Any) -> None:
        self.threads.add(threading.current_thread().name)
        super().on_fit_epoch_end(payload)


@pytest.mark.parametrize("background", [None, False], ids=["default", "foreground"])
def test_background_by_default_and_the_same_run_on_either_thread(
    local_uri: str, background: bool | None
) -> None:
    assert MLflowLogger.background is True
    bus = EventBus()
    logger = _WhereLogger(local_uri, _experiment(), log_every_n_batches=3)
    bus.attach(logger, background=background)
    history = History()
    bus.attach(history)
    x, y, xv, yv = blobs(6)
    NumpyTrainer(bus=bus, hidden=(8,), seed=0).fit(x, y, epochs=2, validation_data=(xv, yv))
    main = threading.current_thread().name
    assert (logger.threads == {main}) is (background is False), logger.threads
    assert logger.run_id is not None
    client = MlflowClient(local_uri)
    assert client.get_run(logger.run_id).info.status == "FINISHED"  # teardown waited
    for key, values in history.history.items():
        assert _history(client, logger.run_id, key) == list(enumerate(values)), key


def test_a_tracker_that_does_not_answer_fails_the_run_named(tmp_path: Path) -> None:
    bus = EventBus()
    bus.attach(MLflowLogger(f"http://127.0.0.1:{_free_port()}", "nowhere"))  # nobody listens
    x, y, _, _ = blobs(7)
    started = time.monotonic()
    with pytest.raises(SubscriberError, match="MLflowLogger") as failed:
        NumpyTrainer(bus=bus, hidden=(8,), seed=0).fit(x, y, epochs=50)
    assert "127.0.0.1" in str(failed.value)
    assert time.monotonic() - started < 20


def test_mlflow_missing_is_a_missing_extra_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'eventhooks\[mlflow\]'"):
        MLflowLogger()


def test_importing_the_module_does_not_import_mlflow() -> None:
    program = (
        "import sys, eventhooks.callbacks.mlflow_logger as m; "
        "assert 'mlflow' not in sys.modules, 'mlflow imported'; "
        "m.MLflowLogger(); assert 'mlflow' in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_the_guard_lets_loopback_through_and_refuses_the_rest() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with NetworkGuard(allow_loopback=True).active() as guard:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            socket.create_connection(("localhost", port), timeout=5).close()
            for target in (("192.0.2.1", 80), ("example.com", 443)):
                with pytest.raises(NetworkAttempt):
                    socket.create_connection(target, timeout=1)
            with pytest.raises(NetworkAttempt):
                socket.getaddrinfo("example.com", 443)
        assert len(guard.attempts) == 3 and guard.loopback >= 2
        with NetworkGuard().active() as strict:  # the default still refuses the loopback
            with pytest.raises(NetworkAttempt):
                socket.create_connection(("127.0.0.1", port), timeout=1)
        assert strict.attempts


def test_a_tracker_beyond_the_loopback_is_caught_by_the_guard() -> None:
    bus = EventBus()
    bus.attach(MLflowLogger("http://192.0.2.1:5000", "far"), background=False)
    x, y, _, _ = blobs(9)
    with NetworkGuard(allow_loopback=True).active() as guard:
        with pytest.raises(SubscriberError, match="network access attempted"):
            NumpyTrainer(bus=bus, hidden=(8,), seed=0).fit(x, y, epochs=1)
    assert guard.attempts and "192.0.2.1" in guard.attempts[0]


def test_bad_options_are_refused() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="log_every_n_batches"):
            MLflowLogger(log_every_n_batches=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log_checkpoints"):
        MLflowLogger(log_checkpoints="best")  # type: ignore[arg-type]


# -- review of #14 -----------------------------------------------------------------------------


def test_an_epoch_metric_named_batch_slash_is_not_mixed_with_batch_metrics(
    local_uri: str,
) -> None:
    """With ``log_every_n_batches``, the batches' ``loss`` is ``batch/loss``: an epoch log key
    that is itself ``batch/loss`` gets another name, not the batch curve's."""
    bus = EventBus()
    logger = MLflowLogger(local_uri, _experiment(), log_every_n_batches=1)
    bus.attach(logger, background=False)
    with pytest.warns(UserWarning, match="'batch/loss' is logged as 'batch/loss_1'"):
        with Run(bus) as run:
            for epoch in run.epochs(2):
                run.batch_start()
                run.batch_end({"loss": 1.0 + epoch})
                run.epoch_end({"loss": 10.0 + epoch, "batch/loss": 100.0 + epoch})
    assert logger.run_id is not None
    client = MlflowClient(local_uri)
    assert _history(client, logger.run_id, "batch/loss") == [(0, 1.0), (1, 2.0)]
    assert _history(client, logger.run_id, "batch/loss_1") == [(0, 100.0), (1, 101.0)]
    assert _history(client, logger.run_id, "loss") == [(0, 10.0), (1, 11.0)]
    assert logger.renamed == {"batch/loss": "batch/loss_1"}


def test_a_nested_run_mlflow_refused_to_open_is_not_logged_into_the_outer_one(
    local_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Under ``errors="warn"`` (train whatever the tracker does), a run started inside a run
    that MLflow refuses to create (here: its experiment deleted meanwhile) is not logged: its
    metrics do not land in the outer run, and its teardown does not end the outer run."""
    bus = EventBus()
    name = _experiment()
    logger = MLflowLogger(local_uri, name)
    bus.attach(logger, background=False, errors="warn")
    client = MlflowClient(local_uri)
    with Run(bus) as outer:
        for epoch in outer.epochs(2):
            if epoch == 0:
                assert logger.experiment_id is not None
                client.delete_experiment(logger.experiment_id)
                inner = Run(bus)
                inner.open()
                inner.epoch_start(0)  # the pretrain routine and on_train_start: refused
                client.restore_experiment(logger.experiment_id)
                inner.epoch_end({"loss": 99.0})
                inner.finish()
            outer.epoch_end({"loss": 1.0 + epoch})
    assert "MLflowLogger.on_pretrain_routine_start failed" in caplog.text
    (run_id,) = logger.run_ids
    assert client.get_run(run_id).info.status == "FINISHED"
    assert _history(client, run_id, "loss") == [(0, 1.0), (1, 2.0)]
