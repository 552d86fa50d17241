"""The canonical order of a run (PRODUCT.md §1, revised 2026-12-02), defined once.

The grammar below is compiled into a small automaton whose steps are cached, so following a
run event by event costs one dict lookup. The lifecycle (:mod:`eventhooks.lifecycle`) follows
it as it emits, ``EventBus(check_order=True)`` follows it at every emit, and
:func:`eventhooks.testing.assert_canonical_order` checks whole traces with it, projected onto
the events an adapter emits (an event outside that set matches nothing).

::

    SESSION := (FIT | VAL | PREDICT | EXPORT | model_save)*
    FIT     := pretrain_routine_start pretrain_routine_end train_start params_update?
               EPOCH* VAL? train_end teardown
             | <any prefix of the above> teardown            (the run failed)
    EPOCH   := RESTART* train_epoch_start (BATCH | model_save)*
               train_epoch_end model_save* VAL? model_save* fit_epoch_end model_save*
               params_update?                (model_save between batches: every N steps)
    RESTART := train_epoch_start BATCH* train_batch_start? (train_epoch_end VAL?)?
               (an attempt the framework restarts: the same epoch number again follows)
    BATCH   := train_batch_start STEP* train_batch_end
    STEP    := (before_zero_grad | optimizer_step | both, in either order) params_update?
             | params_update                      (a framework that shows no optimizer step)
    VAL     := val_start (val_batch_start val_batch_end)* val_end
    PREDICT := predict_start (predict_batch_start predict_postprocess_end? predict_batch_end)*
               predict_end
    EXPORT  := export_start export_end
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# -- building the automaton --------------------------------------------------------------------

_edges: list[list[tuple[str | None, int]]] = []  # state -> (event or None for a free move, next)
#: Marks the edges that end a failed run: projected away with their event, never made free
#: (an adapter that emits no teardown cannot end a run midway).
_FAILURE = "!"


def _state() -> int:
    _edges.append([])
    return len(_edges) - 1


@dataclass(frozen=True)
class _Part:
    start: int
    end: int


def tok(name: str) -> _Part:
    start, end = _state(), _state()
    _edges[start].append((name, end))
    return _Part(start, end)


def seq(*parts: _Part) -> _Part:
    start = end = _state()
    for part in parts:
        _edges[end].append((None, part.start))
        end = part.end
    return _Part(start, end)


def alt(*options: _Part) -> _Part:
    start, end = _state(), _state()
    for option in options:
        _edges[start].append((None, option.start))
        _edges[option.end].append((None, end))
    return _Part(start, end)


def opt(part: _Part) -> _Part:
    return alt(part, seq())


def star(part: _Part) -> _Part:
    start, end = _state(), _state()
    _edges[start] += [(None, part.start), (None, end)]
    _edges[part.end] += [(None, part.start), (None, end)]
    return _Part(start, end)


def failable(build: object, last: str) -> _Part:
    """``body last``, or any prefix of ``body`` then ``last`` (a run that failed midway)."""
    first = len(_edges)
    body = build() if callable(build) else build
    assert isinstance(body, _Part)
    end = _state()
    for state in range(first, end):  # from anywhere inside the body: last ends it
        _edges[state].append((_FAILURE + last, end))
    _edges[body.end].append((last, end))
    start = _state()
    _edges[start].append((None, body.start))
    return _Part(start, end)


def _step() -> _Part:
    moments = alt(
        tok("on_before_zero_grad"), tok("optimizer_step"),
        seq(tok("on_before_zero_grad"), tok("optimizer_step")),
        seq(tok("optimizer_step"), tok("on_before_zero_grad")),
    )  # fmt: skip
    return alt(seq(moments, opt(tok("on_params_update"))), tok("on_params_update"))


def _batch() -> _Part:
    return seq(tok("on_train_batch_start"), star(_step()), tok("on_train_batch_end"))


def _val() -> _Part:
    return seq(
        tok("on_val_start"),
        star(seq(tok("on_val_batch_start"), tok("on_val_batch_end"))),
        tok("on_val_end"),
    )


def _abandoned() -> _Part:
    """An attempt at an epoch that the framework restarts (Ultralytics): its batches, maybe
    one that never ended (out of memory), maybe its end and validation (a NaN loss found
    there)."""
    return seq(
        tok("on_train_epoch_start"),
        star(_batch()),
        opt(tok("on_train_batch_start")),
        opt(seq(tok("on_train_epoch_end"), opt(_val()))),
    )


def _epoch() -> _Part:
    return seq(
        star(_abandoned()),  # then the same epoch number again
        tok("on_train_epoch_start"),
        star(alt(_batch(), tok("on_model_save"))),  # a checkpoint every N batches
        tok("on_train_epoch_end"),
        star(tok("on_model_save")),
        opt(_val()),
        star(tok("on_model_save")),
        tok("on_fit_epoch_end"),
        star(tok("on_model_save")),
        opt(tok("on_params_update")),
    )


def _fit_body() -> _Part:
    return seq(
        tok("on_pretrain_routine_start"),
        tok("on_pretrain_routine_end"),
        tok("on_train_start"),
        opt(tok("on_params_update")),
        star(_epoch()),
        opt(_val()),
        tok("on_train_end"),
    )


def _predict() -> _Part:
    return seq(
        tok("on_predict_start"),
        star(seq(tok("on_predict_batch_start"), opt(tok("on_predict_postprocess_end")),
                 tok("on_predict_batch_end"))),
        tok("on_predict_end"),
    )  # fmt: skip


_EXPORT = seq(tok("on_export_start"), tok("on_export_end"))
_SESSION = star(
    alt(failable(_fit_body, "teardown"), _val(), _predict(), _EXPORT, tok("on_model_save"))
)
START, FINAL = _SESSION.start, _SESSION.end
EDGES: tuple[tuple[tuple[str | None, int], ...], ...] = tuple(map(tuple, _edges))
EVENTS: frozenset[str] = frozenset(
    label.lstrip(_FAILURE) for out in EDGES for label, _ in out if label
)

#: Events that open a session of their own (standalone, or nested inside a fit).
SESSION_STARTS = frozenset({"on_pretrain_routine_start", "on_val_start", "on_predict_start",
                            "on_export_start", "on_model_save"})  # fmt: skip


# -- following it ------------------------------------------------------------------------------


class Automaton:
    """The grammar projected onto ``subset`` (events outside it match nothing), as cached steps.

    A position is a small int standing for a set of automaton states; ``step`` returns the
    next one, or :data:`NOWHERE` when the event is not allowed there. Steps are computed once
    and then cost a list index and a dict lookup.
    """

    def __init__(self, subset: Iterable[str] = EVENTS) -> None:
        self.subset = frozenset(subset)
        self._states: list[frozenset[int]] = []
        self._ids: dict[frozenset[int], int] = {}
        self._steps: list[dict[str, int]] = []
        self._lock = threading.Lock()
        self.start = self._intern(self._closure({START}))

    def _intern(self, states: frozenset[int]) -> int:
        found = self._ids.get(states)
        if found is None:  # the lists grow before the id is known: readers never miss
            self._states.append(states)
            self._steps.append({})
            found = self._ids[states] = len(self._states) - 1
        return found

    def _closure(self, states: Iterable[int]) -> frozenset[int]:
        seen, todo = set(states), list(states)
        while todo:
            for label, nxt in EDGES[todo.pop()]:
                free = label is None or (label[0] != _FAILURE and label not in self.subset)
                if free and nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return frozenset(seen)

    def step(self, position: int, event: str) -> int:
        try:
            return self._steps[position][event]
        except KeyError:
            pass
        with self._lock:  # a step met for the first time: computed once, by one thread
            return self._learn_step(position, event)

    def _learn_step(self, position: int, event: str) -> int:
        known = self._steps[position].get(event)
        if known is not None:
            return known
        moved = {
            nxt for state in self._states[position] for label, nxt in EDGES[state]
            if label is not None and label.lstrip(_FAILURE) == event
        }  # fmt: skip
        found = self._intern(self._closure(moved)) if moved and event in self.subset else NOWHERE
        self._steps[position][event] = found
        return found

    def expected(self, position: int) -> frozenset[str]:
        """The events allowed at ``position`` (within the subset)."""
        return frozenset(
            label.lstrip(_FAILURE) for state in self._states[position]
            for label, _ in EDGES[state]
            if label is not None and label.lstrip(_FAILURE) in self.subset
        )  # fmt: skip

    def accepts_end(self, position: int) -> bool:
        """Whether a trace may end at ``position`` (every session complete)."""
        return FINAL in self._states[position]


#: What ``Automaton.step`` returns for an event not allowed where it comes.
NOWHERE = -1


#: The whole grammar: every event may be emitted.
FULL = Automaton()


def check(tokens: Sequence[str], subset: Iterable[str]) -> tuple[bool, int, set[str]]:
    """Whether ``tokens`` is a valid trace; else the first bad index and what was expected."""
    automaton = FULL if frozenset(subset) == FULL.subset else Automaton(subset)
    position = automaton.start
    for index, token in enumerate(tokens):
        nxt = automaton.step(position, token)
        if nxt == NOWHERE:
            return False, index, set(automaton.expected(position))
        position = nxt
    if automaton.accepts_end(position):
        return True, len(tokens), set()
    return False, len(tokens), set(automaton.expected(position))
