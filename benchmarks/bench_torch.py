"""What the events cost a PyTorch training loop: the same loop with and without the adapter.

Baseline: a plain hand-written loop (``zero_grad``, forward, loss, ``backward``, ``step``) over
batches already in memory, a step of about 1 ms on one thread; a second plain loop shows the
noise floor. Then the same loop instrumented (``instrument``, ``run.epochs``,
``run.batches``, ``run.log(loss=loss)``): with nobody listening; with three subscribers at
epoch ends (History, EarlyStopping, one more); with History, EarlyStopping and a reader of
the batch logs (an ``.item()`` and a validated payload per batch); and the ready-made
``fit`` with the latter three. Variants run round by round, their order rotating, so that
machine noise and position hit them all alike. A second table isolates the adapter's own
cost per batch, on a loop whose model work is nil. A third shows why a cost measured in a tight
loop is not what a training loop pays: code run once per step finds the CPU's caches filled
with the step's work, so the same emit costs several times more right after a step.

Run: ``.venv/bin/python benchmarks/bench_torch.py``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from _timing import table  # noqa: E402

from eventhooks import EventBus, events  # noqa: E402
from eventhooks.adapters.torch import fit, instrument  # noqa: E402
from eventhooks.callbacks import EarlyStopping, History  # noqa: E402
from eventhooks.payloads import BatchPayload  # noqa: E402

# HIDDEN 448: a step of about 1.1 ms on this machine (the "~1 ms steps"; 224 gave 0.45 ms).
DIM, HIDDEN, CLASSES, BATCH, BATCHES, ROUNDS = 64, 448, 10, 64, 200, 21

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


def three_subscribers(bus: EventBus, *, per_batch: bool = True, every: int | None = None) -> None:
    """History and EarlyStopping, plus a batch-log reader (every ``every`` batches, or on
    every batch) or a third epoch-level one."""
    bus.attach(History())
    bus.attach(EarlyStopping(monitor="loss", patience=1000))
    seen = [0.0]

    def count(payload: Any) -> None:
        seen[0] += payload.logs["loss"]

    if per_batch:
        bus.subscribe(events.on_train_batch_end, count, every=every)
    else:
        bus.subscribe(events.on_fit_epoch_end, count)


def plain(batches: Batches, *, item: bool = False) -> Callable[[], None]:
    """The user's loop without eventhooks; ``item=True`` also sums the loss as most do."""
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = torch.nn.functional.cross_entropy

    def run() -> None:
        for _ in range(1):
            net.train()
            total = 0.0
            for x, y in batches:
                opt.zero_grad()
                loss = loss_fn(net(x), y)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                if item:
                    total += loss.item()

    return run


def instrumented(
    batches: Batches, subscribers: int, *, log: bool = True, per_batch: bool = True,
    bus: EventBus | None = None,
) -> Callable[[], None]:
    """The loop instrumented, on ``bus`` (a new one if not given) with ``subscribers`` (0 or
    the three of :func:`three_subscribers`)."""
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = torch.nn.functional.cross_entropy
    bus = bus if bus is not None else EventBus()
    if subscribers:
        three_subscribers(bus, per_batch=per_batch)

    def run() -> None:
        with instrument(bus, opt) as tracked:
            for _ in tracked.epochs(1):
                net.train()
                for x, y in tracked.batches(batches):
                    opt.zero_grad()
                    loss = loss_fn(net(x), y)
                    loss.backward()  # type: ignore[no-untyped-call]
                    opt.step()
                    if log:
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


