"""Background delivery (#14): real threads, slow subscribers, failures, drains.

No timing is asserted: slowness is made with events and sleeps, and every check is about what
was delivered, in which order, on which thread, and when the emitting side learnt of it.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventhooks import Callback, EventBus, Options, SubscriberError
from eventhooks.lifecycle import Run
from eventhooks.payloads import BatchPayload, EpochPayload, TeardownPayload


def _train(bus: EventBus, epochs: int = 1, batches: int = 5, logs: Any = None) -> Run:
    """A plain loop on the lifecycle: ``batches`` batches per epoch, loss = batch index."""
    with Run(bus) as run:
        for _ in run.epochs(epochs):
            for b in range(batches):
                if run.stop_requested:
                    break
                run.batch_start()
                run.batch_end(logs if logs is not None else {"loss": float(b)})
            run.epoch_end({"loss": 0.0})
    return run


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.seen: list[tuple[str, Any]] = []
        self.threads: set[str] = set()

    def __call__(self, payload: Any) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.threads.add(threading.current_thread().name)
        self.seen.append((type(payload).__name__, getattr(payload, "batch", None)))


def test_a_slow_background_subscriber_hears_every_event_in_order_on_another_thread() -> None:
    bus = EventBus(queue_size=3)  # far fewer than the emits: the emitting thread has to wait
    fore, back = Recorder(), Recorder(delay=0.002)
    for event in ("on_train_batch_end", "on_fit_epoch_end", "teardown"):
        bus.subscribe(event, fore)
        bus.subscribe(event, back, background=True)
    _train(bus, epochs=2, batches=10)
    assert back.seen == fore.seen  # every event, once, in emit order, across events
    assert len(back.seen) == 2 * 10 + 2 + 1
    assert back.threads == {"eventhooks-background"}
    assert fore.threads == {threading.current_thread().name}


def test_teardown_returns_after_the_background_work_before_it() -> None:
    bus = EventBus()
    done: list[int] = []
    gate = threading.Event()

    def slow(p: BatchPayload) -> None:
        gate.wait(5)
        done.append(p.batch)

    bus.subscribe("on_train_batch_end", slow, background=True)
    threading.Timer(0.05, gate.set).start()
    _train(bus, batches=4)
    assert done == [0, 1, 2, 3]  # all handled by the time the run's `with` has left


def test_the_payload_is_a_snapshot_taken_at_the_emit() -> None:
    bus = EventBus()
    gate = threading.Event()
    got: list[dict[str, float]] = []

    def late(p: BatchPayload) -> None:
        gate.wait(5)
        got.append(p.logs)

    def mutate(p: BatchPayload) -> None:  # a foreground subscriber after the handoff
        p.logs["loss"] = -1.0

    bus.subscribe("on_train_batch_end", late, background=True, priority=1)
    bus.subscribe("on_train_batch_end", mutate)
    logs = {"loss": 1.0}
    bus.emit("on_train_batch_end", batch=0, logs=logs)
    logs["loss"] = 99.0  # a framework reusing its logs dict
    logs["acc"] = 0.5
    gate.set()
    bus.flush()
    assert got == [{"loss": 1.0}]


def test_flush_and_close_drain_and_the_bus_goes_on_after_close() -> None:
    bus = EventBus()
    back = Recorder(delay=0.001)
    bus.subscribe("on_train_batch_end", back, background=True)
    for b in range(20):
        bus.emit("on_train_batch_end", batch=b)
    bus.flush()
    assert [b for _, b in back.seen] == list(range(20))
    bus.close()
    worker = bus._worker
    assert worker is not None and worker._thread is None  # the thread has ended
    bus.emit("on_train_batch_end", batch=20)  # a new worker thread takes over
    bus.close()
    assert [b for _, b in back.seen] == list(range(21))


def test_interpreter_exit_drains_what_is_queued(tmp_path: Path) -> None:
    out = tmp_path / "seen.txt"
    script = textwrap.dedent(f"""
        import time
        from eventhooks import EventBus
        bus = EventBus()
        def slow(p):
            time.sleep(0.005)
            with open({str(out)!r}, "a") as f:
                f.write(f"{{p.batch}}\\n")
        bus.subscribe("on_train_batch_end", slow, background=True)
        for b in range(30):
            bus.emit("on_train_batch_end", batch=b)
        # no flush, no close: the process just ends
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert out.read_text().split() == [str(b) for b in range(30)]


