"""What the Hugging Face adapter adds to a real ``Trainer.train()`` (target: at most 2%).

A small MLP (64-256-256-10) on random tensors, CPU, one thread, steps of about a millisecond:
without the adapter, and with ``TransformersCallback`` and three subscribers (History,
CSVLogger and a reader of batch logs). Runs are interleaved, their order rotating, and the
medians compared; a second plain run is the noise control.
"""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOME = Path(tempfile.mkdtemp(prefix="eventhooks-bench-hf-"))
atexit.register(shutil.rmtree, HOME, ignore_errors=True)
for _name in ("HF_HOME", "HF_DATASETS_CACHE", "TORCHINDUCTOR_CACHE_DIR"):
    os.environ.setdefault(_name, str(HOME / _name.lower()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from _timing import added, hook_seconds, hook_timer, rotating, table  # noqa: E402
from torch import nn  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from eventhooks import EventBus, events  # noqa: E402
from eventhooks.adapters.transformers import TransformersCallback  # noqa: E402
from eventhooks.callbacks import CSVLogger, History  # noqa: E402

ROUNDS = 7
STEPS = 300


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256),
                                 nn.ReLU(), nn.Linear(256, 10))  # fmt: skip

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class Data(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 64, generator=generator)
        self.y = torch.randint(0, 10, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def trainer(out: Path, callbacks: list[Any]) -> Trainer:
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=32, num_train_epochs=1,
        report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no",
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    return Trainer(model=Mlp(), args=args, train_dataset=Data(32 * STEPS), callbacks=callbacks)


Timed = hook_timer(TransformersCallback)


def timed(with_adapter: bool | None, out: Path, *, own: bool = False) -> float:
    """One run: without the adapter (False), with it and 3 subscribers (True), or with an empty
    ``TrainerCallback`` (None: what any callback costs in HF's own dispatch)."""
    callbacks: list[Any] = [TrainerCallback()] if with_adapter is None else []
    if with_adapter:
        bus = EventBus()
        bus.attach(History())
        bus.attach(CSVLogger(out / "log.csv"))
        bus.subscribe(events.on_train_batch_end, lambda p: p.logs.get("loss"))
        callbacks = [(Timed if own else TransformersCallback)(bus)]
    run = trainer(out, callbacks)
    start = time.perf_counter()
    run.train()
    return (time.perf_counter() - start) / STEPS * 1e3


def main() -> str:
    torch.set_num_threads(1)
    variants = {"plain `Trainer.train()`": False, "plain again (noise control)": False,
                "an empty `TrainerCallback` (HF's own dispatch)": None,
                "with the adapter and 3 subscribers": True}  # fmt: skip
    tmp = HOME / "runs"

    def run(adapter: bool | None) -> Callable[[int], float]:
        return lambda round_: timed(adapter, tmp / f"{round_}-{adapter}-{time.time_ns()}")

    times = rotating({name: run(v) for name, v in variants.items()}, ROUNDS)
    text = table(
        f"Hugging Face Trainer: {STEPS} steps of an MLP 64-256-256-10, batch 32, 1 thread "
        f"(median of {ROUNDS} rotating rounds)",
        ("run", "ms per step", "added"),
        added(times),
    )
    seconds = []
    for round_ in range(ROUNDS):
        Timed.seconds, Timed.calls = 0.0, 0
        timed(True, tmp / f"own-{round_}-{time.time_ns()}", own=True)
        seconds.append(hook_seconds(Timed) / STEPS)
    per_step, step = statistics.median(seconds), statistics.median(times["plain `Trainer.train()`"])
    text += "\n" + table(
        "Hugging Face adapter: time inside `TransformersCallback`'s hooks per step "
        "(subscribers included, the timing's own cost taken out)",
        ("`TransformersCallback` with", "µs per step", "share of the plain step"),
        [("3 subscribers, one reading batch logs", f"{per_step * 1e6:.1f}",
          f"{per_step * 1e3 / step:.2%}")],
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
