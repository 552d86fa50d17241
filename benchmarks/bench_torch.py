"""What the events cost a PyTorch training loop: the same loop with and without the adapter.

Baseline: a plain hand-written loop (``zero_grad``, forward, loss, ``backward``, ``step``) over
batches already in memory, a step of about 1 ms on one thread. Then the same loop
instrumented (``instrument``, ``run.epochs``, ``run.batches``, ``run.log(loss=loss)``) with
nobody listening, and with three subscribers (History and EarlyStopping at epoch ends, a
batch counter reading the batch logs, which costs an ``.item()`` per batch); and the
ready-made ``fit`` with the same three. Variants are interleaved round by round so that
machine noise hits them all alike. A second table isolates the adapter's own cost per batch,
on a loop whose model work is nil.

Run: ``.venv/bin/python benchmarks/bench_torch.py``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from eventhooks import EventBus, events  # noqa: E402
from eventhooks.adapters.torch import fit, instrument  # noqa: E402
from eventhooks.callbacks import EarlyStopping, History  # noqa: E402

try:
    from ._timing import interleaved, ns_per_call, table
except ImportError:  # run as a script
    from _timing import interleaved, ns_per_call, table  # type: ignore[no-redef]

DIM, HIDDEN, CLASSES, BATCH, BATCHES, ROUNDS = 64, 192, 10, 64, 200, 21

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def data() -> Batches:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCHES * BATCH, DIM, generator=g)
    y = torch.randint(0, CLASSES, (BATCHES * BATCH,), generator=g)
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)]


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(DIM, HIDDEN), torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, CLASSES),
    )  # fmt: skip


def three_subscribers(bus: EventBus) -> None:
    bus.attach(History())
    bus.attach(EarlyStopping(monitor="loss", patience=1000))
    seen = [0.0]

    def count(payload: Any) -> None:
        seen[0] += payload.logs["loss"]

    bus.subscribe(events.on_train_batch_end, count)


def plain(batches: Batches) -> Callable[[], None]:
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = torch.nn.functional.cross_entropy

    def run() -> None:
        for _ in range(1):
            net.train()
            for x, y in batches:
                opt.zero_grad()
                loss = loss_fn(net(x), y)
                loss.backward()
                opt.step()

    return run


def instrumented(batches: Batches, subscribers: int) -> Callable[[], None]:
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = torch.nn.functional.cross_entropy
    bus = EventBus()
    if subscribers:
        three_subscribers(bus)

    def run() -> None:
        with instrument(bus, opt) as tracked:
            for _ in tracked.epochs(1):
                net.train()
                for x, y in tracked.batches(batches):
                    opt.zero_grad()
                    loss = loss_fn(net(x), y)
                    loss.backward()
                    opt.step()
                    tracked.log(loss=loss)

    return run


def ready_made(batches: Batches) -> Callable[[], None]:
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    bus = EventBus()
    three_subscribers(bus)

    def run() -> None:
        fit(net, opt, torch.nn.functional.cross_entropy, batches, epochs=1, bus=bus)

    return run


def per_batch_overhead() -> list[tuple[str, float]]:
    """The adapter's own cost per batch: a loop whose model work is nil (one idle parameter)."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    loss = torch.zeros(())
    items = list(range(2000))
    ns: dict[str, Any] = {"opt": opt, "items": items, "loss": loss, "instrument": instrument}
    plain_stmt = "for _ in items:\n    opt.zero_grad()\n    opt.step()"
    tracked_stmt = (
        "with instrument(bus, opt) as run:\n"
        "    for _ in run.epochs(1):\n"
        "        for _ in run.batches(items):\n"
        "            opt.zero_grad()\n"
        "            opt.step()\n"
        "            run.log(loss=loss)"
    )
    n = len(items)
    base = ns_per_call(plain_stmt, ns, number=5, repeat=9) / n
    rows = [("plain loop: `zero_grad()` + `step()` on an idle parameter", base)]
    for label, subscribed in (
        ("instrumented, nobody listening", 0),
        ("instrumented, 3 subscribers", 3),
    ):
        bus = EventBus()
        if subscribed:
            three_subscribers(bus)
        ns["bus"] = bus
        rows.append((label, ns_per_call(tracked_stmt, ns, number=5, repeat=9) / n))
    return rows


def main() -> str:
    torch.set_num_threads(1)
    batches = data()
    variants = {
        "plain loop (baseline)": plain(batches),
        "instrumented, nobody listening": instrumented(batches, 0),
        "instrumented, 3 subscribers": instrumented(batches, 3),
        "ready-made `fit`, 3 subscribers": ready_made(batches),
    }
    times = interleaved(variants, repeat=ROUNDS)
    base = times["plain loop (baseline)"]
    rows = [
        (label, f"{t / BATCHES * 1e3:.3f}", f"{t / base:.4f}", f"{(t / base - 1) * 100:+.2f}%")
        for label, t in times.items()
    ]
    text = table(
        f"PyTorch: one epoch of {BATCHES} batches (MLP {DIM}-{HIDDEN}-{HIDDEN}-{CLASSES}, "
        f"batch {BATCH}, 1 thread; median of {ROUNDS} interleaved rounds)",
        ("loop", "ms per batch", "ratio to plain", "added"),
        rows,
    )
    overhead = per_batch_overhead()
    floor = overhead[0][1]
    step_ns = base / BATCHES * 1e9
    text += "\n" + table(
        "PyTorch adapter: its own cost per batch (model work nil; median ns)",
        ("loop", "ns per batch", "added ns", "added, as share of the step above"),
        [
            (label, f"{v:,.0f}", f"{v - floor:,.0f}", f"{(v - floor) / step_ns * 100:.3f}%")
            for label, v in overhead
        ],
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
