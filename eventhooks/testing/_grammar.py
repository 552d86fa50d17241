"""The canonical order of PRODUCT.md §1 as a small grammar, checked by set-of-positions parsing.

Adapters emit the subset of events their framework exposes; a grammar element whose event is
not in that subset matches nothing (an empty string), so one grammar serves every adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Parser = Callable[["_Run", int], set[int]]


@dataclass
class _Run:
    tokens: Sequence[str]
    subset: frozenset[str]
    furthest: int = 0
    expected: set[str] = field(default_factory=set)
    reached: set[int] | None = None


def tok(name: str) -> Parser:
    def parse(run: _Run, i: int) -> set[int]:
        if name not in run.subset:
            return {i}
        if run.reached is not None:
            run.reached.add(i)
        if i > run.furthest:
            run.furthest, run.expected = i, set()
        if i == run.furthest:
            run.expected.add(name)
        if i < len(run.tokens) and run.tokens[i] == name:
            if i + 1 > run.furthest:
                run.furthest, run.expected = i + 1, set()
            return {i + 1}
        return set()

    return parse


def seq(*parts: Parser) -> Parser:
    def parse(run: _Run, i: int) -> set[int]:
        positions = {i}
        for part in parts:
            positions = {end for start in positions for end in part(run, start)}
            if not positions:
                break
        return positions

    return parse


def alt(*options: Parser) -> Parser:
    def parse(run: _Run, i: int) -> set[int]:
        return {end for option in options for end in option(run, i)}

    return parse


def opt(part: Parser) -> Parser:
    return alt(part, seq())


def star(part: Parser) -> Parser:
    def parse(run: _Run, i: int) -> set[int]:
        seen, frontier = {i}, {i}
        while frontier:
            frontier = {end for start in frontier for end in part(run, start)} - seen
            seen |= frontier
        return seen

    return parse


def cut_then(body: Parser, last: Parser, last_name: str) -> Parser:
    """``body last``, or any prefix of ``body`` then ``last`` (a run that failed midway).

    When ``last`` is not among the emitted events, only the whole ``body`` is accepted.
    """

    def parse(run: _Run, i: int) -> set[int]:
        if last_name not in run.subset:
            return body(run, i)
        outer, run.reached = run.reached, set()
        ends = body(run, i)
        # A run may fail before its first event: teardown alone. (Names alone cannot tell
        # that from an adapter tearing one run down twice; check_adapter counts teardowns.)
        prefixes = run.reached | ends | {i}
        run.reached = outer if outer is None else outer | prefixes
        return {end for start in prefixes for end in last(run, start)}

    return parse


_step = seq(
    alt(seq(tok("on_before_zero_grad"), tok("optimizer_step")),
        seq(tok("optimizer_step"), tok("on_before_zero_grad"))),
    opt(tok("on_params_update")),
)  # fmt: skip
_batch = seq(tok("on_train_batch_start"), _step, tok("on_train_batch_end"))
_val = seq(
    tok("on_val_start"),
    star(seq(tok("on_val_batch_start"), tok("on_val_batch_end"))),
    tok("on_val_end"),
)
_epoch = seq(
    tok("on_train_epoch_start"),
    star(_batch),
    tok("on_train_epoch_end"),
    opt(_val),
    star(tok("on_model_save")),
    tok("on_fit_epoch_end"),
    # A checkpoint taken by a subscriber of on_fit_epoch_end (as Keras' ModelCheckpoint does,
    # the only moment with train and val metrics in Keras) lands after it.
    star(tok("on_model_save")),
)
_fit_body = seq(
    tok("on_pretrain_routine_start"),
    tok("on_pretrain_routine_end"),
    tok("on_train_start"),
    star(_epoch),
    tok("on_train_end"),
)
_fit = cut_then(_fit_body, tok("teardown"), "teardown")
_predict = seq(
    tok("on_predict_start"),
    star(seq(tok("on_predict_batch_start"), tok("on_predict_postprocess_end"),
             tok("on_predict_batch_end"))),
    tok("on_predict_end"),
)  # fmt: skip
_export = seq(tok("on_export_start"), tok("on_export_end"))
SESSION = star(alt(_fit, _val, _predict, _export, tok("on_model_save")))


def check(tokens: Sequence[str], subset: frozenset[str]) -> tuple[bool, int, set[str]]:
    """Whether ``tokens`` is a valid session; else the first bad index and what was expected."""
    run = _Run(tokens, subset)
    ok = len(tokens) in SESSION(run, 0)
    return ok, run.furthest, run.expected
