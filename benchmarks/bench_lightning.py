"""What the Lightning adapter adds to a real ``Trainer.fit`` (targets: 2%, and 0.5% with
nobody listening).

A small MLP (64-256-256-10) on random tensors, CPU, one thread, steps of about a millisecond:
a plain fit, a fit with an empty ``lightning.Callback`` (what any callback costs in
Lightning's own dispatch), with ``LightningCallback`` and nobody listening, and with it and
three subscribers (History, CSVLogger and a reader of batch logs). Runs are interleaved, their
order rotating, and the medians compared; a second plain fit is the noise control. The
adapter's own cost is timed inside its hooks, and the hooks Lightning dispatches to it counted
(through Lightning's profiler interface): it switches off those nobody needs.
"""

from __future__ import annotations

import atexit
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from _timing import added, hook_seconds, hook_timer, rotating, table
from lightning.pytorch.profilers import Profiler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from eventhooks import EventBus, events
from eventhooks.adapters.lightning import LightningCallback
from eventhooks.callbacks import CSVLogger, History

ROUNDS = 7
STEPS = 300


class Mlp(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256),
                                 nn.ReLU(), nn.Linear(256, 10))  # fmt: skip

    def training_step(self, batch: Any, index: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader() -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32 * STEPS, 64, generator=generator)
    y = torch.randint(0, 10, (32 * STEPS,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=32)


Timed = hook_timer(LightningCallback)
for _name, _hook in vars(Timed).items():  # the adapter switches off its own hooks, timed too
    if callable(_hook):
        _hook.__wrapped__ = getattr(LightningCallback, _name)


class Dispatched(Profiler):
    """Lightning's profiler interface, counting the callback hooks Lightning dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def start(self, action_name: str) -> None:
        self.count += action_name.startswith("[Callback]")

    def stop(self, action_name: str) -> None:
        pass


DISPATCHED = Dispatched()


def timed(variant: str, out: Path, data: DataLoader[Any]) -> float:
    callbacks: list[pl.Callback] = []
    if variant == "empty":
        callbacks = [pl.Callback()]
    elif variant != "plain":
        bus = EventBus()
        if variant.startswith("busy"):
            bus.attach(History())
            bus.attach(CSVLogger(out / "log.csv"))
            bus.subscribe(events.on_train_batch_end, lambda p: p.logs.get("loss"))
        adapter = Timed if variant.endswith("timed") else LightningCallback
        callbacks = [adapter(bus)]
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
        callbacks=callbacks, profiler=DISPATCHED if variant.endswith("timed") else None,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(Mlp(), data)
    return (time.perf_counter() - start) / STEPS * 1e3


def main() -> str:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # Lightning's advice on dataloader workers
    variants = {
        "plain `Trainer.fit`": "plain",
        "plain again (noise control)": "plain",
        "an empty `lightning.Callback` (Lightning's own dispatch)": "empty",
        "`LightningCallback`, nobody listening": "quiet",
        "`LightningCallback` and 3 subscribers, one reading batch logs": "busy",
    }
    data, tmp = loader(), Path(tempfile.mkdtemp(prefix="eventhooks-bench-pl-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)

    def run(variant: str) -> Callable[[int], float]:
        return lambda round_: timed(variant, tmp / f"{round_}-{variant}-{time.time_ns()}", data)

    times = rotating({name: run(v) for name, v in variants.items()}, ROUNDS)
    text = table(
        f"Lightning: fit of {STEPS} steps, MLP 64-256-256-10, batch 32, 1 thread "
        f"(median of {ROUNDS} rotating rounds)",
        ("run", "ms per step", "added"),
        added(times),
    )
    step = statistics.median(times["plain `Trainer.fit`"]) / 1e3
    own = []
    for label, variant in (("nobody listening", "quiet-timed"), ("3 subscribers, one reading "
                           "batch logs", "busy-timed")):  # fmt: skip
        seconds = []
        for round_ in range(ROUNDS):
            Timed.seconds, Timed.calls, DISPATCHED.count = 0.0, 0, 0
            timed(variant, tmp / f"own-{round_}-{variant}-{time.time_ns()}", data)
            seconds.append(hook_seconds(Timed) / STEPS)
        per_step = statistics.median(seconds)
        own.append((label, f"{per_step * 1e6:.1f}", f"{per_step / step:.2%}",
                    f"{DISPATCHED.count / STEPS:.2f}"))  # fmt: skip
    text += "\n" + table(
        "Lightning adapter: time inside `LightningCallback`'s hooks per step (subscribers "
        "included, the timing's own cost taken out; Lightning's dispatch of a callback is "
        "the empty callback's row above, 6 hooks a step)",
        ("`LightningCallback` with", "µs per step", "share of the plain step",
         "hooks Lightning dispatches to it per step"),
        own,
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
