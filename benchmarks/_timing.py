"""Shared timing helpers: medians of repeated runs, printed as markdown tables."""

from __future__ import annotations

import statistics
import time
import timeit
from collections.abc import Callable
from typing import Any


def ns_per_call(
    stmt: str, namespace: dict[str, Any], *, number: int = 20000, repeat: int = 9
) -> float:
    """Median ns per execution of ``stmt`` (timeit's compiled loop: no wrapper call)."""
    timer = timeit.Timer(stmt, globals=namespace)
    timer.timeit(number // 10)  # warm up
    return statistics.median(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def interleaved_ns(
    cases: dict[str, tuple[str, dict[str, Any]]], *, rounds: int = 15, number: int = 10000
) -> dict[str, list[float]]:
    """ns per execution of each ``(stmt, namespace)``, one sample per case in each round.

    Cases take turns, so a slow spell of this shared machine hits all of them alike; compare
    them sample by sample (same round) rather than median against median.
    """
    timers = {label: timeit.Timer(stmt, globals=ns) for label, (stmt, ns) in cases.items()}
    for timer in timers.values():
        timer.timeit(number // 10)  # warm up
    samples: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(rounds):
        for label, timer in timers.items():
            samples[label].append(min(timer.repeat(repeat=3, number=number)) / number * 1e9)
    return samples


def seconds(fn: Callable[[], object], *, repeat: int = 5) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], object]], *, repeat: int = 5) -> dict[str, float]:
    """Median wall time of each function, runs interleaved so machine noise hits all alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def table(title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rotating(runs: dict[str, Callable[[int], float]], rounds: int) -> dict[str, list[float]]:
    """Each run's result over ``rounds`` (it is given the round's number), their order
    rotating every round so that every run sits in every position equally often."""
    names = list(runs)
    found: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            found[name].append(runs[name](round_))
    return found


def added(times: dict[str, list[float]]) -> list[tuple[str, str, str]]:
    """Rows of (run, median, added over the first run's median) for a table."""
    base = statistics.median(next(iter(times.values())))
    return [(name, f"{statistics.median(t):.3f}", f"{statistics.median(t) / base - 1:+.2%}")
            for name, t in times.items()]  # fmt: skip


def hook_timer(base: type, prefixes: tuple[str, ...] = ("on_", "setup", "teardown")) -> Any:
    """A subclass of the adapter ``base`` that adds up the time spent inside its hooks (the
    methods it defines named with ``prefixes``; the framework's inherited no-ops are the
    framework's dispatch), subscribers included: ``cls.seconds``, over ``cls.calls`` calls.

    Whole-training wall times move by a few percent between identical runs here; the time
    inside the adapter's hooks is what the adapter adds beyond the framework's dispatch of a
    callback (an empty callback's row shows that). :func:`hook_seconds` takes out what the
    timing itself costs per call.
    """
    timed: dict[str, Any] = {"seconds": 0.0, "calls": 0}

    def wrap(name: str) -> Any:
        method = getattr(base, name)

        def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                cls = type(self)
                cls.seconds += time.perf_counter() - start
                cls.calls += 1

        hook.__name__ = name
        return hook

    for name, value in vars(base).items():
        if name.startswith(prefixes) and callable(value):
            timed[name] = wrap(name)
    return type(f"Timed{base.__name__}", (base,), timed)


def hook_seconds(timed: Any) -> float:
    """``timed.seconds`` less what the timing costs: ``calls`` times the median time the same
    wrapper measures around a method that does nothing."""

    class Nothing:
        def on_nothing(self) -> None:
            pass

    probe = hook_timer(Nothing)()
    samples = []
    for _ in range(9):
        type(probe).seconds, type(probe).calls = 0.0, 0
        for _ in range(2000):
            probe.on_nothing()
        samples.append(type(probe).seconds / type(probe).calls)
    return float(timed.seconds - timed.calls * statistics.median(samples))
