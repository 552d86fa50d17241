"""What a slow sink costs a PyTorch loop: called on the training thread, or in the background.

The loop of ``bench_torch`` (a step of about 1.1 ms on this machine, one thread), with one
subscriber to ``on_train_batch_end`` that takes about 1 ms per event, as a tracker's file write
or HTTP call does (it sleeps: I/O releases the GIL). Foreground, the sink's millisecond is added
to every step; with ``background=True`` the bus's worker thread takes it, and the run's
``teardown`` waits for the worker, so the time shown includes draining what is left. The
sink's own time per event is measured and printed. Runs rotate as in ``bench_torch``.

The floor: the plain loop beside a thread that does nothing but sleep 1 ms in a loop. Every
wake-up of a Python thread takes the GIL from the training thread for a moment; no background
sink called once per millisecond can cost less than that.

Run: ``.venv/bin/python benchmarks/bench_background.py``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from _timing import table  # noqa: E402
from bench_torch import BATCHES, Batches, data, instrumented, plain, rotated  # noqa: E402

from eventhooks import EventBus  # noqa: E402

ROUNDS = 41  # a round is ~2 s: cheap enough for many, and the noise needs them
SINK_SECONDS = 0.001


class Sink:
    """A subscriber that takes ~1 ms per event (sleeping, as I/O does), and times itself;
    ``seconds=0`` makes it a reader of the batch logs that takes no time of its own."""

    def __init__(self, seconds: float = SINK_SECONDS) -> None:
        self.sleep = seconds
        self.seconds: list[float] = []
        self.drains: list[float] = []  # per run: from on_train_end until the run returned
        self.total = 0.0

    def __call__(self, payload: Any) -> None:
        start = time.perf_counter()
        self.total += payload.logs["loss"]
        if self.sleep:
            time.sleep(self.sleep)
        self.seconds.append(time.perf_counter() - start)


def with_sink(batches: Batches, sink: Sink | None, *, background: bool) -> Callable[[], None]:
    """``bench_torch``'s instrumented loop (``run.log(loss=loss)`` each batch), ``sink`` on
    ``on_train_batch_end``. The time from ``on_train_end`` to the run's return (the teardown
    waiting for the worker to finish the last events) is kept in ``sink.drains``."""
    bus = EventBus()
    if sink is None:
        return instrumented(batches, 0, bus=bus)
    bus.subscribe("on_train_batch_end", sink, background=background)
    ended: list[float] = []
    bus.subscribe("on_train_end", lambda payload: ended.append(time.perf_counter()))
    loop = instrumented(batches, 0, bus=bus)

    def run() -> None:
        loop()
        sink.drains.append(time.perf_counter() - ended[-1])

    return run


def with_ticker(run: Callable[[], None]) -> Callable[[], None]:
    """``run`` beside a thread that does nothing but wake every millisecond: what any thread
    active at the sink's rate costs the loop (the GIL hand-offs), whatever it runs."""

    def ticking() -> None:
        done = threading.Event()

        def tick() -> None:
            while not done.is_set():
                time.sleep(SINK_SECONDS)

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            run()
        finally:
            done.set()
            thread.join()

    return ticking


def main() -> str:
    torch.set_num_threads(1)
    batches = data()
    fore, back, reader_back = Sink(), Sink(), Sink(0)
    variants = {
        "plain loop (baseline)": plain(batches),
        "plain loop again (noise control)": plain(batches),
        "plain loop beside a thread waking every 1 ms (the floor)": with_ticker(plain(batches)),
        "instrumented, nobody listening": with_sink(batches, None, background=False),
        "a reader of batch logs taking no time, foreground": with_sink(
            batches, Sink(0), background=False
        ),
        "the same reader, `background=True`": with_sink(batches, reader_back, background=True),
        "1 ms sink on every batch, foreground": with_sink(batches, fore, background=False),
        "1 ms sink on every batch, `background=True`": with_sink(batches, back, background=True),
    }
    samples = rotated(variants, ROUNDS)
    base = samples["plain loop (baseline)"]

    def added(times: list[float]) -> float:  # per round: both sides saw the same machine
        return statistics.median(t / b for t, b in zip(times, base, strict=True)) - 1

    rows = [
        (label, f"{statistics.median(t) / BATCHES * 1e3:.3f}", f"{added(t) * 100:+.2f}%", "")
        for label, t in samples.items()
    ]
    # A run's end waits for the worker's last events: a cost per run, not per batch, which a
    # 200-batch epoch makes large. Without it, what a longer run pays per batch:
    for sink, label in ((reader_back, "the same reader, `background=True`"),
                        (back, "1 ms sink on every batch, `background=True`")):  # fmt: skip
        index = list(samples).index(label)
        drains = sink.drains[-ROUNDS:]  # the timed rounds (the first call warms up)
        steady = added([t - d for t, d in zip(samples[label], drains, strict=True)])
        rows[index] = (*rows[index][:3], f"{statistics.median(drains) * 1e3:.2f} ms / "
                       f"{steady * 100:+.2f}%")  # fmt: skip
    sink_ms = statistics.median(fore.seconds + back.seconds) * 1e3
    text: str = table(
        f"A ~1 ms sink per batch, foreground or background: one epoch of {BATCHES} batches "
        f"(the sink measured {sink_ms:.3f} ms per event; added: the median over {ROUNDS} "
        "rounds of each round's time against that round's baseline, order rotating)",
        ("loop", "ms per batch", "added", "teardown's wait / added without it"),
        rows,
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
