"""The lifecycle: one run's order, counters, fills, stops and teardown; order checking on demand."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventhooks import EventBus, OrderError, PayloadError, SubscriberError
from eventhooks.lifecycle import Export, Prediction, Run, Validation
from eventhooks.testing import Recorder, assert_canonical_order


def recorded(check_order: bool = False) -> tuple[EventBus, Recorder]:
    bus = EventBus(check_order=check_order)
    return bus, Recorder(bus)


def test_a_loop_on_the_lifecycle_emits_the_canonical_order_with_its_counters() -> None:
    bus, rec = recorded(check_order=True)
    with Run(bus, params={"epochs": 4}, initial_epoch=2) as run:
        run.ready()
        for _ in run.epochs(4):
            for _ in range(3):
                run.batch_start()
                run.zero_grad()
                run.optimizer_step()
                run.batch_end({"loss": 1.0})
            with run.validation() as val:
                val.batch_start()
                val.batch_end({"val_loss": 2.0})
                val.end({"val_loss": 2.0})
            run.epoch_end({"loss": 1.0, "val_loss": 2.0})
    assert_canonical_order(rec.names)
    assert [p.epoch for p in rec.payloads("on_train_epoch_start")] == [2, 3]
    assert [p.batch for p in rec.payloads("on_train_batch_end")] == [0, 1, 2] * 2
    assert [p.step for p in rec.payloads("optimizer_step")] == list(range(6))
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    assert rec.payloads("teardown")[0].error is None
    assert rec.payloads("on_pretrain_routine_start")[0].params == {"epochs": 4}


def test_loops_the_old_grammar_refused_are_accepted_where_they_happen() -> None:
    """Gradient accumulation, two optimizers, a scheduler between epochs, a last validation."""
    bus, rec = recorded(check_order=True)
    with Run(bus) as run:
        for epoch in run.epochs(2):
            run.batch_start()  # accumulates only
            run.batch_end()
            run.batch_start()  # two optimizers
            for _ in range(2):
                run.zero_grad()
                run.optimizer_step()
            run.batch_end()
            run.epoch_end({"loss": 0.5})
            run.params_update({"lr": 0.1 / (epoch + 1)})  # scheduler.step() after the epoch
        with run.validation() as val:
            val.end({"val_loss": 0.4})
    assert_canonical_order(rec.names)
    updates = rec.payloads("on_params_update")
    assert [(p.epoch, p.batch) for p in updates] == [(0, None), (1, None)]
    assert rec.names[-4:] == ["on_val_start", "on_val_end", "on_train_end", "teardown"]


def test_what_a_framework_has_no_hook_for_is_filled_in() -> None:
    bus, rec = recorded(check_order=True)
    with Run(bus) as run:
        run.epoch_start()  # no ready(), no train_start()
        run.batch_start()
        run.batch_end({"loss": 3.0})
        with run.validation() as val:  # Lightning: no hook between training and validation
            val.end({"val_loss": 1.0})
        run.epoch_end({"loss": 3.0, "val_loss": 1.0})
    assert rec.names[:4] == [
        "on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start",
        "on_train_epoch_start",
    ]  # fmt: skip
    assert rec.names[6:8] == ["on_train_epoch_end", "on_val_start"]
    assert rec.payloads("on_train_epoch_end")[0].logs == {"loss": 3.0}


def test_an_epoch_restart_is_accepted_and_a_skipped_end_is_not() -> None:
    bus, rec = recorded(check_order=True)
    with Run(bus) as run:
        run.epoch_start(0)
        run.batch_start()
        run.batch_end()
        run.epoch_start(0)  # Ultralytics restarts an epoch after a NaN loss
        run.batch_start()
        run.batch_end()
        run.epoch_end()
    assert_canonical_order(rec.names)
    with pytest.raises(OrderError, match="epoch 1 began before epoch 0 ended"):
        with Run(bus) as run:
            run.epoch_start(0)
            run.epoch_start(1)
    assert rec.names[-1] == "teardown" and rec.payloads("teardown")[-1].error is not None


def test_a_moment_out_of_place_is_an_order_error_naming_what_was_allowed() -> None:
    bus, _ = recorded()
    with pytest.raises(OrderError) as info:
        with Run(bus) as run:
            run.epoch_start()
            run.optimizer_step()  # outside any batch
    error = info.value
    assert error.event == "optimizer_step" and error.previous == "on_train_epoch_start"
    assert "on_train_batch_start" in error.expected
    assert "on_train_batch_start" in str(error) and "optimizer_step" in str(error)


def test_a_failure_anywhere_ends_with_one_teardown_carrying_it() -> None:
    bus, rec = recorded()
    with pytest.raises(ZeroDivisionError) as info:
        with Run(bus) as run:
            run.epoch_start()
            run.batch_start()
            _ = 1 / 0
    teardown = rec.payloads("teardown")
    assert len(teardown) == 1 and teardown[0].exception is info.value
    assert_canonical_order(rec.names)


@pytest.mark.parametrize("at", ["on_pretrain_routine_start", "on_train_end", "teardown"])
def test_a_failing_subscriber_at_a_run_edge_still_gives_one_teardown(at: str) -> None:
    bus, rec = recorded()
    bus.on(at, priority=1)(lambda p: 1 / 0)
    with pytest.raises(SubscriberError, match=at):
        with Run(bus) as run:
            run.epoch_start()
            run.epoch_end()
    assert rec.names.count("teardown") == 1 and rec.names[-1] == "teardown"
    if at != "teardown":
        assert "ZeroDivisionError" in (rec.payloads("teardown")[0].error or "")


def test_stop_requests_belong_to_the_run() -> None:
    bus, rec = recorded()
    @bus.on("on_train_batch_end")
    def stop_at_the_second_batch(payload: Any) -> None:
        if payload.batch == 1:
            bus.request_stop("enough")

    with Run(bus) as run:
        for _ in run.epochs(5):
            for _ in range(4):
                run.batch_start()
                run.batch_end()
                if run.stop_requested:
                    break
    assert [p.epoch for p in rec.payloads("on_fit_epoch_end")] == [0]
    assert bus.stop_reason == "enough"
    with Run(bus) as run:  # a new run forgets the last one's request
        assert not run.stop_requested
        list(run.epochs(1))
    assert rec.names[-3:] == ["on_fit_epoch_end", "on_train_end", "teardown"]


def test_a_session_started_by_a_subscriber_does_not_disturb_the_fit() -> None:
    bus, rec = recorded(check_order=True)

    def sample_predictions(payload: Any) -> None:
        with Validation(bus, epoch=payload.epoch) as val:
            val.end({"val_loss": 0.1})
        with Prediction(bus) as predict:
            predict.batch_start()
            predict.batch_end(outputs=[1, 2])

    bus.on("on_fit_epoch_end")(sample_predictions)
    with Run(bus) as run:
        for _ in run.epochs(2):
            run.epoch_end({"loss": 1.0})
    fit = [n for n in rec.names if "val" not in n and "predict" not in n]
    assert_canonical_order(fit)
    assert rec.names.count("on_predict_end") == 2


def test_check_order_names_the_event_the_one_before_and_what_was_allowed() -> None:
    bus = EventBus(check_order=True)
    bus.emit("on_pretrain_routine_start")
    with pytest.raises(OrderError) as info:
        bus.emit("on_train_start")
    assert info.value.event == "on_train_start"
    assert info.value.previous == "on_pretrain_routine_start"
    assert "on_pretrain_routine_end" in info.value.expected
    assert "on_train_start after on_pretrain_routine_start" in str(info.value)
    assert EventBus().emit("on_train_start") is None  # off by default: no check


def test_check_order_sees_every_event_even_those_nobody_hears() -> None:
    bus = EventBus(check_order=True)
    assert bus.listening("on_train_batch_start")  # so adapters emit everything
    bus.emit("on_val_start")
    with pytest.raises(OrderError, match="on_val_batch_end after on_val_start"):
        bus.emit("on_val_batch_end", batch=0)


def test_listening_asks_the_every_and_once_filters() -> None:
    bus = EventBus()
    bus.on("on_train_batch_end", every=50)(lambda p: None)
    assert not bus.listening("on_train_batch_end", batch=3)
    assert bus.listening("on_train_batch_end", batch=49)
    assert bus.listening("on_train_batch_end")  # no counters: someone is subscribed
    bus.on("on_fit_epoch_end", once=3)(lambda p: None)
    assert [bus.listening("on_fit_epoch_end", epoch=e) for e in range(4)] == [
        False, False, True, False,
    ]  # fmt: skip
    bus.subscribe("on_train_batch_end", lambda p: None, when=lambda p: p.batch > 1)
    assert bus.listening("on_train_batch_end", batch=3)  # when= needs the payload


@settings(max_examples=100)
@given(st.lists(st.integers(1, 200), min_size=1, max_size=4), st.integers(0, 400))
def test_listening_with_counters_never_says_no_to_a_delivery(every: list[int], batch: int) -> None:
    bus = EventBus()
    heard: list[int] = []
    for n in every:
        bus.on("on_train_batch_end", every=n)(lambda p: heard.append(p.batch))
    said = bus.listening("on_train_batch_end", batch=batch)
    bus.emit("on_train_batch_end", batch=batch)
    assert said == bool(heard)


def test_the_run_context_is_checked_when_the_run_opens() -> None:
    bus, rec = recorded()
    with pytest.raises(PayloadError, match="rank"):
        Run(bus, rank=-1)
    assert rec.names == []
    marker = object()
    with Run(bus, source=marker, params={"epochs": 1}, rank=1, world_size=2) as run:
        run.update(params={"epochs": 1, "steps": 3})
        list(run.epochs(1))
    first, last = rec.payloads("on_pretrain_routine_start")[0], rec.payloads("teardown")[0]
    assert first.source is marker and first.rank == 1 and first.world_size == 2
    assert last.params == {"epochs": 1, "steps": 3}


def test_export_and_prediction_sessions() -> None:
    bus, rec = recorded(check_order=True)
    with Export(bus, format="onnx") as export:
        export.path = "model.onnx"
    with Prediction(bus) as predict:
        predict.batch_start()
        predict.postprocess_end(outputs=[0])
        predict.batch_end(outputs=[0])
    assert_canonical_order(rec.names)
    assert rec.payloads("on_export_end")[0].path == "model.onnx"


MOMENTS = ["ready", "train_start", "epoch_start", "batch_start", "zero_grad", "optimizer_step",
           "params_update", "batch_end", "train_epoch_end", "validation", "model_save",
           "epoch_end", "train_end", "fail"]  # fmt: skip


@settings(max_examples=300)
@given(st.lists(st.sampled_from(MOMENTS), max_size=25))
def test_any_program_gives_a_canonical_trace_or_an_order_error(program: list[str]) -> None:
    """Whatever an adapter calls, in whatever order: the trace is canonical, ends with one
    teardown, and a call out of place is an OrderError (never a wrong trace)."""
    bus, rec = recorded()
    raised: BaseException | None = None
    try:
        with Run(bus) as run:
            for moment in program:
                if moment == "fail":
                    raise KeyError("the loop failed")
                if moment == "params_update":
                    run.params_update({"lr": 0.1})
                elif moment == "model_save":
                    run.model_save("m.ckpt")
                elif moment == "validation":
                    with run.validation() as val:
                        val.end()
                else:
                    getattr(run, moment)()
    except (OrderError, KeyError) as error:
        raised = error
    assert rec.names.count("teardown") == 1 and rec.names[-1] == "teardown"
    assert_canonical_order(rec.names)
    failed = rec.payloads("teardown")[0].error
    assert (failed is None) == (raised is None)


def test_allows_says_whether_a_moment_may_come_now_without_filling_anything() -> None:
    from eventhooks import events

    bus, rec = recorded(check_order=True)
    with Run(bus) as run:
        run.epoch_start()
        run.batch_start()
        assert not run.allows("on_model_save") and run.allows("optimizer_step")
        run.batch_end()
        assert run.allows("on_model_save")  # between batches: a checkpoint every N steps
        assert run.allows("on_train_epoch_end") and not run.allows("on_val_end")
        with run.validation() as val:
            assert val.allows("on_val_batch_start") and not val.allows("on_model_save")
            val.end()
        assert run.allows("on_model_save") and run.allows(events.on_model_save)
        run.epoch_end()
        assert run.allows("on_epoch_end") is False  # an alias is read as its canonical name
        assert run.allows("on_model_save") and run.allows("on_params_update")
    assert "on_train_epoch_end" in rec.names and rec.names.count("on_model_save") == 0
    assert not run.allows("on_train_epoch_start")  # the run ended


def test_in_epoch_and_in_batch_tell_an_adapter_where_the_run_is() -> None:
    """For an adapter closing what its loop left open (a ``break`` out of a batch loop)."""
    bus, rec = recorded(check_order=True)
    with Run(bus) as run:
        assert not run.in_epoch and not run.in_batch
        run.epoch_start()
        assert run.in_epoch and not run.in_batch
        run.batch_start()
        assert run.in_epoch and run.in_batch
        run.batch_end()
        assert run.in_epoch and not run.in_batch
        run.epoch_end()
        assert not run.in_epoch and not run.in_batch
    assert_canonical_order(rec.names)


def test_a_validation_in_a_run_may_carry_its_own_source_and_ended_tells_a_finished_run() -> None:
    """For a framework whose validator is an object of its own (Ultralytics), and whose
    ``teardown`` hook comes from a ``finally`` that cannot say whether the run failed."""
    bus, rec = recorded(check_order=True)
    trainer, validator = object(), object()
    with Run(bus, source=trainer, rank=1, world_size=2) as run:
        run.epoch_start()
        assert run.validation().context is run.context  # not opened: nothing emitted
        with run.validation(source=validator) as val:
            val.end({"val_loss": 1.0})
        run.epoch_end()
        assert not run.ended
        run.train_end()
        assert run.ended and not run.closed
    assert_canonical_order(rec.names)
    (val_end,) = rec.payloads("on_val_end")
    assert val_end.source is validator and (val_end.rank, val_end.world_size) == (1, 2)
    assert run.context.source is trainer
    (fit,), (teardown,) = rec.payloads("on_fit_epoch_end"), rec.payloads("teardown")
    assert fit.source is teardown.source is trainer


def test_restarts_as_ultralytics_makes_them_are_canonical() -> None:
    """Out of memory: a batch that never ended, then the epoch again. A NaN loss: found at the
    epoch's end, after its validation, then the epoch again (PRODUCT.md: the framework wins)."""
    bus, rec = recorded(check_order=True)
    with Run(bus) as run:
        run.epoch_start(0)
        run.batch_start()  # out of memory here
        run.epoch_start(0)
        run.batch_start()
        run.batch_end()
        run.train_epoch_end()
        with run.validation() as val:
            val.end({"val_loss": float("nan")})
        run.epoch_start(0)  # a NaN loss: the epoch again, from its last good weights
        run.batch_start()
        run.batch_end()
        run.epoch_end({"loss": 1.0})
    assert_canonical_order(rec.names)
    assert rec.names.count("on_train_epoch_start") == 3
    assert rec.names.count("on_fit_epoch_end") == 1


