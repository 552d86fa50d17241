"""The testing kit: the Recorder, and the canonical-order checker against an independent oracle.

Valid traces are generated from PRODUCT.md §1's grammar; the oracle is a regular expression
over one letter per event, written separately from the checker's parser.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from eventhooks import EventBus, events
from eventhooks.testing import CanonicalOrderError, Recorder, assert_canonical_order

ALL = [e.name for e in events.BUILTIN]
LETTER = {name: chr(ord("a") + i) for i, name in enumerate(ALL)}


def L(name: str) -> str:
    return LETTER[name]


# The oracle: whole runs only (a failed run, cut short before teardown, is generated apart).
ZERO, OPT, PARAMS = L("on_before_zero_grad"), L("optimizer_step"), L("on_params_update")
# STEP* is any sequence of these three (each alone is a STEP): written as a character class,
# with no alternatives to backtrack through. (Nested alternatives made a rare mutated trace
# take exponential time in Python's regex engine: a test that hung.)
ANY_STEPS = f"[{ZERO}{OPT}{PARAMS}]*"
BATCH = f"{L('on_train_batch_start')}{ANY_STEPS}{L('on_train_batch_end')}"
VAL = f"{L('on_val_start')}(?:{L('on_val_batch_start')}{L('on_val_batch_end')})*{L('on_val_end')}"
SAVE = L("on_model_save")
START, TRAIN_END = L("on_train_epoch_start"), L("on_train_epoch_end")
RESTART = f"{START}(?:{BATCH})*{L('on_train_batch_start')}?(?:{TRAIN_END}(?:{VAL})?)?"
EPOCH = (
    f"(?:{RESTART})*{START}(?:{BATCH}|{SAVE})*{TRAIN_END}{SAVE}*"
    f"(?:{VAL})?{SAVE}*{L('on_fit_epoch_end')}{SAVE}*{PARAMS}?"
)
FIT = (
    f"{L('on_pretrain_routine_start')}{L('on_pretrain_routine_end')}{L('on_train_start')}"
    f"{PARAMS}?(?:{EPOCH})*(?:{VAL})?{L('on_train_end')}{L('teardown')}"
)
PREDICT = (
    f"{L('on_predict_start')}(?:{L('on_predict_batch_start')}{L('on_predict_postprocess_end')}?"
    f"{L('on_predict_batch_end')})*{L('on_predict_end')}"
)
EXPORT = f"{L('on_export_start')}{L('on_export_end')}"
ORACLE = re.compile(f"(?:{FIT}|{VAL}|{PREDICT}|{EXPORT}|{SAVE})*")
#: The same language for an adapter that emits no teardown: then no run can be cut short, so
#: the regular oracle is exact for every trace.
ORACLE_NO_TEARDOWN = re.compile(
    f"(?:{FIT.replace(L('teardown'), '')}|{VAL}|{PREDICT}|{EXPORT}|{SAVE})*"
)


def oracle(trace: list[str]) -> bool:
    return ORACLE.fullmatch("".join(L(n) for n in trace)) is not None


@st.composite
def val(draw: st.DrawFn) -> list[str]:
    batches = draw(st.integers(0, 3))
    return ["on_val_start", *["on_val_batch_start", "on_val_batch_end"] * batches, "on_val_end"]


STEPS = [
    ["on_before_zero_grad", "optimizer_step"],
    ["optimizer_step", "on_before_zero_grad"],
    ["on_before_zero_grad"],
    ["optimizer_step"],
    [],  # params_update alone
]


@st.composite
def batches(draw: st.DrawFn) -> list[str]:
    """Batches with no optimizer step (accumulation), one, or several (several optimizers)."""
    out: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        out.append("on_train_batch_start")
        for _ in range(draw(st.integers(0, 2))):
            step = draw(st.sampled_from(STEPS))
            if not step or draw(st.booleans()):
                step = [*step, "on_params_update"]
            out += step
        out.append("on_train_batch_end")
    return out


@st.composite
def epoch(draw: st.DrawFn) -> list[str]:
    out = []
    for _ in range(draw(st.integers(0, 1))):  # an attempt restarted (Ultralytics)
        out += ["on_train_epoch_start", *draw(batches())]
        out += ["on_train_batch_start"] * draw(st.integers(0, 1))  # out of memory
        if draw(st.booleans()):  # a NaN loss found at the epoch's end
            out.append("on_train_epoch_end")
            if draw(st.booleans()):
                out += draw(val())
    out += ["on_train_epoch_start", *draw(batches())]
    out += ["on_model_save"] * draw(st.integers(0, 1))  # a checkpoint every N batches
    out += draw(batches())
    out.append("on_train_epoch_end")
    out += ["on_model_save"] * draw(st.integers(0, 1))
    if draw(st.booleans()):
        out += draw(val())
    out += ["on_model_save"] * draw(st.integers(0, 1))
    out.append("on_fit_epoch_end")
    out += ["on_model_save"] * draw(st.integers(0, 1))
    out += ["on_params_update"] * draw(st.integers(0, 1))  # a scheduler stepped per epoch
    return out


@st.composite
def fit(draw: st.DrawFn) -> list[str]:
    body = ["on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start"]
    body += ["on_params_update"] * draw(st.integers(0, 1))
    for _ in range(draw(st.integers(0, 3))):
        body += draw(epoch())
    if draw(st.booleans()):  # a validation after the last epoch
        body += draw(val())
    body.append("on_train_end")
    if draw(st.booleans()):  # the run failed somewhere: cut it, teardown still comes
        body = body[: draw(st.integers(0, len(body) - 1))]
    return [*body, "teardown"]


@st.composite
def session(draw: st.DrawFn) -> list[str]:
    trace: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["fit", "val", "predict", "export", "save"]))
        if kind == "fit":
            trace += draw(fit())
        elif kind == "val":
            trace += draw(val())
        elif kind == "predict":
            n = draw(st.integers(0, 3))
            trace += ["on_predict_start"]
            for _ in range(n):
                trace += ["on_predict_batch_start"]
                trace += ["on_predict_postprocess_end"] * draw(st.integers(0, 1))
                trace += ["on_predict_batch_end"]
            trace += ["on_predict_end"]
        elif kind == "export":
            trace += ["on_export_start", "on_export_end"]
        else:
            trace += ["on_model_save"]
    return trace


@settings(max_examples=300)
@given(session())
def test_generated_valid_traces_are_accepted(trace: list[str]) -> None:
    assert_canonical_order(trace, emitted=ALL)


@settings(max_examples=500)
@given(session().filter(bool), st.data())
def test_mutated_traces_agree_with_the_oracle(trace: list[str], data: st.DataObject) -> None:
    """Every mutation of a generated trace, judged by the checker and by the regex oracle.

    teardown is left out of the trace and of ``emitted=``: a run can then not be cut short,
    and the oracle is exact. (Cut runs, with teardown, are covered by the generator above and
    by test_teardown_*.)
    """
    trace = [n for n in trace if n != "teardown"]
    if not trace:
        return
    kind = data.draw(st.sampled_from(["delete", "swap", "insert", "replace"]))
    i = data.draw(st.integers(0, len(trace) - 1))
    mutated = list(trace)
    choices = [n for n in ALL if n != "teardown"]
    if kind == "delete":
        del mutated[i]
    elif kind == "swap" and i + 1 < len(trace):
        mutated[i], mutated[i + 1] = mutated[i + 1], mutated[i]
    elif kind == "insert":
        mutated.insert(i, data.draw(st.sampled_from(choices)))
    else:
        mutated[i] = data.draw(st.sampled_from(choices))
    valid = ORACLE_NO_TEARDOWN.fullmatch("".join(L(n) for n in mutated)) is not None
    if valid:
        assert_canonical_order(mutated, emitted=choices)
    else:
        with pytest.raises(CanonicalOrderError):
            assert_canonical_order(mutated, emitted=choices)


@settings(max_examples=300)
@given(session(), st.sets(st.sampled_from(ALL), min_size=1))
def test_a_valid_trace_seen_through_an_adapters_subset_is_accepted(
    trace: list[str], emitted: set[str]
) -> None:
    """``emitted=``: what an adapter emitting only some events sends of a valid session.

    (Rejections under ``emitted=`` are not compared with an erased regex here: erasing
    tokens leaves nested nullable loops that make Python's backtracking regex exponential.
    A reviewer's derivative-based oracle agreed with the checker on 12,600 such traces.)
    """
    if "teardown" not in emitted:
        assume(oracle(trace))  # without teardown in emitted=, no run can be cut short
    assert_canonical_order([n for n in trace if n in emitted], emitted=sorted(emitted))


@pytest.mark.parametrize(
    ("trace", "index", "wanted"),
    [
        (
            [
                "on_pretrain_routine_start",
                "on_pretrain_routine_end",
                "on_train_begin",
                "on_epoch_end",
            ],
            3,
            "on_train_epoch_start",
        ),
        (["on_val_start", "on_val_batch_end"], 1, "on_val_batch_start"),
        (["on_predict_start", "on_predict_batch_end"], 1, "on_predict_batch_start"),
        (["on_export_end"], 0, "on_export_start"),
    ],
)
def test_first_violation_is_named(trace: list[str], index: int, wanted: str) -> None:
    with pytest.raises(CanonicalOrderError) as info:
        assert_canonical_order(trace, emitted=ALL)
    assert info.value.index == index
    assert wanted in info.value.expected and wanted in str(info.value)
    assert f"event #{index}" in str(info.value)


def test_subset_of_an_adapter_keras_names() -> None:
    keras_fit = ["on_train_begin", "on_epoch_begin", "on_train_batch_begin", "on_train_batch_end",
                 "on_test_begin", "on_test_batch_begin", "on_test_batch_end", "on_test_end",
                 "on_epoch_end", "on_train_end"]  # fmt: skip
    assert_canonical_order(keras_fit)
    with pytest.raises(CanonicalOrderError, match="on_fit_epoch_end"):
        assert_canonical_order(keras_fit[:8] + keras_fit[9:], emitted=keras_fit)
    with pytest.raises(CanonicalOrderError, match="not a built-in"):
        assert_canonical_order(["on_epoch_begni"])
    with pytest.raises(CanonicalOrderError, match="not in emitted"):
        assert_canonical_order(["on_train_begin", "on_train_end"], emitted=["on_train_end"])


def test_teardown_required_when_emitted() -> None:
    run = ["on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start", "on_train_end"]
    with pytest.raises(CanonicalOrderError, match="teardown"):
        assert_canonical_order(run, emitted=ALL)
    assert_canonical_order([*run, "teardown"], emitted=ALL)
    assert_canonical_order([*run[:2], "teardown"], emitted=ALL)  # failed while building


def test_recorder_records_in_order_before_failing_subscribers() -> None:
    bus = EventBus()

    def fail(payload: Any) -> None:
        raise RuntimeError("x")

    bus.on("on_val_end", priority=100)(fail)
    with Recorder(bus) as rec:
        bus.emit("on_val_start")
        with pytest.raises(Exception, match="failed on event"):
            bus.emit("on_test_end", logs={"val_loss": 1.0})
    bus.emit("on_val_start")
    assert rec.names == ["on_val_start", "on_val_end"]
    assert rec.payloads("on_test_end")[0].logs == {"val_loss": 1.0}
    only = Recorder(bus, ["on_val_start"])
    bus.emit("on_val_start")
    bus.emit("on_predict_start")
    assert only.names == ["on_val_start"]


def test_the_testing_module_docstring_example_runs() -> None:
    import doctest

    import eventhooks.testing

    result = doctest.testmod(eventhooks.testing)
    assert result.attempted >= 5 and result.failed == 0


def test_a_run_that_failed_before_its_first_event_is_teardown_alone() -> None:
    run = ["on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start", "on_train_end"]
    assert_canonical_order(["teardown"], emitted=ALL)
    assert_canonical_order([*run, "teardown", "teardown"], emitted=ALL)  # the next run failed
    assert_canonical_order([*run, "teardown", "on_val_start", "on_val_end", "teardown"])
    with pytest.raises(CanonicalOrderError):
        assert_canonical_order(["teardown", "on_train_end"], emitted=ALL)


def test_unknown_emitted_names_are_named() -> None:
    with pytest.raises(CanonicalOrderError, match="bogus"):
        assert_canonical_order(["on_train_begin"], emitted=["on_train_begin", "bogus"])
    assert_canonical_order(["on_train_begin"], emitted=(n for n in ["on_train_begin"]))


def test_recorder_on_a_bus_with_its_own_registry() -> None:
    from eventhooks import Payload, registry

    class Sample(Payload):
        step: int

    reg = registry.Registry()
    reg.register("lib.on_sample", Sample, aliases=("lib.sample",))
    bus = EventBus(registry=reg)
    rec = Recorder(bus)
    bus.emit("lib.sample", step=4)
    assert [p.step for p in rec.payloads("lib.sample")] == [4]
