"""Under torch.distributed: rank-aware payloads, rank-0-only subscribers, averaged logs, stops.

Two real processes train a DistributedDataParallel model with the gloo backend on the CPU,
over the loopback interface only. The bus and its subscribers are built here and pickled
into the workers (multiprocessing's spawn), as they would be by a launcher; each worker
writes what it saw to a JSON file in ``tmp_path``.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import pickle
import socket
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from eventhooks import Callback, EventBus, events
from eventhooks.adapters.torch import PEER_STOP, Run, fit, instrument
from eventhooks.callbacks import CSVLogger
from eventhooks.testing import Recorder

WORLD = 2
EPOCHS = 2


class EveryRank(Callback):
    """A user's Callback subclass: hears each epoch end on every rank."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def on_epoch_end(self, payload: Any) -> None:
        self.seen.append([payload.epoch, payload.rank, payload.world_size])


class RankZero:
    """A plain callable subscribed with ``rank=0``."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def __call__(self, payload: Any) -> None:
        self.seen.append([payload.epoch, payload.rank])


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 3] > 0).long())


def _loader(ds: TensorDataset, rank: int) -> DataLoader[Any]:
    sampler: DistributedSampler[int] = DistributedSampler(
        ds, num_replicas=WORLD, rank=rank, shuffle=False
    )
    return DataLoader(ds, batch_size=8, sampler=sampler)


def _model() -> DistributedDataParallel:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    return DistributedDataParallel(net)


def _fit(bus: EventBus, rank: int, sync: bool, out: Path | None, epochs: int = EPOCHS) -> Any:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return fit(
        model, opt, torch.nn.functional.cross_entropy, _loader(_data(64, 0), rank),
        epochs=epochs, bus=bus, val_loader=_loader(_data(32, 1), rank), sync_logs=sync,
        metrics={"rank_id": lambda out, y: float(dist.get_rank())}, checkpoint_dir=out,
    )  # fmt: skip


def _worker(
    rank: int, port: int, out: Path, bus: EventBus, every: EveryRank, zero: RankZero
) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    torch.set_num_threads(1)
    result: dict[str, Any] = {"rank": rank}
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
            timeout=timedelta(seconds=120),
        )  # fmt: skip
        rec = Recorder(bus)
        result["local"] = _fit(bus, rank, sync=False, out=None)
        result["synced"] = _fit(bus, rank, sync=True, out=out / "ckpt")
        result["where"] = sorted({(p.rank, p.world_size) for _, p in rec.records})
        result["saves"] = len(rec.payloads("on_model_save"))
        rec.close()
        # A stop asked on rank 0 only, mid-epoch: every rank finishes that epoch and stops.
        stopper = bus.subscribe(
            events.on_train_batch_end,
            lambda p: bus.request_stop("rank 0 had enough") if p.batch == 1 else None,
            rank=0,
        )
        result["stopped"] = _fit(bus, rank, sync=False, out=None, epochs=4)
        result["stop_reason"] = bus.stop_reason
        stopper.disconnect()
        # An instrumented loop's epoch-level logs, averaged too.
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with instrument(bus, opt, model=model, sync_logs=True) as run:
            for _ in run.epochs(1):
                for x, y in run.batches(_loader(_data(32, 2), rank)):
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(model(x), y).backward()
                    opt.step()
                run.log(rank_id=float(rank) * 10)
        result["instrumented"] = run.history
        result["every"], result["zero"] = every.seen, zero.seen
    except BaseException:
        result["error"] = traceback.format_exc()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        (out / f"rank{rank}.json").write_text(json.dumps(result))
    # Everything the test checks is written: leave without the interpreter's teardown, where
    # gloo's threads sometimes abort the process ("terminate called without an active
    # exception") on a loaded machine, a failure of exit, not of what is tested.
    os._exit(0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ddp")
    bus = EventBus()
    every, zero = EveryRank(), RankZero()
    bus.attach(every)
    bus.subscribe(events.on_fit_epoch_end, zero, rank=0)
    bus.attach(CSVLogger(out / "log.csv"))
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(rank, port, out, bus, every, zero))
        for rank in range(WORLD)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    found = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for result in found:
        assert "error" not in result, result["error"]
    assert [p.exitcode for p in procs] == [0] * WORLD
    found.append({"out": str(out)})
    return found


def test_every_payload_carries_rank_and_world_size(results: list[dict[str, Any]]) -> None:
    for rank in range(WORLD):
        assert results[rank]["where"] == [[rank, WORLD]]


def test_rank_zero_subscribers_run_once_and_every_rank_subscribers_on_both(
    results: list[dict[str, Any]],
) -> None:
    epochs = [0, 1, 0, 1, 0, 0]  # two fits of 2 epochs, the stopped fit, the instrumented loop
    assert [e for e, _ in results[0]["zero"]] == epochs
    assert results[1]["zero"] == []
    for rank in range(WORLD):
        assert results[rank]["every"] == [[e, rank, WORLD] for e in epochs]
    # The checkpoint is written, and announced, by rank 0 only.
    assert [results[r]["saves"] for r in range(WORLD)] == [EPOCHS, 0]
    assert (Path(results[-1]["out"]) / "ckpt" / "last.pt").exists()


def test_synced_logs_are_the_average_over_ranks_and_equal_on_both(
    results: list[dict[str, Any]],
) -> None:
    local = [results[r]["local"] for r in range(WORLD)]
    synced = [results[r]["synced"] for r in range(WORLD)]
    assert local[0]["rank_id"] == [0.0] * EPOCHS and local[1]["rank_id"] == [1.0] * EPOCHS
    assert local[0]["loss"] != local[1]["loss"]  # different shards: different local losses
    assert synced[0] == synced[1]
    assert synced[0]["rank_id"] == [0.5] * EPOCHS
    for key in ("loss", "val_loss"):  # the same training, only the logs averaged
        mean = [(a + b) / 2 for a, b in zip(local[0][key], local[1][key], strict=True)]
        assert synced[0][key] == pytest.approx(mean, rel=1e-6)
    for rank in range(WORLD):
        assert results[rank]["instrumented"]["rank_id"] == [5.0]


def test_a_stop_on_rank_zero_stops_every_rank_at_the_epoch_end(
    results: list[dict[str, Any]],
) -> None:
    for rank in range(WORLD):
        assert len(results[rank]["stopped"]["loss"]) == 1
    assert results[0]["stop_reason"] == "rank 0 had enough"
    assert results[1]["stop_reason"] == PEER_STOP


def test_builtin_csv_writer_writes_once_from_rank_zero(results: list[dict[str, Any]]) -> None:
    with open(Path(results[-1]["out"]) / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # The last run (the instrumented loop, one epoch), written once, with the averaged value.
    assert [row["epoch"] for row in rows] == ["0"]
    assert float(rows[0]["rank_id"]) == 5.0


def test_bus_subscribers_and_run_survive_a_pickle_round_trip() -> None:
    bus = EventBus()
    every, zero = EveryRank(), RankZero()
    bus.attach(every)
    bus.subscribe(events.on_fit_epoch_end, zero, rank=0)
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    run = instrument(bus, opt, sync_logs=True)
    copied_run, copied_every, copied_zero = pickle.loads(pickle.dumps((run, every, zero)))
    assert isinstance(copied_run, Run) and copied_run.sync_logs
    copied_bus = copied_run.bus
    copied_bus.emit(events.on_fit_epoch_end, epoch=0, rank=1, world_size=2)
    copied_bus.emit(events.on_fit_epoch_end, epoch=1, rank=0, world_size=2)
    assert copied_every.seen == [[0, 1, 2], [1, 0, 2]] and copied_zero.seen == [[1, 0]]
    assert every.seen == [] and zero.seen == []  # the originals are untouched
    assert pickle.loads(pickle.dumps(fit)) is fit