# -- review findings (#11): each failed before its fix ---------------------------------------


def test_a_nested_session_that_failed_does_not_jam_check_order() -> None:
    bus, rec = recorded(check_order=True)

    def failing_evaluate(payload: Any) -> None:
        try:
            with Validation(bus) as val:
                val.batch_start()
                raise ValueError("the evaluation failed; the subscriber handles it")
        except ValueError:
            pass

    bus.on("on_fit_epoch_end")(failing_evaluate)
    with Run(bus) as run:
        for _ in run.epochs(2):
            run.epoch_end({"loss": 1.0})
    assert rec.names[-2:] == ["on_train_end", "teardown"]
    with Run(bus) as run:  # the bus goes on
        list(run.epochs(1))
    assert rec.names.count("teardown") == 2


def test_a_standalone_session_that_failed_is_over_when_the_next_begins() -> None:
    bus, rec = recorded(check_order=True)
    with pytest.raises(ZeroDivisionError):
        with Prediction(bus) as predict:
            predict.batch_start()
            _ = 1 / 0
    with Run(bus) as run:
        list(run.epochs(1))
    assert rec.names[-1] == "teardown"


def test_check_order_on_the_events_an_adapter_emits() -> None:
    bus = EventBus(check_order=["on_train_begin", "on_epoch_end", "on_train_end"])
    bus.emit("on_train_begin")
    bus.emit("on_epoch_end", epoch=0)
    bus.emit("on_train_end")
    with pytest.raises(OrderError):
        bus.emit("on_epoch_end", epoch=1)


