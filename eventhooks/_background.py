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
import collections
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._subscription import Subscription

log = logging.getLogger("eventhooks")

#: Room in a bus's queue (events waiting for the worker) before an emit waits or drops.
DEFAULT_QUEUE_SIZE = 10_000


def snapshot(payload: Any) -> Any:
    """A copy of ``payload`` whose dict fields (``logs``, ``hyperparams``...) are copies too."""
    copy = payload.__copy__()  # pydantic: its own __dict__, fields set, extras
    fields = copy.__dict__
    for name, value in fields.items():
        if type(value) is dict:
            fields[name] = dict(value)
    return copy


class Worker:
    """One bus's background thread and its queue of ``(subscription, payload)`` to deliver."""

    def __init__(self, owner: Any, size: int) -> None:
        self._owner = weakref.ref(owner)  # the bus: told of failures
        self.size = size
        self._queue: collections.deque[tuple[Subscription, Any]] = collections.deque()
        self._unfinished = 0  # queued or being delivered
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closing = False
        _WORKERS.add(self)

    @property
    def on_worker(self) -> bool:
        return threading.current_thread() is self._thread

    def put(self, sub: Subscription, payload: Any) -> bool:
        """Queue one delivery; False if it was dropped (a full queue, ``overflow="drop"``)."""
        on_worker = self.on_worker
        with self._cond:
            if not on_worker:  # the worker itself never waits for its own queue
                while self._closing and self._thread is not None:  # close() under way
                    self._cond.wait()
                if len(self._queue) >= self.size:
                    if sub.options.overflow == "drop":
                        sub.dropped += 1
                        return False
                    while len(self._queue) >= self.size and self._thread is not None:
                        self._cond.wait()
            self._queue.append((sub, payload))
            self._unfinished += 1
            if self._thread is None:
                self._start()
            else:
                self._cond.notify_all()
        return True

    def _start(self) -> None:
        """Start the thread (under the condition's lock). Past interpreter shutdown no thread
        can start: the caller's thread delivers then (see :func:`_drain_all`)."""
        self._closing = False
        thread = threading.Thread(target=self._run, name="eventhooks-background", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            return
        self._thread = thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if self._closing:
                        self._thread = None
                        self._cond.notify_all()
                        return
                    self._cond.wait()
                sub, payload = self._queue.popleft()
                self._cond.notify_all()  # room for a waiting emit
            self._deliver(sub, payload)
            with self._cond:
                self._unfinished -= 1
                self._cond.notify_all()

    def _deliver(self, sub: Subscription, payload: Any) -> None:
        if not sub.live:  # disconnected (or disabled) since the emit
            return
        try:
            sub(payload)
        except BaseException as exc:  # the worker must outlive any subscriber
            bus = self._owner()
            if bus is None:
                log.warning("background subscriber %s failed on event %r", sub.label,
                            sub.event.name, exc_info=exc)  # fmt: skip
            else:
                bus._background_failed(sub, exc)

    def drain(self) -> None:
        """Wait until everything queued so far has been delivered (not on the worker itself:
        there it returns at once). Without a thread (interpreter shutdown), deliver here."""
        if self.on_worker:
            return
        with self._cond:
            if self._thread is None and self._queue:
                self._start()
            while self._unfinished and self._thread is not None:
                self._cond.wait()
            if not self._unfinished:
                return
            stranded = list(self._queue)  # no thread could start: deliver on this one
            self._queue.clear()
        for sub, payload in stranded:
            self._deliver(sub, payload)
            with self._cond:
                self._unfinished -= 1

    def close(self) -> None:
        """Drain, then end the thread (a later handoff starts a new one)."""
        self.drain()
        with self._cond:
            thread = self._thread
            self._closing = True
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _after_fork(self) -> None:
        """In a forked child the thread is gone: start afresh (queued items stay the
        parent's)."""
        self._queue.clear()
        self._unfinished = 0
        self._cond = threading.Condition(threading.Lock())
        self._thread = None
        self._closing = False


_WORKERS: weakref.WeakSet[Worker] = weakref.WeakSet()


def _drain_all() -> None:
    """At interpreter exit, deliver what background subscribers still have queued."""
    for worker in list(_WORKERS):
        try:
            worker.drain()
        except Exception:  # exit goes on; say what failed
            log.exception("eventhooks: draining background subscribers at exit failed")


def _reset_after_fork() -> None:
    for worker in list(_WORKERS):
        worker._after_fork()


atexit.register(_drain_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
