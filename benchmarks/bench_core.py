"""The bus against its baselines, in one process: what one emit costs on the hot path.

Baselines: a bare Python call, raw blinker, the naive design (a pydantic payload validated and
sent through blinker) and a Keras-style dispatch loop over callback objects.
"""

from __future__ import annotations

from typing import Any

import blinker

from eventhooks import BatchPayload, EventBus

try:
    from ._timing import ns_per_call, table
except ImportError:  # run as a script
    from _timing import ns_per_call, table  # type: ignore[no-redef]

LOGS = {"loss": 0.25, "accuracy": 0.9, "val_loss": 0.3, "val_accuracy": 0.88}


def subscriber(payload: Any) -> None:
    pass


class KerasStyleCallback:
    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        pass


class KerasStyleList:
    """What ``keras.callbacks.CallbackList`` does per hook, minus Keras' logs conversion."""

    def __init__(self, callbacks: list[KerasStyleCallback]) -> None:
        self.callbacks = callbacks

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        for callback in self.callbacks:
            callback.on_train_batch_end(batch, logs=logs)


def bus_with(n: int) -> EventBus:
    bus = EventBus()
    for _ in range(n):
        bus.subscribe("on_train_batch_end", lambda p: None)
    return bus


def measure() -> list[tuple[str, float]]:
    ns: dict[str, Any] = {"f": subscriber, "p": 1, "logs": LOGS}
    results = [("bare Python call `f(p)`", ns_per_call("f(p)", ns))]
    emit = "bus.emit('on_train_batch_end', batch=3, epoch=1, logs=logs)"
    for n in (0, 1, 10):
        ns["bus"] = bus_with(n)
        label = f"`bus.emit`, {n} subscriber{'s' if n != 1 else ''}" + (
            " (validated, 4 metrics)" if n else ""
        )
        results.append((label, ns_per_call(emit, ns)))
    signal = blinker.Signal()
    signal.connect(lambda sender, **kw: None, weak=False)
    ns["signal"] = signal
    results.append(
        ("raw blinker `Signal.send`, 1 receiver", ns_per_call("signal.send(None, logs=logs)", ns))
    )
    ns["validate"] = BatchPayload.__pydantic_validator__.validate_python
    ns["fields"] = {"batch": 3, "epoch": 1, "logs": LOGS}
    results.append(("pydantic validation alone", ns_per_call("validate(fields)", ns)))
    results.append(
        ("naive: `BatchPayload(...)` sent through blinker, 1 receiver",
         ns_per_call("signal.send(None, payload=BatchPayload(batch=3, epoch=1, logs=logs))",
                     {**ns, "BatchPayload": BatchPayload})),
    )  # fmt: skip
    for n in (1, 10):
        ns["callbacks"] = KerasStyleList([KerasStyleCallback() for _ in range(n)])
        results.append(
            (f"Keras-style dispatch loop, {n} callback{'s' if n > 1 else ''}",
             ns_per_call("callbacks.on_train_batch_end(3, logs)", ns)),
        )  # fmt: skip
    return results


def main() -> str:
    results = measure()
    bare = results[0][1]
    rows = [(label, f"{value:,.0f}", f"{value / bare:.1f}x") for label, value in results]
    by = dict(results)
    one = by["`bus.emit`, 1 subscriber (validated, 4 metrics)"]
    ten = by["`bus.emit`, 10 subscribers (validated, 4 metrics)"]
    rows.append(("each extra subscriber ((10 - 1) / 9)", f"{(ten - one) / 9:,.0f}",
                 f"{(ten - one) / 9 / bare:.1f}x"))  # fmt: skip
    text = table(
        "Core: one emit (median ns per call)", ("operation", "ns", "ratio to bare call"), rows
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