def test_a_run_opens_once() -> None:
    bus, rec = recorded()
    run = Run(bus)
    with run:
        list(run.epochs(1))
    with pytest.raises(RuntimeError, match="opens once"):
        run.open()
    assert rec.names.count("on_pretrain_routine_start") == 1


def test_a_run_started_by_a_subscriber_keeps_the_outer_runs_stop_request() -> None:
    bus, _ = recorded()

    def stop_then_inner_run(payload: Any) -> None:
        bus.request_stop("outer")
        with Run(bus) as inner:
            list(inner.epochs(1))

    bus.on("on_fit_epoch_end")(stop_then_inner_run)
    with Run(bus) as run:
        epochs = list(run.epochs(3))
    assert epochs == [0] and bus.stop_reason == "outer"


def test_leaving_the_block_after_a_break_closes_the_epoch() -> None:
    bus, rec = recorded(check_order=True)
    with Run(bus) as run:
        for _ in run.epochs(5):
            run.batch_start()
            run.batch_end({"loss": 0.5})
            break
    assert rec.names[-4:] == ["on_train_epoch_end", "on_fit_epoch_end", "on_train_end", "teardown"]
    assert rec.payloads("on_fit_epoch_end")[0].logs == {"loss": 0.5}


def test_a_run_whose_logs_do_not_validate_still_tears_down() -> None:
    bus, rec = recorded()
    bus.on("teardown")(lambda p: None)
    with pytest.raises(PayloadError, match="logs"):
        with Run(bus) as run:
            for _ in run.epochs(1):
                run.epoch_end({"loss": 0.5, "best_model": "x.pt"})  # nobody hears epochs
    assert rec.names[-1] == "teardown"


