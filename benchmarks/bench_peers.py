"""eventhooks' emit beside the peers' own callback dispatch, measured in one process and one run.

Every case delivers one ``on_train_batch_end``-like event with 4 float metrics to 1 and to 10
trivial callbacks (each returns at once), through the peer's real dispatch code:

- eventhooks: ``bus.emit("on_train_batch_end", batch=3, epoch=1, logs=LOGS)``, the payload
  validated by pydantic on every emit, to 1 / 10 subscribers.
- Keras 3 (torch backend): ``CallbackList.on_train_batch_end(3, LOGS)``. The callbacks override
  the hook, so Keras dispatches in order on the calling thread (as eventhooks does), not on its
  thread pool.
- Lightning: ``trainer/call.py::_call_callback_hooks(trainer, "on_train_batch_end", LOGS, None,
  3)`` on a real ``lightning.pytorch.Trainer`` (CPU, no logger, checkpointing, progress bar or
  model summary, so that its callbacks are exactly the 1 / 10 trivial ones). No fit runs: a
  tiny ``LightningModule`` is attached as ``fit`` attaches it before the first hook
  (``trainer.strategy.connect(model)``, then ``model.trainer = trainer``), so the hook saves and
  restores the module's ``_current_fx_name`` and opens a profiler section per callback, as in a
  fit. The metrics travel as ``outputs``.
- Hugging Face: ``CallbackHandler.on_step_end(args, state, control, logs=LOGS)`` with real
  ``TrainingArguments`` (``report_to=[]``, ``use_cpu=True``); the handler holds only the trivial
  ``TrainerCallback``s (no ``DefaultFlowCallback``), each of its own class, since HF warns on a
  class added twice. ``on_step_end`` carries no metrics in HF (``on_log`` does): they ride along
  as a keyword.
- Ignite: ``Engine._fire_event(Events.ITERATION_COMPLETED)`` with 1 / 10 handlers; Ignite
  passes the engine, whose ``state.metrics`` holds the 4 floats.
- blinker: ``Signal.send(None, batch=3, epoch=1, logs=LOGS)`` to 1 / 10 receivers.
- psygnal (compiled wheel): ``SignalInstance.emit(3, 1, LOGS)``, and ``emit_fast``, which skips
  psygnal's thread lock and emitter bookkeeping (shown, not part of the target).

Cases take turns over 25 short rounds (this shared machine has slow spells of a few seconds);
each ratio, to the bare call and between eventhooks and a peer, is the median of per-round
ratios. Nothing is downloaded: no hub model, tokenizer or dataset is named, and
``HF_HUB_OFFLINE`` is set.

Run: ``cd benchmarks && ../.venv/bin/python -c "import bench_peers as b; b.main()"``
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # TensorFlow is not installed
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import logging
import statistics
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import blinker
import lightning.pytorch as pl
import psygnal
import torch
from _timing import interleaved_ns, table
from ignite.engine import Engine, Events
from lightning.pytorch.trainer.call import _call_callback_hooks
from transformers import TrainingArguments
from transformers.trainer_callback import (
    CallbackHandler,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)

from eventhooks import EventBus

LOGS = {"loss": 0.25, "accuracy": 0.9, "val_loss": 0.3, "val_accuracy": 0.88}
COUNTS = (1, 10)

BARE = "bare Python call `f(p)`"
EVENTHOOKS = "eventhooks `bus.emit`, validated payload"
KERAS = "Keras `CallbackList.on_train_batch_end`"
LIGHTNING = "Lightning `_call_callback_hooks` (real `Trainer`)"
HF = "HF `CallbackHandler.on_step_end`"
IGNITE = "Ignite `Engine._fire_event`"
BLINKER = "blinker `Signal.send`"
PSYGNAL = "psygnal `SignalInstance.emit`"
PSYGNAL_FAST = "psygnal `SignalInstance.emit_fast` (no lock; not a target)"
# The dispatches eventhooks' validated emit must beat at 1 and at 10 callbacks.
TARGETS = (KERAS, LIGHTNING, HF, IGNITE, BLINKER, PSYGNAL)

Case = tuple[str, dict[str, Any]]


def label(dispatch: str, n: int) -> str:
    return f"{dispatch}, {n} callback{'s' if n > 1 else ''}"


@contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Silence the frameworks' construction chatter (Lightning's GPU lines, HF's warnings)."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def eventhooks_case(n: int, tmp: Path) -> Case:
    bus = EventBus()
    for _ in range(n):
        bus.subscribe("on_train_batch_end", lambda p: None)
    return "bus.emit('on_train_batch_end', batch=3, epoch=1, logs=logs)", {"bus": bus, "logs": LOGS}


def keras_case(n: int, tmp: Path) -> Case:
    import keras  # type: ignore[import-untyped]  # after KERAS_HOME is set (main)

    class Trivial(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            pass

    callbacks = keras.callbacks.CallbackList([Trivial() for _ in range(n)])
    assert len(callbacks.callbacks) == n and not callbacks._async_train  # in order, this thread
    return "callbacks.on_train_batch_end(3, logs)", {"callbacks": callbacks, "logs": LOGS}


class TrivialLightningCallback(pl.Callback):
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        pass


class TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)


def lightning_case(n: int, tmp: Path) -> Case:
    with quiet("lightning.pytorch", "lightning.fabric"):
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp / "lightning",
            callbacks=[TrivialLightningCallback() for _ in range(n)],
        )
    model = TinyModule()
    trainer.strategy.connect(model)  # what fit() does before the first hook...
    model.trainer = trainer  # ...and what its data connector does
    # Trainer.callbacks is set by Lightning's callback connector, out of mypy's sight.
    assert len(trainer.callbacks) == n  # type: ignore[attr-defined]
    assert trainer.lightning_module is model
    stmt = "call_hooks(trainer, 'on_train_batch_end', outputs, None, 3)"
    return stmt, {"call_hooks": _call_callback_hooks, "trainer": trainer, "outputs": LOGS}


class TrivialHFCallback(TrainerCallback):
    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        pass


def hf_case(n: int, tmp: Path) -> Case:
    args = TrainingArguments(output_dir=str(tmp / "hf"), report_to=[], use_cpu=True)
    # One class per callback: HF warns when a callback class is added twice.
    callbacks = [type(f"TrivialHFCallback{i}", (TrivialHFCallback,), {})() for i in range(n)]
    with quiet("transformers"):  # it warns that no DefaultFlowCallback is there
        handler = CallbackHandler(  # type: ignore[no-untyped-call]
            callbacks, torch.nn.Linear(4, 1), None, None, None
        )
    assert len(handler.callbacks) == n
    namespace = {
        "handler": handler,
        "args": args,
        "state": TrainerState(epoch=1.0, global_step=3),
        "control": TrainerControl(),
        "logs": LOGS,
    }
    return "handler.on_step_end(args, state, control, logs=logs)", namespace


def ignite_case(n: int, tmp: Path) -> Case:
    engine = Engine(lambda engine, batch: None)
    engine.state.metrics = dict(LOGS)  # Ignite keeps metrics there; handlers get the engine
    for _ in range(n):
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: None)
    assert len(engine._event_handlers[Events.ITERATION_COMPLETED]) == n
    return "engine._fire_event(event)", {"engine": engine, "event": Events.ITERATION_COMPLETED}


def blinker_case(n: int, tmp: Path) -> Case:
    signal = blinker.Signal()
    for _ in range(n):
        signal.connect(lambda sender, **kw: None, weak=False)
    assert len(signal.receivers) == n
    return "signal.send(None, batch=3, epoch=1, logs=logs)", {"signal": signal, "logs": LOGS}


class Emitter:
    train_batch_end = psygnal.Signal(int, int, dict)


def psygnal_instance(n: int) -> psygnal.SignalInstance:
    signal = Emitter().train_batch_end
    for _ in range(n):
        signal.connect(lambda batch, epoch, logs: None)
    assert len(signal) == n
    return signal


def psygnal_case(n: int, tmp: Path) -> Case:
    return "signal.emit(3, 1, logs)", {"signal": psygnal_instance(n), "logs": LOGS}


def psygnal_fast_case(n: int, tmp: Path) -> Case:
    return "signal.emit_fast(3, 1, logs)", {"signal": psygnal_instance(n), "logs": LOGS}


BUILDERS: dict[str, Callable[[int, Path], Case]] = {
    EVENTHOOKS: eventhooks_case,
    KERAS: keras_case,
    LIGHTNING: lightning_case,
    HF: hf_case,
    IGNITE: ignite_case,
    BLINKER: blinker_case,
    PSYGNAL: psygnal_case,
    PSYGNAL_FAST: psygnal_fast_case,
}


def subscriber(payload: Any) -> None:
    pass


def cases(tmp: Path) -> dict[str, Case]:
    """Every timed statement with its namespace, by label: the bare call, then each dispatch
    at 1 and at 10 callbacks."""
    found: dict[str, Case] = {BARE: ("f(p)", {"f": subscriber, "p": 1})}
    for dispatch, build in BUILDERS.items():
        for n in COUNTS:
            found[label(dispatch, n)] = build(n, tmp)
    return found


def main(rounds: int = 25, number: int = 4000) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as folder:
        tmp = Path(folder)
        set_keras_home = "KERAS_HOME" not in os.environ  # Keras writes keras.json there
        if set_keras_home:
            os.environ["KERAS_HOME"] = str(tmp / "keras")
        try:
            samples = interleaved_ns(cases(tmp), rounds=rounds, number=number)
        finally:
            torch.set_num_threads(threads)
            if set_keras_home:
                del os.environ["KERAS_HOME"]
    text = report(samples, rounds)
    print(text)
    return text


def per_round(top: list[float], bottom: list[float]) -> float:
    """Median of the per-round ratios: both sides of each ratio saw the same machine."""
    return statistics.median(t / b for t, b in zip(top, bottom, strict=True))


def report(samples: dict[str, list[float]], rounds: int) -> str:
    bare = samples[BARE]
    bare_ns = f"{statistics.median(bare):,.0f}"
    rows: list[tuple[str, ...]] = [(BARE, bare_ns, "1.0x", bare_ns, "1.0x", "")]
    misses: list[str] = []
    for dispatch in BUILDERS:
        cells = [dispatch]
        versus = []
        for n in COUNTS:
            values = samples[label(dispatch, n)]
            cells += [f"{statistics.median(values):,.0f}", f"{per_round(values, bare):.1f}x"]
            if dispatch != EVENTHOOKS:
                share = per_round(samples[label(EVENTHOOKS, n)], values)
                versus.append(f"{share:.2f} ({'yes' if share < 1 else 'no'})")
                if dispatch in TARGETS and share >= 1:
                    misses.append(f"{label(dispatch, n)} ({share:.2f}x its time)")
        cells.append(" / ".join(versus))
        rows.append(tuple(cells))
    text = table(
        f"Peers' own dispatch beside eventhooks' emit, 4 float metrics (median ns per call, "
        f"cases interleaved over {rounds} rounds)",
        (
            "dispatch",
            "1 callback: ns",
            "ratio to bare call",
            "10 callbacks: ns",
            "ratio to bare call",
            "eventhooks' emit ÷ this, 1 / 10 (cheaper?)",
        ),
        rows,
    )
    peers = ", ".join(TARGETS)
    if misses:
        verdict = (
            "eventhooks' validated emit is NOT cheaper than every peer: it costs more than "
            + "; ".join(misses)
            + "."
        )
    else:
        verdict = (
            "eventhooks' validated emit is cheaper than every peer at 1 and at 10 callbacks "
            f"({peers})."
        )
    return text + "\n" + verdict + "\n"


if __name__ == "__main__":
    main()
