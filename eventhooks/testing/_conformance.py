"""The conformance kit: four probes that an adapter of any library must pass.

``check_adapter(run)`` calls ``run(bus)`` (one training run of two epochs or more, on the bus
it is given) once per probe (the failure probe runs twice: a subscriber fails at the first
epoch's end, then at ``on_train_end``), and raises ``AssertionError`` naming what broke. It
is how our own adapters are tested, and how another library tests its own. The probes act at
the first occurrence of an event, whatever its epoch, so a run that resumes at a later epoch
is checked alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..bus import EventBus
from ..errors import SubscriberError
from ..events import BUILTIN, CANONICAL, Event
from ._order import assert_canonical_order
from ._recorder import CountingBus, Recorder

Run = Callable[[EventBus], object]

#: Moments that come once per batch: an adapter must not emit them when nobody listens.
#: (``on_params_update`` comes only when a hyper-parameter changed: not a hot-path event.)
_PER_BATCH = frozenset(
    e.name for e in BUILTIN if e.counter == "batch" or e.payload.__name__ == "StepPayload"
)


class _Probe(Exception):
    """Raised by a probe's subscriber; never by an adapter."""


@dataclass(frozen=True)
class Conformance:
    """What the probes saw: the plain run's trace and the events the adapter emits."""

    names: list[str]
    emitted: frozenset[str]


def check_adapter(
    run: Run,
    *,
    emitted: Iterable[str] | None = None,
    stops: bool = True,
    failures: bool = True,
) -> Conformance:
    """Check an adapter: order and payloads, hot path, stop requests, failing subscribers.

    ``emitted`` names the events the adapter can emit (default: those the plain run emitted).
    ``stops=False`` or ``failures=False`` skip those probes for adapters that document why.
    """
    names = _probe_order(run, emitted)
    chosen = frozenset(CANONICAL[n] for n in emitted) if emitted else frozenset(names)
    _probe_hot_path(run, chosen)
    if stops:
        _probe_stop(run, names, chosen)
    if failures:
        _probe_failure(run, chosen, "on_fit_epoch_end")
        if "on_train_end" in chosen:
            _probe_failure(run, chosen, "on_train_end")
    return Conformance(names, chosen)


def _first_time(action: Callable[[], object]) -> Callable[[Any], None]:
    """A subscriber that acts at its first delivery only (``once=1`` counts by epoch)."""
    done: list[bool] = []

    def subscriber(payload: Any) -> None:
        if not done:
            done.append(True)
            action()

    return subscriber


def _one_teardown(names: list[str]) -> None:
    """One run(bus), one teardown at most (the order alone cannot tell a second run's)."""
    assert names.count("teardown") <= 1, f"teardown emitted {names.count('teardown')} times"


def _probe_order(run: Run, emitted: Iterable[str] | None) -> list[str]:
    """Canonical order, payloads that survive JSON, 0-based epochs and batches in sequence."""
    bus = EventBus()
    rec = Recorder(bus)
    run(bus)
    names = rec.names
    assert_canonical_order(names, emitted=list(emitted) if emitted is not None else None)
    _one_teardown(names)
    epochs = [p.epoch for p in rec.payloads("on_fit_epoch_end")]
    assert len(epochs) >= 2, f"run(bus) must train two epochs or more; it trained {epochs}"
    assert epochs == sorted(set(epochs)) and epochs[0] >= 0, f"epochs out of sequence: {epochs}"
    expected = 0
    for name, payload in rec.records:
        if name == "on_train_epoch_start":
            expected = 0
        elif name == "on_train_batch_start" or (
            name == "on_train_batch_end" and "on_train_batch_start" not in names
        ):
            assert payload.batch == expected, (
                f"{name}: batch {payload.batch}, expected {expected} (0-based, per epoch)"
            )
            expected += 1
        back = type(payload).model_validate_json(payload.model_dump_json())
        assert back.model_dump_json() == payload.model_dump_json(), f"{name}: JSON round trip"
    return names


def _probe_hot_path(run: Run, emitted: frozenset[str]) -> None:
    """With one epoch-level subscriber, no per-batch moment reaches ``emit``."""
    bus = CountingBus()
    bus.subscribe("on_fit_epoch_end", lambda payload: None)
    run(bus)
    unheard = sorted({n for n in bus.emitted if _canonical(n) in _PER_BATCH})
    assert not unheard, (
        f"per-batch events emitted with nobody listening: {unheard}; "
        "ask bus.listening(name) before converting logs and emitting"
    )


def _probe_stop(run: Run, plain: list[str], emitted: frozenset[str]) -> None:
    """A stop requested at the first epoch's end ends the run there, closed properly."""
    bus = EventBus()
    rec = Recorder(bus)
    bus.subscribe("on_fit_epoch_end", _first_time(lambda: bus.request_stop("conformance probe")))
    run(bus)
    names = rec.names
    assert names.count("on_fit_epoch_end") < plain.count("on_fit_epoch_end"), (
        "bus.request_stop() at the first on_fit_epoch_end did not stop the run"
    )
    assert names.count("on_train_epoch_start") <= 1, "an epoch began after the stop request"
    for last in ("on_train_end", "teardown"):
        if last in emitted:
            assert last in names, f"a stopped run must still emit {last}"
    _one_teardown(names)
    assert_canonical_order(names, emitted=sorted(emitted))


def _probe_failure(run: Run, emitted: frozenset[str], at: str) -> None:
    """A subscriber failing at ``at`` reaches the caller, and teardown still carries the error."""
    bus = EventBus()
    rec = Recorder(bus)

    def fail() -> None:
        raise _Probe("conformance probe")

    bus.subscribe(at, _first_time(fail))
    try:
        run(bus)
    except SubscriberError as exc:
        assert isinstance(exc.original, _Probe), f"another error reached the caller: {exc!r}"
    else:
        raise AssertionError(
            f"a subscriber's error at {at} did not reach the caller of run(bus)"
        )
    _one_teardown(rec.names)
    if "teardown" in emitted:
        assert rec.names and rec.names[-1] == "teardown", (
            f"teardown must be last after a failure; the trace ends {rec.names[-3:]}"
        )
        error = rec.payloads("teardown")[-1].error or ""
        assert "conformance probe" in error, (
            f"teardown's error does not name the failure at {at}: {error!r}"
        )
        assert_canonical_order(rec.names, emitted=sorted(emitted))
    else:  # a run cut short, without the teardown this adapter never emits
        assert_canonical_order([*rec.names, "teardown"], emitted=sorted(emitted | {"teardown"}))


def _canonical(name: str | Event[Any]) -> str:
    return name.name if isinstance(name, Event) else CANONICAL.get(name, name)