def test_a_validation_is_filled_in_when_it_opens_not_when_it_is_made() -> None:
    bus, rec = recorded()
    with Run(bus) as run:
        run.epoch_start()
        val = run.validation()
        assert "on_train_epoch_end" not in rec.names
        with val:
            val.end()
        run.epoch_end()
    assert_canonical_order(rec.names)


def test_an_unknown_first_epoch_is_none_at_train_start() -> None:
    bus, rec = recorded()
    with Run(bus) as run:  # Keras' callback does not know initial_epoch
        list(run.epochs(1))
    with Run(bus, initial_epoch=3) as run:
        list(run.epochs(4))
    assert [p.epoch for p in rec.payloads("on_train_start")] == [None, 3]


def test_filters_counted_by_deliveries_are_never_starved_by_listening() -> None:
    bus = EventBus()
    heard: list[float] = []
    bus.subscribe("on_params_update", lambda p: heard.append(p.hyperparams["lr"]), every=2)
    with Run(bus) as run:
        run.epoch_start()
        for i in range(6):
            run.batch_start()
            if bus.listening("on_params_update", batch=run.batch, epoch=run.epoch):
                run.params_update({"lr": float(i)})
            run.batch_end()
        run.epoch_end()
    assert heard == [1.0, 3.0, 5.0]