def test_a_background_failure_is_raised_named_at_the_next_emit() -> None:
    bus = EventBus()
    gate = threading.Event()

    def broken(p: BatchPayload) -> None:
        gate.wait(5)
        raise ValueError("disk full")

    bus.subscribe("on_train_batch_end", broken, background=True)
    bus.emit("on_train_batch_end", batch=0)  # handed off: the emit itself succeeds
    gate.set()
    bus._worker.drain()  # type: ignore[union-attr]  # the failure is recorded by now
    with pytest.raises(SubscriberError) as info:
        bus.emit("on_train_batch_end", batch=1)
    assert "broken" in str(info.value) and "on_train_batch_end" in str(info.value)
    assert isinstance(info.value.original, ValueError)
    with pytest.raises(SubscriberError, match="disk full"):  # batch 1 failed after that raise
        bus.flush()
    bus.flush()  # nothing left to raise


def test_a_background_failure_fails_the_run_and_teardown_carries_it() -> None:
    bus = EventBus()
    ends: list[TeardownPayload] = []
    bus.subscribe("teardown", ends.append)

    def broken(p: BatchPayload) -> None:
        raise ValueError("tracker down")

    bus.subscribe("on_train_batch_end", broken, background=True)
    with pytest.raises(SubscriberError, match="tracker down"):
        _train(bus, batches=50)
    assert len(ends) == 1


def test_a_background_failure_met_only_at_the_end_is_carried_by_teardown() -> None:
    """The last batch's background failure, found while the run ends (bug: ``teardown`` went
    out with no error and the failure was raised after it)."""
    bus = EventBus()
    ends: list[TeardownPayload] = []
    bus.subscribe("teardown", ends.append)

    def broken_at_the_end(p: BatchPayload) -> None:
        if p.batch == 4:
            time.sleep(0.2)  # still busy when the run's last events go out
            raise ValueError("tracker down")

    bus.subscribe("on_train_batch_end", broken_at_the_end, background=True)
    with pytest.raises(SubscriberError, match="tracker down") as info:
        _train(bus, batches=5)
    (end,) = ends
    assert end.error is not None and "tracker down" in end.error
    assert end.exception is info.value


def test_warn_and_disable_policies_apply_in_the_background(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    calls: list[int] = []

    def broken(p: BatchPayload) -> None:
        calls.append(p.batch)
        raise ValueError("flaky")

    sub = bus.subscribe("on_train_batch_end", broken, background=True, errors="disable",
                        max_failures=2)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="eventhooks"):
        for b in range(6):
            bus.emit("on_train_batch_end", batch=b)
        bus.flush()  # no raise: the policy is not "raise"
    assert calls == [0, 1]  # disabled after two failures; the queued rest is skipped
    assert not sub.connected
    assert "disabled after 2 failures" in caplog.text


def test_a_stop_requested_in_the_background_reaches_the_run() -> None:
    class StopAtThree(Callback):
        background: ClassVar[bool] = True

        def on_train_batch_end(self, payload: BatchPayload) -> None:
            if payload.batch == 3:
                self.request_stop("enough")

    bus = EventBus()
    attachment = bus.attach(StopAtThree())
    assert all(sub.background for sub in attachment.subscriptions)
    seen: list[int] = []

    def slowly(p: BatchPayload) -> None:  # the training thread, slower than the worker
        seen.append(p.batch)
        time.sleep(0.01)

    bus.subscribe("on_train_batch_end", slowly)
    _train(bus, batches=1000)
    assert bus.stop_requested and bus.stop_reason == "enough"
    assert 3 < len(seen) < 1000  # stopped some batches after the request: not at once


def test_attach_follows_the_objects_choice_unless_told() -> None:
    class Tracker(Callback):
        background: ClassVar[bool] = True

        def on_fit_epoch_end(self, payload: EpochPayload) -> None: ...

    class Plotter(Callback):
        background = "white"  # not True: an unrelated attribute, not a choice

        def on_fit_epoch_end(self, payload: EpochPayload) -> None: ...

    bus = EventBus()
    assert bus.attach(Tracker()).subscriptions[0].background
    assert not bus.attach(Tracker(), background=False).subscriptions[0].background
    assert not bus.attach(Tracker(), Options(background=False)).subscriptions[0].background
    assert not bus.attach(Plotter()).subscriptions[0].background
    assert bus.attach(Plotter(), background=True).subscriptions[0].background