def rotated(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Wall times of each function over ``rounds``, the order rotating every round.

    A fixed order favours some positions (here by a few percent); rotating gives each
    variant every position equally often.
    """
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for fn in fns.values():
        fn()
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def per_batch_overhead(rounds: int = 15) -> list[tuple[str, float]]:
    """The adapter's own cost per batch: a loop whose model work is nil (one idle parameter).

    Minimum over interleaved rounds: on a shared machine the minimum is the stable estimate
    of a cost this small.
    """
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    loss = torch.zeros(())
    items = list(range(2000))
    quiet, busy, epochly, sparse = EventBus(), EventBus(), EventBus(), EventBus()
    three_subscribers(busy)
    three_subscribers(epochly, per_batch=False)
    three_subscribers(sparse, every=50)

    def plain_idle() -> None:
        for _ in items:
            opt.zero_grad()
            opt.step()

    def tracked(bus: EventBus, log: bool = True) -> Callable[[], None]:
        def run() -> None:
            with instrument(bus, opt) as tracked:
                for _ in tracked.epochs(1):
                    for _ in tracked.batches(items):
                        opt.zero_grad()
                        opt.step()
                        if log:
                            tracked.log(loss=loss)

        return run

    variants = {
        "plain loop: `zero_grad()` + `step()` on an idle parameter": plain_idle,
        "instrumented, nobody listening, no `run.log`": tracked(quiet, log=False),
        "instrumented, nobody listening": tracked(quiet),
        "instrumented, 3 epoch-level subscribers": tracked(epochly),
        "instrumented, 3 subscribers, one reading batch logs": tracked(busy),
        "instrumented, 3 subscribers, one reading batch logs `every=50`": tracked(sparse),
    }
    times = rotated(variants, rounds)
    return [(name, min(t) / len(items) * 1e9) for name, t in times.items()]


class _Plain:
    """A payload that is not a pydantic model: what a batch event would cost unvalidated."""

    __slots__ = ("batch", "epoch", "logs")

    def __init__(self, batch: int, epoch: int, logs: dict[str, float]) -> None:
        self.batch, self.epoch, self.logs = batch, epoch, logs


def after_a_step(steps: int = 1200) -> list[tuple[str, float, float]]:
    """Median ns of one call right after a real training step (caches cold: what a hook pays)
    and in a tight loop (warm: what a micro-benchmark shows), for a few per-batch costs."""
    net, batches = model(), data()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    bus = EventBus()
    bus.subscribe(events.on_train_batch_end, lambda p: p.logs["loss"])
    validate = BatchPayload.__pydantic_validator__.validate_python
    loss = torch.zeros(())

    def bare(i: int) -> None:
        pass

    cases: dict[str, Callable[[int], object]] = {
        "a bare Python call": bare,
        "`bus.emit` of a batch end, 1 subscriber": lambda i: bus.emit(
            events.on_train_batch_end, batch=i, epoch=0, logs={"loss": 1.0}),
        "pydantic validating that payload alone": lambda i: validate(
            {"batch": i, "epoch": 0, "logs": {"loss": 1.0}}).logs["loss"],
        "a plain object with the same fields, made and read": lambda i: _Plain(
            i, 0, {"loss": 1.0}).logs["loss"],
        "a 0-d tensor's `.item()`": lambda i: loss.item(),
    }  # fmt: skip
    names = list(cases)
    cold: dict[str, list[int]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    for step in range(steps):
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()
        name = names[step % len(names)]
        fn = cases[name]
        start = clock()
        fn(step)
        cold[name].append(clock() - start)
    rows = []
    for name in names:
        fn, warm = cases[name], []
        for i in range(3000):
            start = clock()
            fn(i)
            warm.append(clock() - start)
        rows.append((name, statistics.median(cold[name][5:]), statistics.median(warm[500:])))
    return rows


def main() -> str:
    torch.set_num_threads(1)
    batches = data()
    variants = {
        "plain loop (baseline)": plain(batches),
        "plain loop again (noise control)": plain(batches),
        "plain loop summing `loss.item()`": plain(batches, item=True),
        "instrumented, nobody listening, no `run.log`": instrumented(batches, 0, log=False),
        "instrumented, nobody listening": instrumented(batches, 0),
        "instrumented, 3 epoch-level subscribers": instrumented(batches, 3, per_batch=False),
        "instrumented, 3 subscribers, one reading batch logs": instrumented(batches, 3),
        "ready-made `fit`, 3 subscribers, one reading batch logs": ready_made(batches),
    }
    times = {name: statistics.median(t) for name, t in rotated(variants, ROUNDS).items()}
    base = times["plain loop (baseline)"]
    rows = [
        (label, f"{t / BATCHES * 1e3:.3f}", f"{t / base:.4f}", f"{(t / base - 1) * 100:+.2f}%")
        for label, t in times.items()
    ]
    text: str = table(
        f"PyTorch: one epoch of {BATCHES} batches (MLP {DIM}-{HIDDEN}-{HIDDEN}-{CLASSES}, "
        f"batch {BATCH}, 1 thread; median of {ROUNDS} rounds, order rotating)",
        ("loop", "ms per batch", "ratio to plain", "added"),
        rows,
    )
    overhead = per_batch_overhead()
    floor = overhead[0][1]
    step_ns = base / BATCHES * 1e9
    text += "\n" + table(
        "PyTorch adapter: its own cost per batch (model work nil; best of 15 rotating rounds)",
        ("loop", "ns per batch", "added ns", "added, as share of the step above"),
        [
            (label, f"{v:,.0f}", f"{v - floor:,.0f}", f"{(v - floor) / step_ns * 100:.3f}%")
            for label, v in overhead
        ],
    )
    text += "\n" + table(
        "One call right after a training step (caches cold), and in a tight loop (warm): "
        "median ns, the timer's own cost included in both",
        ("call", "after a step (ns)", "tight loop (ns)", "cold / warm"),
        [(label, f"{c:,.0f}", f"{w:,.0f}", f"{c / w:.1f}x") for label, c, w in after_a_step()],
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