# -- params_changed: announcing only what changed since last announced --------------------------

NAMES = ["lr", "lr/pg1", "momentum", "weight_decay"]
HYPER = st.dictionaries(st.sampled_from(NAMES), st.sampled_from([0.0, 0.1, 0.5]), max_size=4)


@settings(max_examples=200)
@given(HYPER, st.lists(HYPER, max_size=8), st.booleans())
def test_params_changed_announces_what_differs_from_the_last_announced(
    first: dict[str, float], seen: list[dict[str, float]], with_rates: bool
) -> None:
    """The run's first values are announced at its start; then each announcement holds the
    values that differ from the last announced and the picked names; nothing is announced
    when nothing differs."""
    bus, rec = recorded(check_order=True)
    along = (lambda name: name.startswith("lr")) if with_rates else None
    expected: list[dict[str, float]] = [dict(first)] if first else []
    known = dict(first)
    with Run(bus) as run:
        run.hyperparams = dict(first)
        run.epoch_start()
        for now in seen:
            run.batch_start()
            run.optimizer_step()
            run.params_changed(now, along=along)
            run.batch_end()
            changed = {k: v for k, v in now.items() if k not in known or known[k] != v}
            if changed:
                picked = {k: v for k, v in now.items() if with_rates and k.startswith("lr")}
                expected.append({**picked, **changed})
                known.update(expected[-1])
        run.epoch_end()
    assert [p.hyperparams for p in rec.payloads("on_params_update")] == expected
    assert run.hyperparams == known
    assert_canonical_order(rec.names)


