"""What the Ultralytics adapter adds to a real YOLO training (target: under 1% of wall time).

A two-epoch ``yolov8n.yaml`` detection training on 8 synthetic 64x64 images, offline, CPU,
one thread: without the adapter, and with it and three subscribers (History, CSVLogger and
a batch-level function). Runs are interleaved and the medians compared; because a whole
training varies by a few percent from run to run, the adapter's own time is also measured
directly (the time spent inside its forwarders during a run, over the run's wall time).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "adapters" / "ultralytics"))

from _timing import table  # noqa: E402
from _yolo_data import detection_dataset, offline_env  # noqa: E402

REPEAT = 5


class Timed:
    """Wraps one forwarder and adds up the time spent in it."""

    def __init__(self, forwarder: Any, clock: list[float]) -> None:
        self.forwarder = forwarder
        self.clock = clock

    def __call__(self, obj: Any) -> None:
        start = time.perf_counter()
        self.forwarder(obj)
        self.clock[0] += time.perf_counter() - start
        self.clock[1] += 1


def main() -> None:
    offline_env()
    import torch

    torch.set_num_threads(1)
    from ultralytics import YOLO, __version__

    from eventhooks import EventBus
    from eventhooks.adapters.ultralytics import Forwarder, attach
    from eventhooks.callbacks import CSVLogger, History

    work = Path(tempfile.mkdtemp(prefix="bench-ultralytics-"))
    data = detection_dataset(work / "data")
    args = dict(
        data=str(data), epochs=2, imgsz=64, batch=4, pretrained=False, amp=False, plots=False,
        device="cpu", workers=0, project=str(work / "runs"), name="run", exist_ok=True,
        verbose=False,
    )  # fmt: skip
    batch_losses: list[float] = []

    def train(adapter: bool, clock: list[float] | None = None) -> float:
        model = YOLO("yolov8n.yaml")
        if adapter:
            bus = EventBus()
            attach(model, bus)
            bus.attach(History())
            bus.attach(CSVLogger(work / "epochs.csv"))
            bus.subscribe("on_train_batch_end", lambda p: batch_losses.append(p.logs["loss"]))
            if clock is not None:
                for fns in model.callbacks.values():
                    fns[:] = [Timed(f, clock) if isinstance(f, Forwarder) else f for f in fns]
        start = time.perf_counter()
        model.train(**args)
        return time.perf_counter() - start

    train(False)  # warm up: imports, dataset cache
    times: dict[str, list[float]] = {"without adapter": [], "adapter + 3 subscribers": []}
    for _ in range(REPEAT):
        times["without adapter"].append(train(False))
        times["adapter + 3 subscribers"].append(train(True))
    clock = [0.0, 0.0]
    wall = train(True, clock)

    base = statistics.median(times["without adapter"])
    rows = [
        (name, f"{statistics.median(ts) * 1e3:.0f}", f"{min(ts) * 1e3:.0f}",
         f"{statistics.median(ts) / base:.3f}")
        for name, ts in times.items()
    ]  # fmt: skip
    print(table(
        f"Ultralytics {__version__}: 2-epoch yolov8n detection training (median of {REPEAT})",
        ("run", "median ms", "min ms", "ratio"), rows,
    ))  # fmt: skip
    inside, calls = clock
    print(table(
        "Ultralytics adapter, measured inside its forwarders (one instrumented run)",
        ("callbacks", "ms in forwarders", "µs per callback", "run ms", "share of run"),
        [(int(calls), f"{inside * 1e3:.2f}", f"{inside / max(calls, 1) * 1e6:.1f}",
          f"{wall * 1e3:.0f}", f"{inside / wall:.3%}")],
    ))  # fmt: skip


if __name__ == "__main__":
    main()
