"""Background delivery: subscribers that run on a worker thread, off the training thread.

A subscription made with ``background=True`` is not called by ``emit``: emit hands a snapshot
of the payload to the bus's :class:`Worker`, one thread per bus, which calls the background
subscribers in the order the events were emitted. So a tracker that writes a file or makes an
HTTP call per event costs the training loop a queue append, not the write.

=====================  =====================================================================
guarantee              how
=====================  =====================================================================
every event, once      a FIFO queue; a full queue makes the emitting thread wait, unless the
                       subscription chose ``overflow="drop"`` (then ``sub.dropped`` counts)
in order               one worker per bus: events reach every background subscriber of the bus
                       in emit order, across events (an object's ``on_*`` methods included)
a snapshot             the payload is copied at the handoff, its dicts too: a framework or a
                       later subscriber that changes ``logs`` afterwards changes nothing here
drained                ``teardown`` returns once the worker has handled it and everything
                       before it; so do ``bus.flush()``, ``bus.close()`` and interpreter exit
failures               a failure follows the subscription's error policy; under ``raise`` it
                       is raised, named, by the next emit on the bus (or by ``flush``)
=====================  =====================================================================

A background subscriber may emit, flush or request a stop: on the worker thread, emit never
waits for room in its own queue and ``flush`` does not wait for itself.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._subscription import Subscription

log = logging.getLogger("eventhooks")

#: Room in a bus's queue (events waiting for the worker) before an emit waits or drops.
DEFAULT_QUEUE_SIZE = 10_000

#: Seconds the worker lingers once its queue is empty, before it waits for the next event. A
#: handoff to a worker blocked on its queue wakes the thread, and every wake-up takes the GIL
#: from the training thread: waking per event cost a ~1 ms step 7-11% in ``bench_background``,
#: lingering 3 ms 3.5-5% (10 and 30 ms did worse: more is left for the run's teardown to wait
#: for). Events that arrive meanwhile are delivered together; a drain or a full queue cuts the
#: linger short.
LINGER = 0.003


def snapshot(payload: Any) -> Any:
    """A copy of ``payload`` whose dict fields (``logs``, ``hyperparams``...) are copies too."""
    copy = payload.__copy__()  # pydantic: its own __dict__, fields set, extras
    fields = copy.__dict__
    for name, value in fields.items():
        if type(value) is dict:
            fields[name] = dict(value)
    return copy


class Worker:
    """One bus's background thread and its queue of ``(subscription, payload)`` to deliver.

    The queue is a C :class:`queue.SimpleQueue`, so a handoff is a lock and an append, and a
    worker with nothing to do lingers (see :data:`LINGER`), then waits in C. ``_queued``
    counts handoffs (under ``_lock``, with the append), ``_done`` deliveries (written by the
    worker alone); their difference is what is still to do, what a full queue and a drain wait
    on (``_room``).
    """

    def __init__(self, owner: Any, size: int) -> None:
        self._owner = weakref.ref(owner)  # the bus: told of failures
        self.size = size
        self._lock = threading.Lock()  # handoffs, and starting or ending the thread
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queued = 0
        self._done = 0
        self._room = threading.Condition(threading.Lock())  # emits waiting for room, drains
        self._waiting = 0
        self._thread: threading.Thread | None = None
        self._previous: threading.Thread | None = None  # a closed worker's, still finishing
        self.current: Subscription | None = None  # the subscriber being called, if any
        self._hurry = _armed()  # released by someone who waits: ends the worker's linger
        _WORKERS.add(self)

    @property
    def on_worker(self) -> bool:
        # The thread, not its id (ids are reused); a closed worker's thread still finishing
        # its queue (``_previous``) is the worker too.
        me = threading.current_thread()
        return me is self._thread or me is self._previous

    def put(self, sub: Subscription, payload: Any) -> bool:
        """Queue one delivery; False if it was dropped (a full queue, ``overflow="drop"``)."""
        if self._queued - self._done >= self.size and not self.on_worker:
            if sub.options.overflow == "drop":
                with self._lock:
                    sub.dropped += 1
                return False
            self._wait_until(lambda: self._queued - self._done < self.size)
        with self._lock:
            self._queued += 1
            self._queue.put((sub, payload))
            if self._thread is None:
                self._start()
        return True

    def _start(self) -> None:
        """Start the thread (under ``_lock``). Past interpreter shutdown no thread can start:
        :meth:`drain` delivers on the caller's thread then."""
        previous = self._previous
        thread = threading.Thread(
            target=self._run, args=(self._queue, previous), name="eventhooks-background",
            daemon=True,
        )  # fmt: skip
        try:
            thread.start()
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            return
        self._thread = thread

    def _run(self, items: queue.SimpleQueue[Any], previous: threading.Thread | None) -> None:
        if previous is not None:  # close() handed over: the old thread goes first, in order
            previous.join()
        self._previous = None
        while True:
            item = items.get()
            while True:
                if item is _STOP:
                    return
                self._deliver(*item)
                self._done += 1
                if self._waiting:
                    with self._room:
                        self._room.notify_all()
                if items.empty():  # asked, not caught: an exception per batch costs ~1 µs
                    break
                item = items.get()
            if not self._waiting:  # nobody waits for this worker: linger (see LINGER)
                self._hurry.acquire(timeout=LINGER)

    def _deliver(self, sub: Subscription, payload: Any) -> None:
        if not sub.live:  # disconnected (or disabled) since the emit
            return
        self.current = sub
        try:
            sub(payload)
        except BaseException as exc:  # the worker must outlive any subscriber
            try:
                bus = self._owner()
                if bus is None:
                    log.warning("background subscriber %s failed on event %r", sub.label,
                                sub.event.name, exc_info=exc)  # fmt: skip
                else:
                    bus._background_failed(sub, exc)
            except BaseException:  # reporting it failed (an exception whose str() raises...)
                log.exception("background subscriber %s failed on event %r, and reporting "
                              "the failure failed too", sub.label, sub.event.name)  # fmt: skip
        finally:
            self.current = None

    def _wait_until(self, ready: Callable[[], bool], stuck: float | None = None) -> bool:
        """Wait until ``ready()``; False if no thread is there to make it so, or (given
        ``stuck``) when no delivery has finished for ``stuck`` seconds."""
        with self._room:
            self._waiting += 1
            _release(self._hurry)  # a lingering worker goes on at once
            try:
                done, since = self._done, time.monotonic()
                while not ready():
                    threads = [t for t in (self._thread, self._previous) if t is not None]
                    if not any(t.is_alive() for t in threads):
                        return False  # no thread to wait for (see drain)
                    self._room.wait(0.5)  # a timeout only as a safety net
                    if self._done != done:
                        done, since = self._done, time.monotonic()
                    elif stuck is not None and time.monotonic() - since > stuck:
                        return False
                return True
            finally:
                self._waiting -= 1

    def drain(self, stuck: float | None = None) -> bool:
        """Wait until everything queued so far has been delivered (not on the worker itself:
        there it returns at once). Without a thread (interpreter shutdown), deliver here.
        With ``stuck``, give up when no delivery has finished for that many seconds (a hung
        subscriber) and return False."""
        if self.on_worker:
            return True
        target = self._queued
        if self._wait_until(lambda: self._done >= target, stuck):
            return True
        if self._thread is not None or self._previous is not None:
            return False  # stuck
        with self._lock:  # no thread could start: deliver what is queued on this one
            if self._thread is None:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    self._deliver(*item)
                    self._done += 1
        return True

    def close(self) -> None:
        """Drain, then end the thread (a later handoff starts a new one). On the worker
        itself (a background subscriber closing its bus) there is nothing to wait for and the
        thread goes on with what is queued: it is not ended from inside."""
        if self.on_worker:
            return
        self.drain()
        with self._lock:
            thread, items = self._thread, self._queue
            if thread is None:
                return
            self._queue = queue.SimpleQueue()
            self._thread = None
            self._previous = thread
            items.put(_STOP)
        thread.join()
        with self._lock:
            if self._previous is thread:
                self._previous = None

    def _after_fork(self) -> None:
        """In a forked child the thread is gone: start afresh (queued items stay the
        parent's)."""
        self._lock = threading.Lock()
        self._room = threading.Condition(threading.Lock())
        self._hurry = _armed()
        self._queue = queue.SimpleQueue()
        self._queued = self._done = self._waiting = 0
        self._thread = self._previous = None