def test_params_changed_reads_nothing_unheard_and_waits_for_room_in_the_order() -> None:
    bus, rec = recorded(check_order=True)
    reads: list[int] = []

    def current() -> dict[str, float]:
        reads.append(1)
        return {"lr": 0.5}

    quiet = EventBus()
    with Run(quiet) as run:  # nobody listens: the hyper-parameters are not even read
        run.params_changed(current)
    assert reads == []
    with Run(bus) as run:
        run.hyperparams = {"lr": 0.1}
        run.epoch_start()
        with run.validation() as val:
            run.params_changed(current)  # no room inside a validation: told later
            val.end()
        assert reads == [] and rec.names.count("on_params_update") == 1  # the first values
        run.epoch_end()
        run.params_changed(current)
        run.epoch_start()
        run.batch_start()
        run.optimizer_step()
        run.params_changed(current)  # read, but told once: nothing changed since
        run.batch_end()
    assert [p.hyperparams for p in rec.payloads("on_params_update")] == [{"lr": 0.1}, {"lr": 0.5}]
    assert len(reads) == 2
    assert_canonical_order(rec.names)


# -- batch logs computed only for a subscriber that gets them ------------------------------------


def test_batch_logs_given_as_a_function_are_computed_only_when_heard() -> None:
    bus = EventBus()
    heard: list[dict[str, Any]] = []
    computed: list[str] = []

    def logs(name: str) -> Any:
        def compute() -> dict[str, float]:
            computed.append(name)
            return {"loss": float(len(computed))}

        return compute

    def one_epoch() -> None:
        with Run(bus) as run:
            run.epoch_start()
            for _ in range(4):
                run.batch_start()
                run.batch_end(logs("train"))
            run.train_epoch_end({})
            with run.validation() as val:
                for _ in range(4):
                    val.batch_start()
                    val.batch_end(logs("val"))
                val.end()
            run.epoch_end()

    one_epoch()
    assert computed == []  # nobody hears batch ends
    bus.subscribe("on_train_batch_end", lambda p: heard.append(dict(p.logs)), every=2)
    bus.subscribe("on_val_batch_end", lambda p: heard.append(dict(p.logs)), every=4)
    one_epoch()
    assert computed == ["train", "train", "val"]
    assert heard == [{"loss": 1.0}, {"loss": 2.0}, {"loss": 3.0}]
    bus.subscribe("on_fit_epoch_end", lambda p: heard.append(dict(p.logs)))
    with Run(bus) as run:
        for _ in run.epochs(3):  # a break: the epoch's end gets the last batch's logs
            run.batch_start()
            run.batch_end(lambda: {"loss": 7.0})
            break
    assert heard[-1] == {"loss": 7.0}