def test_overflow_drop_counts_what_it_dropped_and_wait_loses_nothing() -> None:
    bus = EventBus(queue_size=2)
    gate = threading.Event()
    dropped_seen: list[int] = []
    kept: list[int] = []

    def stuck(p: BatchPayload) -> None:
        gate.wait(5)
        dropped_seen.append(p.batch)

    lossy = bus.subscribe("on_train_batch_end", stuck, background=True, overflow="drop")
    for b in range(10):
        bus.emit("on_train_batch_end", batch=b)
    assert lossy.dropped >= 7  # at most one in the worker's hands and two queued
    gate.set()
    bus.flush()
    assert len(dropped_seen) + lossy.dropped == 10
    assert dropped_seen == sorted(dropped_seen) and dropped_seen[0] == 0

    bus.subscribe("on_train_batch_end", kept.append, background=True)  # overflow="wait"
    for b in range(10, 30):
        bus.emit("on_train_batch_end", batch=b)
    bus.flush()
    assert [p.batch for p in kept] == list(range(10, 30))  # type: ignore[attr-defined]


def test_a_background_subscriber_that_emits_does_not_deadlock_on_a_full_queue() -> None:
    bus = EventBus(queue_size=1)
    saves: list[str] = []

    def save_each(p: BatchPayload) -> None:
        bus.emit("on_model_save", path=f"ckpt-{p.batch}")
        bus.flush()  # on the worker: returns at once

    bus.subscribe("on_train_batch_end", save_each, background=True)
    bus.subscribe("on_model_save", lambda p: saves.append(p.path), background=True)
    for b in range(5):
        bus.emit("on_train_batch_end", batch=b)
    bus.flush()
    assert saves == [f"ckpt-{b}" for b in range(5)]


def test_filters_judge_background_deliveries_as_foreground_ones() -> None:
    bus = EventBus()
    every: list[int] = []
    once: list[int] = []
    bus.subscribe("on_train_batch_end", lambda p: every.append(p.batch), background=True,
                  every=3)  # fmt: skip
    bus.subscribe("on_train_batch_end", lambda p: once.append(p.batch), background=True,
                  once=5)  # fmt: skip
    assert not bus.listening("on_train_batch_end", batch=0)
    assert bus.listening("on_train_batch_end", batch=2)
    for b in range(10):
        bus.emit("on_train_batch_end", batch=b)
    bus.flush()
    assert every == [2, 5, 8]
    assert once == [4]


def test_the_background_option_survives_pickling() -> None:
    bus = EventBus(queue_size=7)
    bus.subscribe("on_train_batch_end", print, background=True, overflow="drop")
    copy = pickle.loads(pickle.dumps(bus))
    sub = copy.subscriptions("on_train_batch_end")[0]
    assert sub.background and sub.options.overflow == "drop" and copy.queue_size == 7


