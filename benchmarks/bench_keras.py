"""What KerasCallback costs a Keras fit, and what one batch event costs against Keras' own.

1. ``model.fit`` of a small MLP (torch backend, one thread), interleaved round by round:
   plain fit (Keras adds History and dispatches batch hooks on a thread pool); fit with a
   do-nothing Keras callback that overrides the batch hooks (Keras then dispatches in order,
   as it must for ours); fit with ``KerasCallback`` and nobody listening; fit with
   ``KerasCallback`` carrying three subscribers.
2. One ``on_train_batch_end``: Keras' ``CallbackList`` with one callback (logs as Keras has
   them: torch scalars) against ``bus.emit`` to one subscriber; and one training step's two
   batch hooks (begin and end, in a running fit: the lifecycle keeps their order) through
   Keras' ``CallbackList`` and through ``KerasCallback``, nobody listening or three
   subscribers.

Run: ``KERAS_BACKEND=torch .venv/bin/python benchmarks/bench_keras.py``
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import keras  # type: ignore[import-untyped]  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from eventhooks import Callback, EventBus, events  # noqa: E402
from eventhooks.adapters.keras import KerasCallback  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import ns_per_call, table  # noqa: E402

FEATURES, HIDDEN, CLASSES, BATCH, STEPS, EPOCHS, ROUNDS = 16, 16, 4, 16, 100, 2, 11


class Quiet(keras.callbacks.Callback):  # type: ignore[misc]
    """A Keras callback that does nothing but override the batch-end hooks."""

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        pass


class Tracker(Callback):
    """A class-style subscriber of two moments."""

    def __init__(self) -> None:
        self.batches = 0
        self.best = float("inf")

    def on_train_batch_end(self, payload: Any) -> None:
        self.batches += 1

    def on_epoch_end(self, payload: Any) -> None:
        self.best = min(self.best, payload.logs.get("loss", self.best))


def three_subscribers(bus: EventBus) -> None:
    """A running loss sum, an epoch log and a Tracker: three subscribers, four hooks."""
    total = [0.0]
    rows: list[dict[str, float]] = []
    bus.subscribe(events.on_train_batch_end, lambda p: total.__setitem__(0, p.logs["loss"]))
    bus.subscribe(events.on_fit_epoch_end, lambda p: rows.append(p.logs))
    bus.attach(Tracker())


def make_model() -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(HIDDEN, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def fit_timings() -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * STEPS, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=BATCH * STEPS)
    model = make_model()
    quiet_bus, busy_bus = EventBus(), EventBus()
    three_subscribers(busy_bus)
    variants: dict[str, Any] = {
        "fit, no callback": lambda: [],
        "fit + a Keras callback overriding batch hooks": lambda: [Quiet()],
        "fit + KerasCallback, nobody listening": lambda: [KerasCallback(quiet_bus)],
        "fit + KerasCallback, 3 subscribers": lambda: [KerasCallback(busy_bus)],
    }
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(ROUNDS + 1):
        for name, callbacks in variants.items():
            cbs = callbacks()
            start, start_cpu = time.perf_counter(), time.process_time()
            model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0, callbacks=cbs)
            if round_:  # round 0 warms up
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    # The minimum is the run least disturbed by other processes; the median shows the spread.
    # CPU time (all threads of this process) is steadier on a shared machine, and counts the
    # work Keras moves to its thread pool.
    best = {name: min(values) for name, values in wall.items()}
    median = {name: statistics.median(values) for name, values in wall.items()}
    best_cpu = {name: min(values) for name, values in cpu.items()}
    plain, ordered = "fit, no callback", "fit + a Keras callback overriding batch hooks"
    steps = STEPS * EPOCHS
    return [
        (
            name,
            f"{best[name] / steps * 1e3:.3f}",
            f"{median[name] / steps * 1e3:.3f}",
            f"{best_cpu[name] / steps * 1e3:.3f}",
            f"{best[name] / best[plain]:.3f}",
            f"{best_cpu[name] / best_cpu[plain]:.3f}",
            f"{best[name] / best[ordered]:.3f}",
        )
        for name in variants
    ]


def dispatch_timings() -> tuple[list[tuple[Any, ...]], dict[str, float]]:
    from keras.callbacks import CallbackList  # type: ignore[import-untyped]

    model = make_model()
    keras_list = CallbackList([Quiet()], model=model)
    torch_logs = {"loss": torch.tensor(0.5), "accuracy": torch.tensor(0.75)}
    float_logs = {"loss": 0.5, "accuracy": 0.75}

    one_bus = EventBus()
    one_bus.subscribe(events.on_train_batch_end, lambda p: None)
    busy_bus = EventBus()
    three_subscribers(busy_bus)
    cb, nobody = KerasCallback(busy_bus), KerasCallback(EventBus())
    for opened in (cb, nobody):  # a fit in its first epoch
        opened.set_model(model)
        opened.set_params({"verbose": 0, "epochs": 1, "steps": 1})
        opened.on_train_begin()
        opened.on_epoch_begin(0)
    step = "cb.on_train_batch_begin(3, {}); cb.on_train_batch_end(3, logs)"
    ns = {
        "bare call f(logs)": ns_per_call("f(logs)", {"f": lambda logs: None, "logs": float_logs}),
        "Keras CallbackList.on_train_batch_end, 1 callback (torch logs)": ns_per_call(
            "cl.on_train_batch_end(3, logs)", {"cl": keras_list, "logs": torch_logs}
        ),
        "Keras CallbackList.on_train_batch_end, 1 callback (float logs)": ns_per_call(
            "cl.on_train_batch_end(3, logs)", {"cl": keras_list, "logs": float_logs}
        ),
        "bus.emit(on_train_batch_end), 1 subscriber": ns_per_call(
            "emit(ev, batch=3, epoch=0, logs=logs)",
            {"emit": one_bus.emit, "ev": events.on_train_batch_end, "logs": float_logs},
        ),
        "Keras CallbackList, one step's batch hooks, 1 callback (torch logs)": ns_per_call(
            step, {"cb": keras_list, "logs": torch_logs}
        ),
        "KerasCallback, one step's batch hooks, nobody listening": ns_per_call(
            step, {"cb": nobody, "logs": float_logs}
        ),
        "KerasCallback, one step's batch hooks, 3 subscribers (2 on batch end)": ns_per_call(
            step, {"cb": cb, "logs": float_logs}
        ),
    }
    base = ns["Keras CallbackList.on_train_batch_end, 1 callback (torch logs)"]
    return [(name, f"{value:,.0f}", f"{value / base:.2f}") for name, value in ns.items()], ns


def main() -> None:
    torch.set_num_threads(1)
    fits = fit_timings()
    print(
        table(
            f"Keras fit: {EPOCHS} epochs x {STEPS} steps, MLP {FEATURES}-{HIDDEN}-{CLASSES}, "
            f"batch {BATCH}, best of {ROUNDS} interleaved rounds",
            (
                "variant",
                "wall ms/step",
                "median wall ms/step",
                "CPU ms/step",
                "wall ratio vs no callback",
                "CPU ratio vs no callback",
                "wall ratio vs ordered Keras cb",
            ),
            fits,
        )
    )
    rows, ns = dispatch_timings()
    print(table("Batch hooks (median ns per call)", ("operation", "ns", "ratio vs Keras"), rows))
    # Fit times carry milliseconds of scheduling noise; the hooks' own cost per step is that
    # of the two batch hooks, measured directly above.
    per_step = ns["KerasCallback, one step's batch hooks, 3 subscribers (2 on batch end)"]
    step_ms = float(fits[1][1])
    print(
        f"KerasCallback's own cost per training step with 3 subscribers: {per_step / 1e3:.1f} µs"
        f" = {per_step / (step_ms * 1e6) * 100:.2f}% of a {step_ms:.2f} ms step "
        f"(target < 2%).\n"
    )


if __name__ == "__main__":
    main()
