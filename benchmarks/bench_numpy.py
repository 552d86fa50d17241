"""What the events cost the NumPy reference trainer: a training epoch with and without them.

Baseline: the very same arithmetic (``adapters/_numpy_mlp.py``, same shuffling, same running
means) in a bare loop that emits nothing. Then ``NumpyTrainer.fit`` with nobody listening,
with three subscribers under ``bus.muted()``, with three subscribers, and with a Recorder on
all 25 moments. Variants are interleaved round by round so that drift hits them all alike.

Run: ``.venv/bin/python benchmarks/bench_numpy.py``
"""

from __future__ import annotations

import os

# BLAS threads must be pinned before NumPy is imported (PRODUCT.md §3: one thread, no tuning).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from eventhooks import Callback, EventBus, events  # noqa: E402
from eventhooks.adapters import _numpy_mlp as mlp  # noqa: E402
from eventhooks.adapters.numpy import NumpyTrainer  # noqa: E402
from eventhooks.testing import Recorder  # noqa: E402

N, DIM, CLASSES, HIDDEN, BATCH, EPOCHS, ROUNDS = 2048, 64, 10, (128,), 32, 3, 15
STUB_EPOCHS = 20


def data() -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, size=N)
    x = rng.normal(size=(CLASSES, DIM))[y] * 2 + rng.normal(size=(N, DIM))
    return x.astype(np.float32), y


Run = Callable[[], None]


def bare_loop(x: Any, y: Any, epochs: int) -> Run:
    """The trainer's arithmetic with no events: the floor any event system adds to."""
    sizes = mlp.layer_sizes(DIM, HIDDEN, CLASSES)
    seeds = np.random.SeedSequence(0).spawn(2)
    weights = mlp.init_weights(sizes, np.random.default_rng(seeds[0]), "float32")
    shuffle = np.random.default_rng(seeds[1])
    optimizer = mlp.make_optimizer("adam", 0.001, 0.0)
    steps = math.ceil(len(x) / BATCH)

    def run() -> None:
        for _ in range(epochs):
            order = shuffle.permutation(len(x))
            seen = correct = 0
            total = 0.0
            for b in range(steps):
                rows = order[b * BATCH : (b + 1) * BATCH]
                loss, right, grads = mlp.loss_and_grads(weights, x[rows], y[rows])
                optimizer.apply(weights, grads)
                seen += len(rows)
                total += loss * len(rows)
                correct += right
            _ = {"loss": total / seen, "accuracy": correct / seen}

    return run


class EpochPrinter(Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_epoch_end(self, payload: Any) -> None:
        self.rows.append(payload.logs)


def three_subscribers(bus: EventBus) -> None:
    """A loss tracker per batch, a step counter, a class subscriber per epoch."""
    losses: list[float] = []
    steps = [0]
    bus.subscribe(events.on_train_batch_end, lambda p: losses.append(p.logs["loss"]))
    bus.subscribe(events.optimizer_step, lambda p: steps.__setitem__(0, steps[0] + 1))
    bus.attach(EpochPrinter())


def trainer_run(
    setup: Callable[[EventBus], Any] | None, muted: bool = False
) -> Callable[[Any, Any, int], Run]:
    """A fit of a fresh, already built trainer; bus and subscribers are made outside timing."""

    def make(x: Any, y: Any, epochs: int) -> Run:
        bus = EventBus()
        if setup is not None:
            setup(bus)
        mute = bus.muted()
        if muted:
            mute.__enter__()  # for the bus's whole (short) life
        trainer = NumpyTrainer(bus=bus, hidden=HIDDEN, seed=0, n_classes=CLASSES)
        trainer.build(DIM, CLASSES)

        def run() -> None:
            # ``mute`` is referenced here: a collected context manager would unmute the bus.
            assert bus.listening(events.on_train_batch_end) != (muted or setup is None), mute
            trainer.fit(x, y, epochs=epochs, batch_size=BATCH)

        return run

    return make


VARIANTS: dict[str, Callable[[Any, Any, int], Run]] = {
    "bare loop (no events)": bare_loop,
    "NumpyTrainer, nobody listening": trainer_run(None),
    "NumpyTrainer, 3 subscribers, bus muted": trainer_run(three_subscribers, muted=True),
    "NumpyTrainer, 3 subscribers": trainer_run(three_subscribers),
    "NumpyTrainer, Recorder on all 25": trainer_run(lambda bus: Recorder(bus)),
}


class _NoOptimizer:
    lr = 0.001

    def apply(self, weights: Any, grads: Any) -> None:
        return None


def stub_arithmetic() -> Callable[[], None]:
    """Replace the MLP arithmetic by constant-time stubs; returns the undo.

    With the arithmetic gone, what remains is the loop and the events: their cost per batch
    is measured directly instead of as a small difference between two noisy large numbers.
    """
    saved = mlp.loss_and_grads, mlp.make_optimizer
    result: tuple[float, int, list[Any]] = (0.5, 16, [])
    mlp.loss_and_grads = lambda weights, x, y: result
    mlp.make_optimizer = lambda name, lr, momentum: _NoOptimizer()

    def undo() -> None:
        mlp.loss_and_grads, mlp.make_optimizer = saved

    return undo


def measure(x: Any, y: Any, epochs: int, rounds: int) -> dict[str, float]:
    """Median ns per fit of each variant, interleaved round by round, setup not timed."""
    times: dict[str, list[int]] = {name: [] for name in VARIANTS}
    for make in VARIANTS.values():  # warm-up
        make(x, y, 1)()
    for _ in range(rounds):
        for name, make in VARIANTS.items():
            run = make(x, y, epochs)
            start = time.perf_counter_ns()
            run()
            times[name].append(time.perf_counter_ns() - start)
    return {name: statistics.median(samples) for name, samples in times.items()}


def table(medians: dict[str, float], batches: int) -> None:
    base = medians["bare loop (no events)"]
    print("| variant | ms per run | µs per batch | overhead ns per batch | ratio to bare |")
    print("|---|---:|---:|---:|---:|")
    for name, median in medians.items():
        print(
            f"| {name} | {median / 1e6:.2f} | {median / batches / 1e3:.2f} | "
            f"{(median - base) / batches:,.0f} | {median / base:.3f} |"
        )


def main() -> None:
    x, y = data()
    steps = math.ceil(N / BATCH)
    print(
        f"NumPy MLP {DIM}->{HIDDEN[0]}->{CLASSES}, Adam, batch {BATCH}, {steps} batches per "
        f"epoch, median of {ROUNDS} interleaved runs, 1 BLAS thread\n"
    )
    print(f"Real arithmetic, {EPOCHS} epochs per run: what a user sees.\n")
    table(measure(x, y, EPOCHS, ROUNDS), EPOCHS * steps)
    undo = stub_arithmetic()
    try:
        print(f"\nArithmetic stubbed out, {STUB_EPOCHS} epochs per run: loop and events alone.\n")
        table(measure(x, y, STUB_EPOCHS, ROUNDS), STUB_EPOCHS * steps)
    finally:
        undo()


if __name__ == "__main__":
    main()