def test_batch_logs_as_a_function_are_computed_once_for_the_batch_and_its_filled_ends() -> None:
    """A function handed to batch_end is called once: what a subscriber heard at the batch's
    end is what the epoch ends filled in from it carry (not a later reading of its state)."""
    bus = EventBus()
    heard: list[tuple[str, dict[str, Any]]] = []
    for event in ("on_train_batch_end", "on_train_epoch_end", "on_fit_epoch_end"):
        bus.subscribe(event, lambda p, e=event: heard.append((e, dict(p.logs))))
    calls: list[int] = []

    def logs() -> dict[str, float]:  # a running state that moves on with each reading
        calls.append(1)
        return {"loss": float(len(calls))}

    with Run(bus) as run:
        for _ in run.epochs(1):  # the epoch is left open: both its ends are filled in
            run.batch_start()
            run.batch_end(logs)
    assert len(calls) == 1
    assert heard == [("on_train_batch_end", {"loss": 1.0}), ("on_train_epoch_end", {"loss": 1.0}),
                     ("on_fit_epoch_end", {"loss": 1.0})]  # fmt: skip
    heard.clear()
    calls.clear()
    quiet = EventBus()  # the batch's end unheard: computed once, for the filled-in ends
    quiet.subscribe("on_train_epoch_end", lambda p: heard.append(("te", dict(p.logs))))
    quiet.subscribe("on_fit_epoch_end", lambda p: heard.append(("fe", dict(p.logs))))
    with Run(quiet) as run:
        for _ in run.epochs(1):
            run.batch_start()
            run.batch_end(logs)
            break
    assert len(calls) == 1
    assert heard == [("te", {"loss": 1.0}), ("fe", {"loss": 1.0})]


def test_params_changed_takes_a_nan_that_stays_nan_for_no_change() -> None:
    """NaN != NaN: a rate that is NaN and stays NaN is no change (announced once, not on every
    read); NaN to a number and back are changes."""
    bus, rec = recorded(check_order=True)
    nan = float("nan")
    with Run(bus) as run:
        run.hyperparams = {"lr": 0.1, "momentum": nan}
        run.epoch_start()
        for lr in (0.1, nan, nan, nan, 0.2, 0.2, nan):
            run.batch_start()
            run.optimizer_step()
            run.params_changed({"lr": lr, "momentum": float("nan")})  # a new NaN each read
            run.batch_end()
        run.epoch_end()
    first, *told = [p.hyperparams for p in rec.payloads("on_params_update")]
    assert first["lr"] == 0.1 and first["momentum"] != first["momentum"]  # the run's start
    assert len(told) == 3
    assert [list(hp) for hp in told] == [["lr"]] * 3
    assert told[1] == {"lr": 0.2}
    assert all(hp["lr"] != hp["lr"] for hp in (told[0], told[2]))


def test_hyperparams_set_from_a_dict_the_caller_goes_on_changing_keep_the_values_set() -> None:
    """The baseline is the run's own copy: a config dict given as the run's first values and
    then changed in place (and handed to params_changed) is a change."""
    bus, rec = recorded(check_order=True)
    config = {"lr": 0.1, "momentum": 0.9}
    with Run(bus) as run:
        run.hyperparams = config
        run.epoch_start()
        config["lr"] = 0.01
        run.batch_start()
        run.optimizer_step()
        run.params_changed(config)
        run.batch_end()
        run.epoch_end()
    assert [p.hyperparams for p in rec.payloads("on_params_update")] == [
        {"lr": 0.1, "momentum": 0.9},  # the run's first, at its start
        {"lr": 0.01},
    ]
    assert run.hyperparams == config and run.hyperparams is not config


@pytest.mark.parametrize("initial_epoch", [None, 2])
def test_the_first_hyperparams_are_read_after_on_train_start_and_announced_with_no_epoch(
    initial_epoch: int | None,
) -> None:
    """``first_hyperparams`` is read once ``on_train_start``'s subscribers have run (one may
    set the rate) and announced right after it with ``epoch`` None, also when ``epoch_start``
    fills ``train_start`` in (a resumed run included); later reads compare with it."""
    bus, rec = recorded(check_order=True)
    rate = {"lr": 0.1}
    bus.subscribe("on_train_start", lambda p: rate.update(lr=0.02))
    with Run(bus, initial_epoch=initial_epoch) as run:
        run.first_hyperparams = lambda: dict(rate)
        for _ in run.epochs(3):
            run.batch_start()
            run.optimizer_step()
            run.params_changed(dict(rate))  # unchanged since the start: nothing
            run.batch_end()
    (first,) = rec.payloads("on_params_update")
    assert (first.epoch, first.batch, first.hyperparams) == (None, None, {"lr": 0.02})
    at = rec.names.index("on_params_update")
    assert rec.names[at - 1 : at + 2] == ["on_train_start", "on_params_update",
                                          "on_train_epoch_start"]  # fmt: skip
    assert run.hyperparams == {"lr": 0.02}