def test_bad_background_options_are_clear_errors() -> None:
    with pytest.raises(TypeError, match="background="):
        Options(background="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="overflow="):
        Options(overflow="block")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queue_size="):
        EventBus(queue_size=0)


@given(
    batches=st.lists(st.integers(0, 10_000), max_size=40),
    queue_size=st.integers(1, 8),
    priorities=st.lists(st.integers(-2, 2), min_size=1, max_size=4),
)
def test_background_subscribers_hear_what_foreground_ones_hear(
    batches: list[int], queue_size: int, priorities: list[int]
) -> None:
    bus = EventBus(queue_size=queue_size)
    fore: list[tuple[int, float]] = []
    backs: list[list[tuple[int, float]]] = [[] for _ in priorities]
    bus.subscribe("on_train_batch_end", lambda p: fore.append((p.batch, p.logs["loss"])))
    for seen, priority in zip(backs, priorities, strict=True):

        def record(p: BatchPayload, seen: list[tuple[int, float]] = seen) -> None:
            seen.append((p.batch, p.logs["loss"]))

        bus.subscribe("on_train_batch_end", record, background=True, priority=priority)
    logs: dict[str, float] = {}
    for b in batches:
        logs["loss"] = float(b)
        bus.emit("on_train_batch_end", batch=b, logs=logs)
        logs["loss"] = -1.0
    bus.close()
    assert all(seen == fore for seen in backs)


def test_emitting_threads_share_a_background_subscriber_without_loss() -> None:
    bus = EventBus(queue_size=4)
    seen: list[tuple[int, int]] = []
    bus.subscribe("on_train_batch_end", lambda p: seen.append((p.epoch, p.batch)),
                  background=True)  # fmt: skip

    def emitter(thread: int) -> None:
        for b in range(300):
            bus.emit("on_train_batch_end", batch=b, epoch=thread)

    threads = [threading.Thread(target=emitter, args=(t,)) for t in range(4)]
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: interleave the handoffs
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(previous)
    bus.flush()
    assert len(seen) == 4 * 300
    for thread in range(4):  # each thread's events in its order
        assert [b for e, b in seen if e == thread] == list(range(300))


def test_a_session_on_its_own_ends_once_its_background_work_is_done() -> None:
    from eventhooks.lifecycle import Export, Prediction, Validation

    bus = EventBus()
    gate = threading.Event()
    seen: list[str] = []

    def slow(p: Any) -> None:
        gate.wait(0.05)  # never set: each delivery takes 50 ms
        seen.append(type(p).__name__)

    for event in ("on_val_end", "on_predict_end", "on_export_end"):
        bus.subscribe(event, slow, background=True)
    with Validation(bus) as validation:
        validation.batch_start()
        validation.batch_end()
    assert len(seen) == 1
    with Prediction(bus):
        pass
    assert len(seen) == 2
    with Export(bus, format="onnx") as export:
        export.path = "model.onnx"
    assert len(seen) == 3


def test_a_background_failure_is_not_blamed_on_the_foreground_subscriber_of_the_next_emit(
) -> None:
    bus = EventBus()
    gate = threading.Event()

    def sink(p: EpochPayload) -> None:
        gate.wait(5)
        raise ValueError("sink broke")

    heard: list[int] = []
    bus.subscribe("on_fit_epoch_end", sink, background=True)
    innocent = bus.subscribe("on_train_batch_end", lambda p: heard.append(p.batch),
                             errors="disable", max_failures=1)  # fmt: skip
    bus.emit("on_fit_epoch_end", epoch=0)
    gate.set()
    bus._worker.drain()  # type: ignore[union-attr]
    with pytest.raises(SubscriberError, match="sink broke") as info:
        bus.emit("on_train_batch_end", batch=0)
    assert "sink" in info.value.subscriber
    assert innocent.connected and heard == [0]  # it heard the event, and did not fail


def test_a_background_failure_met_in_a_nested_emit_reaches_the_outer_emit_as_itself() -> None:
    bus = EventBus()
    gate = threading.Event()

    def sink(p: EpochPayload) -> None:
        gate.wait(5)
        raise ValueError("sink broke")

    def saves(p: BatchPayload) -> None:  # a foreground subscriber that emits
        bus.emit("on_model_save", path="ckpt")

    bus.subscribe("on_fit_epoch_end", sink, background=True)
    outer = bus.subscribe("on_train_batch_end", saves, errors="warn")
    bus.subscribe("on_model_save", lambda p: None)
    bus.emit("on_fit_epoch_end", epoch=0)
    gate.set()
    bus._worker.drain()  # type: ignore[union-attr]
    with pytest.raises(SubscriberError, match="sink broke"):
        bus.emit("on_train_batch_end", batch=0)
    assert outer.failures == 0 and outer.connected


def test_close_called_by_a_background_subscriber_does_not_cut_the_drains_short() -> None:
    bus = EventBus()
    got: list[int] = []

    def closes_at_five(p: BatchPayload) -> None:
        got.append(p.batch)
        if p.batch == 5:
            bus.close()  # on the worker: nothing to wait for, the thread goes on
        time.sleep(0.002)

    bus.subscribe("on_train_batch_end", closes_at_five, background=True)
    for b in range(30):
        bus.emit("on_train_batch_end", batch=b)
    bus.flush()
    assert got == list(range(30))
    _train(bus, batches=10)  # the run's teardown waits too
    assert len(got) == 40


def test_exit_logs_a_background_failure_it_met_while_draining(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import time
        from eventhooks import EventBus
        bus = EventBus()
        def bad(p):
            time.sleep(0.05)
            raise ValueError("sink broke at exit")
        bus.subscribe("on_fit_epoch_end", bad, background=True)
        bus.emit("on_fit_epoch_end", epoch=0)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert "sink broke at exit" in done.stderr and "bad" in done.stderr


def test_exit_stops_waiting_for_a_hung_background_subscriber_and_names_it() -> None:
    script = textwrap.dedent("""
        import time
        import eventhooks._background as background
        background.EXIT_STUCK_SECONDS = 1.0
        from eventhooks import EventBus
        bus = EventBus()
        def hung(p):
            time.sleep(3600)
        bus.subscribe("on_fit_epoch_end", hung, background=True)
        bus.emit("on_fit_epoch_end", epoch=0)
        bus.emit("on_fit_epoch_end", epoch=1)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert "hung" in done.stderr and "2 event(s) not delivered" in done.stderr


def test_close_from_another_thread_lets_the_worker_flush_and_emit_what_it_still_has() -> None:
    bus = EventBus(queue_size=1)
    closing = threading.Event()
    flushed: list[str] = []

    def saves(p: EpochPayload) -> None:  # still running when close() begins on the main thread
        closing.wait(5)
        time.sleep(0.05)
        bus.emit("on_model_save", path="ckpt")  # a full queue: the worker must not wait for it

    def flushes(p: Any) -> None:  # delivered by the closed worker's thread, after close began
        time.sleep(0.1)  # close() has handed the worker over by now
        bus.flush()  # on the worker: returns at once
        flushed.append(p.path)

    bus.subscribe("on_fit_epoch_end", saves, background=True)
    bus.subscribe("on_model_save", flushes, background=True)
    bus.emit("on_fit_epoch_end", epoch=0)
    closer = threading.Thread(target=bus.close, daemon=True)
    closer.start()
    closing.set()
    closer.join(20)
    assert not closer.is_alive()  # close() returned
    bus.flush()
    assert flushed == ["ckpt"]


def test_a_background_failure_met_after_a_foreground_failure_is_logged_not_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    gate = threading.Event()

    def sink(p: EpochPayload) -> None:
        gate.wait(5)
        raise ValueError("sink broke")

    def fails(p: BatchPayload) -> None:
        raise KeyError("foreground broke")

    bus.subscribe("on_fit_epoch_end", sink, background=True)
    bus.subscribe("on_train_batch_end", fails, priority=10)
    bus.subscribe("on_train_batch_end", lambda p: bus.emit("on_model_save", path="x"))
    bus.subscribe("on_model_save", lambda p: None)
    bus.emit("on_fit_epoch_end", epoch=0)
    gate.set()
    bus._worker.drain()  # type: ignore[union-attr]
    with caplog.at_level(logging.WARNING, logger="eventhooks"):
        with pytest.raises(SubscriberError, match="foreground broke"):
            bus.emit("on_train_batch_end", batch=0)
    assert "sink broke" in caplog.text


def test_a_background_failure_met_through_another_bus_is_not_the_forwarders() -> None:
    first, second = EventBus(), EventBus()
    gate = threading.Event()

    def sink(p: EpochPayload) -> None:
        gate.wait(5)
        raise ValueError("sink broke")

    second.subscribe("on_fit_epoch_end", sink, background=True)
    second.subscribe("on_train_batch_end", lambda p: None)
    forwarder = first.subscribe(
        "on_train_batch_end", lambda p: second.emit("on_train_batch_end", batch=p.batch),
        errors="disable", max_failures=1,
    )  # fmt: skip
    second.emit("on_fit_epoch_end", epoch=0)
    gate.set()
    second._worker.drain()  # type: ignore[union-attr]
    with pytest.raises(SubscriberError, match="sink broke"):
        first.emit("on_train_batch_end", batch=0)
    assert forwarder.connected and forwarder.failures == 0


def test_an_exception_that_cannot_be_printed_does_not_kill_the_worker() -> None:
    class Odd(BaseException):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    bus = EventBus(errors="warn")
    seen: list[int] = []

    def odd(p: EpochPayload) -> None:
        if p.epoch == 0:
            raise Odd()
        seen.append(p.epoch)

    bus.subscribe("on_fit_epoch_end", odd, background=True)
    bus.emit("on_fit_epoch_end", epoch=0)
    bus.emit("on_fit_epoch_end", epoch=1)
    flushing = threading.Thread(target=bus.flush, daemon=True)
    flushing.start()
    flushing.join(20)
    assert not flushing.is_alive() and seen == [1]
