"""The bus against its baselines, in one process: what one emit costs on the hot path.

Baselines: a bare Python call, raw blinker, the naive design (a pydantic payload validated and
sent through blinker) and a Keras-style dispatch loop over callback objects.
"""

from __future__ import annotations

import statistics
from typing import Any

import blinker
from _timing import interleaved_ns, table
from pydantic import BaseModel, ConfigDict, Field

from eventhooks import BatchPayload, Callback, EventBus
from eventhooks.payloads import Index

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


class BatchEnd(Callback):
    def on_train_batch_end(self, payload: BatchPayload) -> None:
        pass


def bus_with_callback() -> EventBus:
    """A class-style subscriber: delivery marks which bus is delivering (request_stop)."""
    bus = EventBus()
    bus.attach(BatchEnd())
    return bus


class OneInt(BaseModel):
    """The smallest pydantic model: what any validated payload costs at least."""

    batch: int


class Lean(BaseModel):
    """The benchmark's payload without the fields every eventhooks payload carries."""

    model_config = ConfigDict(extra="forbid")

    batch: Index
    epoch: Index | None = None
    logs: dict[str, float] = Field(default_factory=dict)


BARE = "bare Python call `f(p)`"
ONE = "`bus.emit`, 1 subscriber (validated, 4 metrics)"
TEN = "`bus.emit`, 10 subscribers (validated, 4 metrics)"
CALLBACK = "`bus.emit`, 1 attached `Callback` (its method; validated, 4 metrics)"
TARGETS = {"`bus.emit`, 0 subscribers": "5x", ONE: "45x"}


def cases() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every timed statement with its namespace, by label."""
    base: dict[str, Any] = {"f": subscriber, "p": 1, "logs": LOGS}
    emit = "bus.emit('on_train_batch_end', batch=3, epoch=1, logs=logs)"
    signal = blinker.Signal()
    signal.connect(lambda sender, **kw: None, weak=False)
    fields = {"batch": 3, "epoch": 1, "logs": LOGS}
    found = {
        BARE: ("f(p)", base),
        "`bus.emit`, 0 subscribers": (emit, {**base, "bus": bus_with(0)}),
        ONE: (emit, {**base, "bus": bus_with(1)}),
        TEN: (emit, {**base, "bus": bus_with(10)}),
        CALLBACK: (emit, {**base, "bus": bus_with_callback()}),
        "raw blinker `Signal.send`, 1 receiver": (
            "signal.send(None, logs=logs)", {**base, "signal": signal}
        ),
        "naive: `BatchPayload(...)` sent through blinker, 1 receiver": (
            "signal.send(None, payload=BatchPayload(batch=3, epoch=1, logs=logs))",
            {**base, "signal": signal, "BatchPayload": BatchPayload},
        ),
    }
    models: list[tuple[str, type[BaseModel]]] = [
        ("the payload", BatchPayload),
        ("the same without the 4 fields every payload carries", Lean),
        ("a model of one int field", OneInt),
    ]
    for what, model in models:
        validate = model.__pydantic_validator__.validate_python
        given = fields if model is not OneInt else {"batch": 3}
        found[f"pydantic validation alone: {what}"] = (
            "validate(given)", {"validate": validate, "given": given}
        )
    for n in (1, 10):
        keras_like = KerasStyleList([KerasStyleCallback() for _ in range(n)])
        found[f"Keras-style dispatch loop, {n} callback{'s' if n > 1 else ''}"] = (
            "callbacks.on_train_batch_end(3, logs)", {**base, "callbacks": keras_like}
        )
    return found


def main(rounds: int = 15) -> str:
    samples = interleaved_ns(cases(), rounds=rounds)
    bare = samples[BARE]

    def ratio(values: list[float]) -> float:  # per round: both sides saw the same machine
        return statistics.median(v / b for v, b in zip(values, bare, strict=True))

    rows = [
        (label, f"{statistics.median(values):,.0f}", f"{ratio(values):.1f}x",
         TARGETS.get(label, ""))
        for label, values in samples.items()
    ]  # fmt: skip
    extra = [(t - o) / 9 for t, o in zip(samples[TEN], samples[ONE], strict=True)]
    rows.append(("each extra subscriber ((10 - 1) / 9)", f"{statistics.median(extra):,.0f}",
                 f"{ratio(extra):.1f}x", "3x"))  # fmt: skip
    text = table(
        f"Core: one emit (median ns per call, cases interleaved over {rounds} rounds)",
        ("operation", "ns", "ratio to bare call", "target"),
        rows,
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
