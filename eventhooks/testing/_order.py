"""The canonical-order assertion: a trace of names checked against PRODUCT.md §1's grammar."""

from __future__ import annotations

from collections.abc import Iterable

from .._grammar import check
from ..events import CANONICAL


class CanonicalOrderError(AssertionError):
    """A trace that breaks the canonical order; ``index`` is the first event at fault."""

    def __init__(self, message: str, index: int, expected: set[str]) -> None:
        super().__init__(message)
        self.index = index
        self.expected = expected


def assert_canonical_order(
    names: Iterable[str], *, emitted: Iterable[str] | None = None
) -> None:
    """Check a trace of event names against the canonical order (PRODUCT.md §1).

    Names may be Keras or Ultralytics spellings. ``emitted`` is the set of events the adapter
    under test emits (default: those present in the trace); the grammar is projected onto
    it, so an adapter that cannot emit, say, ``optimizer_step`` is checked on the rest.
    Raises :class:`CanonicalOrderError` naming the first event that breaks the order.
    """
    builtin = CANONICAL
    trace: list[str] = []
    for name in names:
        if name not in builtin:
            message = f"{name!r} is not a built-in lifecycle event"
            raise CanonicalOrderError(message, len(trace), set())
        trace.append(builtin[name])
    chosen = None if emitted is None else list(emitted)
    unknown = [n for n in chosen or () if n not in builtin]
    if unknown:
        raise CanonicalOrderError(f"emitted= names unknown events: {unknown}", 0, set())
    subset = frozenset(trace if chosen is None else (builtin[n] for n in chosen))
    stray = [n for n in trace if n not in subset]
    if stray:
        message = f"{stray[0]!r} is in the trace but not in emitted="
        raise CanonicalOrderError(message, trace.index(stray[0]), set())
    ok, index, expected = check(trace, subset)
    if ok:
        return
    got = trace[index] if index < len(trace) else "the end of the trace"
    before = ", ".join(trace[max(0, index - 3) : index]) or "the start"
    wanted = " or ".join(sorted(expected)) or "the end of the trace"
    raise CanonicalOrderError(
        f"event #{index} ({got}) breaks the canonical order after [{before}]: "
        f"expected {wanted}",
        index,
        expected,
    )