_STOP = object()  # ends a worker thread (close)


def _armed() -> threading.Lock:
    """The worker's hurry signal: a lock held while nobody hurries it. The lingering worker
    waits to acquire it (in C, a timed lock wait: cheaper than an ``Event``'s Python-level
    condition); a waiter releases it, and the worker's acquiring it arms it again."""
    hurry = threading.Lock()
    hurry.acquire()
    return hurry


def _release(hurry: threading.Lock) -> None:
    with contextlib.suppress(RuntimeError):  # already released by another waiter
        hurry.release()


_WORKERS: weakref.WeakSet[Worker] = weakref.WeakSet()


#: At interpreter exit, how long a background subscriber may go without finishing an event
#: before exit stops waiting for it (Ctrl-C is not delivered during exit).
EXIT_STUCK_SECONDS = 30.0


def _drain_all() -> None:
    """At interpreter exit, deliver what background subscribers still have queued; say what
    could not be (a hung subscriber) and what failed meanwhile under ``raise``."""
    for worker in list(_WORKERS):
        try:
            if not worker.drain(stuck=EXIT_STUCK_SECONDS):
                current = worker.current
                log.error(
                    "eventhooks: at exit, background subscriber %s has not finished an event "
                    "for %.0f s; %d event(s) not delivered (the one it is on included)",
                    current.label if current else "?", EXIT_STUCK_SECONDS,
                    worker._queued - worker._done,
                )  # fmt: skip
            bus = worker._owner()
            pending = list(bus._pending) if bus is not None else []
            for failed in pending:
                log.error("eventhooks: at exit, %s", failed, exc_info=failed.original)
        except Exception:  # exit goes on; say what failed
            log.exception("eventhooks: draining background subscribers at exit failed")


def _reset_after_fork() -> None:
    for worker in list(_WORKERS):
        worker._after_fork()


atexit.register(_drain_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
