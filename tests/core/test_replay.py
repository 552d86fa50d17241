"""Event logs read back: replay re-emits a run, validated and in order; bad files are clear."""

from __future__ import annotations

import json
import math
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from eventhooks import EventBus, events, registry
from eventhooks.callbacks import CSVLogger, EventLog, History
from eventhooks.eventlog import VERSION, EventLogError, IncompleteLogWarning, read_log
from eventhooks.replay import load, replay
from eventhooks.testing import Recorder


def dumped(payload: Any) -> str:
    """A payload's JSON: NaN-aware equality of everything a log can hold."""
    return str(payload.model_dump_json())


def test_replay_passes_a_source_when_given(tmp_path: Path) -> None:
    log = tmp_path / "e.jsonl"
    bus = EventBus()
    with EventLog(log) as writer:
        bus.attach(writer)
        bus.emit("on_train_start")
        bus.emit("teardown")
    again = EventBus()
    rec = Recorder(again)
    marker = object()
    replay(log, again, source=marker)
    assert rec.payloads("on_train_start")[0].source is marker


# Strategies for payload fields: every serialized field of every payload type.
names = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
numbers = st.floats(allow_nan=True, allow_infinity=True)
index = st.integers(0, 10_000)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "epoch": index, "batch": index, "step": index,
    "rank": st.integers(0, 7), "world_size": st.integers(1, 8),
    "logs": st.dictionaries(names, numbers, max_size=4),
    "hyperparams": st.dictionaries(names, numbers, max_size=3),
    "error": st.one_of(st.none(), names), "path": names, "format": st.one_of(st.none(), names),
}  # fmt: skip


@st.composite
def emissions(draw: Any) -> tuple[str, dict[str, Any]]:
    event = draw(st.sampled_from(events.BUILTIN))
    name = draw(st.sampled_from(event.names))
    fields: dict[str, Any] = {}
    for field, info in event.payload.model_fields.items():
        if field in FIELDS and (info.is_required() or draw(st.booleans())):
            fields[field] = draw(FIELDS[field])
    return name, fields


@settings(max_examples=80, deadline=None)
@given(sequence=st.lists(emissions(), max_size=20))
def test_event_log_round_trip(
    tmp_path_factory: Any, sequence: list[tuple[str, dict[str, Any]]]
) -> None:
    log = tmp_path_factory.mktemp("rt") / "e.jsonl"
    bus = EventBus()
    live = Recorder(bus)
    with EventLog(log, all_ranks=True) as writer:
        bus.attach(writer)
        for name, fields in sequence:
            bus.emit(name, **fields)
    if not sequence:
        assert not log.exists()  # opened at the first event
        return
    count, replayed, warned = replay_watched(log)
    assert count == len(sequence)
    assert replayed.names == live.names
    # A log whose last training run has no teardown says so; nothing else warns.
    assert [w.incomplete.open_run is not None for w in warned] == (
        [True] if run_left_open(live.names) else []
    )
    assert [dumped(p) for _, p in replayed.records] == [dumped(p) for _, p in live.records]


def test_nan_and_infinity_survive_the_round_trip(tmp_path: Path) -> None:
    log = tmp_path / "e.jsonl"
    bus = EventBus()
    with EventLog(log) as writer:
        bus.attach(writer)
        bus.emit("on_epoch_end", epoch=0, logs={"a": math.nan, "b": math.inf, "c": -math.inf})
    assert '"a":NaN,"b":Infinity,"c":-Infinity' in log.read_text()
    (record,) = load(log)
    logs = record.fields["logs"]
    assert math.isnan(logs["a"]) and logs["b"] == math.inf and logs["c"] == -math.inf


def replay_watched(path: Path) -> tuple[int, Recorder, list[IncompleteLogWarning]]:
    """Replay ``path`` on a fresh bus: the count, what was emitted, the warnings given."""
    bus = EventBus()
    rec = Recorder(bus)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count = replay(path, bus)
    ours = [w.message for w in caught if isinstance(w.message, IncompleteLogWarning)]
    assert len(ours) == len(caught), [str(w.message) for w in caught]
    return count, rec, ours


def run_left_open(names: Sequence[str]) -> bool:
    """Whether a run among canonical ``names`` has no teardown of its own: runs nest (one
    started while another is open is inside it, as a subscriber that trains starts it), a
    teardown ends the innermost, and a run's ``on_train_start`` after its own routine start
    starts nothing new."""
    trained: list[bool] = []  # per open run, innermost last: its on_train_start came
    for name in names:
        if name == "teardown":
            trained = trained[:-1]
        elif name == "on_pretrain_routine_start":
            trained.append(False)
        elif name == "on_train_start":
            if trained and not trained[-1]:
                trained[-1] = True
            else:
                trained.append(True)
    return bool(trained)


def write_log(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = json.dumps({"v": VERSION, "event": "on_train_start", "time": 1.0, "payload": {}})


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        (json.dumps({"event": "on_train_start", "payload": {}}), "no schema version"),
        (json.dumps({"v": 2, "event": "on_train_start", "payload": {}}),
         "unknown schema version 2 (this eventhooks reads 1)"),
        (json.dumps({"v": True, "event": "on_train_start", "payload": {}}),
         "unknown schema version True"),
        (json.dumps({"v": 1, "event": "on_coffee_break", "payload": {}}),
         "unknown event 'on_coffee_break'"),
        (json.dumps({"v": 1, "event": 7, "payload": {}}), "'event' must be an event name"),
        (json.dumps({"v": 1, "event": "on_epoch_end", "payload": {"logs": {}}}),
         "on_epoch_end: field 'epoch': Field required"),
        (json.dumps({"v": 1, "event": "on_epoch_end", "payload": {"epoch": -1}}),
         "field 'epoch': Input should be greater than or equal to 0"),
        (json.dumps({"v": 1, "event": "on_epoch_end", "payload": {"epoch": 0, "logs": {"a": "x"}}}),
         "field 'logs.a'"),
        (json.dumps({"v": 1, "event": "on_train_start", "payload": {"source": "os.system"}}),
         "payload field 'source' is not one an event log holds"),
        (json.dumps({"v": 1, "event": "teardown", "payload": {"exception": "boom"}}),
         "payload field 'exception'"),
        (json.dumps({"v": 1, "event": "on_train_start", "payload": [], "time": 0}),
         "'payload' must be a JSON object"),
        (json.dumps({"v": 1, "event": "on_train_start", "payload": {}, "time": "noon"}),
         "'time' must be a number"),
        (json.dumps({"v": 1, "event": "on_train_start", "payload": {}, "extra": 1}),
         "unexpected keys ['extra']"),
        ('{"v": 1, "event": "on_epoch_end", "payload": {"epoch": 1' + "0" * 5000 + "}}",
         "unreadable JSON value"),
    ],
)  # fmt: skip
def test_bad_lines_are_errors_naming_the_line_and_nothing_is_emitted(
    tmp_path: Path, line: str, reason: str
) -> None:
    path = write_log(tmp_path, GOOD, "", line, GOOD)
    bus = EventBus()
    rec = Recorder(bus)
    with pytest.raises(EventLogError) as info:
        replay(path, bus)
    assert info.value.line == 3 and info.value.path == str(path)
    assert str(info.value).startswith(f"{path}, line 3: ")
    assert reason in str(info.value)
    assert rec.records == []  # validated whole before the first emit


def test_a_pickle_is_refused_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "evil.jsonl"
    path.write_bytes(pickle.dumps({"v": 1, "event": "on_train_start"}))
    with pytest.raises(EventLogError, match=r"line 1: (not UTF-8 text|not valid JSON)"):
        load(path)


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope.jsonl")


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path: Path) -> None:
    end = json.dumps({"v": VERSION, "event": "on_train_end", "time": 1.5, "payload": {}})
    path = write_log(tmp_path, "", GOOD, "   ", end, TEARDOWN)
    assert [r.line for r in load(path)] == [2, 4, 5]


# -- a log that ends early: a killed run ------------------------------------------------------

TEARDOWN = json.dumps({"v": VERSION, "event": "teardown", "time": 2.0, "payload": {}})


def killed_run(path: Path, epochs: int = 3, *, teardown: bool = False) -> list[bytes]:
    """A run's log at ``path``, as EventLog writes it; returns its lines (newlines kept)."""
    bus = EventBus()
    with EventLog(path) as writer:
        bus.attach(writer)
        bus.emit("on_pretrain_routine_start")
        bus.emit("on_train_start")
        for epoch in range(epochs):
            bus.emit("on_fit_epoch_end", epoch=epoch, logs={"loss": 1.0 / (epoch + 1)})
        if teardown:
            bus.emit("on_train_end")
            bus.emit("teardown")
    return path.read_bytes().splitlines(keepends=True)


def test_a_killed_run_replays_its_complete_lines_and_says_where_it_ends(tmp_path: Path) -> None:
    log = tmp_path / "killed.jsonl"
    lines = killed_run(log, epochs=3)  # line 5 is epoch 2
    log.write_bytes(b"".join(lines[:4]) + lines[4][:25])
    bus = EventBus()
    rec = Recorder(bus)
    history = History()
    bus.attach(history)
    bus.attach(CSVLogger(tmp_path / "replayed.csv"))
    with pytest.warns(IncompleteLogWarning) as warned:
        assert replay(log, bus) == 4
    (warning,) = warned
    assert str(warning.message) == (
        f"{log}: log ends early: line 5 is cut off; the run that starts at line 1 has no "
        "teardown (a killed run?)"
    )
    assert isinstance(warning.message, IncompleteLogWarning)
    incomplete = warning.message.incomplete
    assert (incomplete.path, incomplete.cut_line, incomplete.open_run) == (str(log), 5, 1)
    assert warning.filename == __file__  # it points at the caller's replay()
    assert rec.names == [
        "on_pretrain_routine_start", "on_train_start", "on_fit_epoch_end", "on_fit_epoch_end"
    ]  # nothing invented: no teardown  # fmt: skip
    assert history.epoch == [0, 1]
    assert (tmp_path / "replayed.csv").read_text().splitlines() == [
        "epoch,loss,val_loss", "0,1.0,NA", "1,0.5,NA"
    ]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(sequence=st.lists(emissions(), min_size=1, max_size=12), data=st.data())
def test_any_cut_inside_the_last_line_replays_exactly_the_complete_lines(
    tmp_path_factory: Any, sequence: list[tuple[str, dict[str, Any]]], data: Any
) -> None:
    """Keeping ``kept`` bytes of the last line: 0 or all of it is a complete log, else a cut."""
    log = tmp_path_factory.mktemp("cut") / "e.jsonl"
    bus = EventBus()
    live = Recorder(bus)
    with EventLog(log, all_ranks=True) as writer:
        bus.attach(writer)
        for name, fields in sequence:
            bus.emit(name, **fields)
    lines = log.read_bytes().splitlines(keepends=True)
    last = lines[-1].removesuffix(b"\n")  # its payload may hold multi-byte characters
    # A share of the line, not a byte count: the line's length varies with its time stamp.
    kept = data.draw(st.integers(0, 1000), label="per mille kept") * len(last) // 1000
    log.write_bytes(b"".join(lines[:-1]) + last[:kept])
    complete = len(lines) if kept == len(last) else len(lines) - 1
    count, replayed, warned = replay_watched(log)
    assert count == complete
    assert replayed.names == live.names[:complete]
    assert [dumped(p) for _, p in replayed.records] == [dumped(p) for _, p in live.records][
        :complete
    ]
    cut = 0 < kept < len(last)
    open_run = run_left_open(live.names[:complete])
    event(f"cut: {cut}, run left open: {open_run}")
    if not (cut or open_run):
        assert warned == []
        return
    (warning,) = warned
    assert warning.incomplete.cut_line == (len(lines) if cut else None)
    assert (warning.incomplete.open_run is not None) == open_run
    assert str(warning).startswith(f"{log}: log ends early: ")
    assert "\n" not in str(warning)


def test_a_multibyte_character_cut_in_two_is_a_cut_line(tmp_path: Path) -> None:
    log = tmp_path / "e.jsonl"
    lines = killed_run(log, epochs=1, teardown=True)
    bus = EventBus()
    with EventLog(tmp_path / "predict.jsonl") as writer:  # appended after a run, as EventLog does
        bus.attach(writer)
        bus.emit("on_predict_end", logs={"δ-loss": 0.25})
    last = (tmp_path / "predict.jsonl").read_bytes()
    half = last.index("δ".encode()) + 1  # the first of δ's two bytes
    log.write_bytes(b"".join(lines) + last[:half])
    count, replayed, warned = replay_watched(log)
    assert count == len(lines) and replayed.names[-1] == "teardown"
    (warning,) = warned
    assert warning.incomplete.cut_line == len(lines) + 1
    assert warning.incomplete.open_run is None  # the run has its teardown
    assert warning.incomplete.reason == (
        f"log ends early: line {len(lines) + 1} is cut off (a killed run?)"
    )


def test_only_a_cut_last_line_is_forgiven(tmp_path: Path) -> None:
    """Cut text as the last line is replayed around; anywhere else it is an error, as before."""
    cut = GOOD[:20]
    count, replayed, warned = replay_watched(write_log(tmp_path, GOOD, TEARDOWN))
    assert count == 2 and replayed.names == ["on_train_start", "teardown"] and warned == []
    path = tmp_path / "last.jsonl"
    path.write_text(GOOD + "\n" + TEARDOWN + "\n" + cut)
    count, replayed, (warning,) = replay_watched(path)
    assert count == 2 and replayed.names == ["on_train_start", "teardown"]
    assert warning.incomplete.cut_line == 3 and warning.incomplete.open_run is None
    for text, bad_line in [
        (GOOD + "\n" + cut + "\n" + TEARDOWN + "\n", 2),  # in the middle
        (GOOD + "\n" + cut + "\n", 2),  # last, but with its newline: written whole, so bad
        (GOOD + "\n" + TEARDOWN + "\n" + '"on_train_start"', 3),  # valid JSON, not a log line
        (GOOD + "\n" + TEARDOWN + "\n" + "[1, 2", 3),  # not the start of a log line
    ]:
        path.write_text(text)
        bus = EventBus()
        rec = Recorder(bus)
        with pytest.raises(EventLogError) as info:
            replay(path, bus)
        assert info.value.line == bad_line and rec.records == []
    path.write_bytes(GOOD.encode() + b"\n" + pickle.dumps({"v": 1}).replace(b"\n", b""))
    with pytest.raises(EventLogError, match=r"line 2: not UTF-8 text"):
        load(path)


def test_a_run_without_teardown_is_replayed_as_recorded_and_reported(tmp_path: Path) -> None:
    log = tmp_path / "e.jsonl"
    lines = killed_run(log, epochs=2)  # every line whole: killed between two events
    count, replayed, (warning,) = replay_watched(log)
    assert count == len(lines) == 4
    assert replayed.names[-1] == "on_fit_epoch_end"  # no teardown made up
    assert warning.incomplete.cut_line is None and warning.incomplete.open_run == 1
    assert warning.incomplete.reason == (
        "log ends early: the run that starts at line 1 has no teardown (a killed run?)"
    )


def line(event: str, **payload: Any) -> str:
    return json.dumps({"v": VERSION, "event": event, "time": 1.0, "payload": payload})


@pytest.mark.parametrize(
    ("names", "open_run"),
    [
        (["on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start"], 1),
        (["on_train_begin", "teardown", "on_train_start"], 3),  # the last run is the one
        (["on_train_start", "teardown", "on_pretrain_routine_start", "on_train_start"], 3),
        (["on_train_start", "on_train_end", "teardown", "on_predict_start", "on_predict_end",
          "on_export_start", "on_export_end"], None),  # sessions appended after a run
        (["on_train_start", "on_predict_start", "on_predict_end", "teardown"], None),
        (["on_predict_start"], None),  # no training run: a session ends without teardown
        (["on_val_start", "on_val_end"], None),
        (["teardown"], None),  # a run that failed before its first event
        # A run started inside another (a subscriber that trains): its teardown is its own.
        (["on_pretrain_routine_start", "on_train_start", "on_pretrain_routine_start",
          "on_train_start", "teardown", "on_train_end"], 1),
        (["on_train_start", "on_train_start", "teardown"], 1),  # without routines
        (["on_train_start", "on_pretrain_routine_start", "on_train_start", "teardown",
          "teardown"], None),
        (["on_train_start", "on_pretrain_routine_start", "on_train_start"], 1),  # both open
    ],
)  # fmt: skip
def test_only_the_last_training_run_needs_a_teardown(
    tmp_path: Path, names: list[str], open_run: int | None
) -> None:
    path = write_log(tmp_path, *(line(n) for n in names))
    contents = read_log(path)  # describes, warns about nothing
    assert [r.event.name for r in contents.records] == [registry.resolve(n).name for n in names]
    if open_run is None:
        assert contents.incomplete is None
        assert replay_watched(path)[2] == []
    else:
        assert contents.incomplete is not None
        assert contents.incomplete.open_run == open_run
        assert contents.incomplete.cut_line is None


def test_an_incomplete_log_can_be_refused_before_anything_is_emitted(tmp_path: Path) -> None:
    log = tmp_path / "e.jsonl"
    killed_run(log, epochs=2)
    bus = EventBus()
    rec = Recorder(bus)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IncompleteLogWarning)
        with pytest.raises(IncompleteLogWarning, match="has no teardown"):
            replay(log, bus)
    assert rec.records == []


def test_load_gives_the_complete_records_and_the_same_warning(tmp_path: Path) -> None:
    log = tmp_path / "e.jsonl"
    lines = killed_run(log, epochs=2, teardown=True)
    log.write_bytes(b"".join(lines[:-1]) + lines[-1][:-3])  # teardown cut off
    with pytest.warns(IncompleteLogWarning, match=r"line 6 is cut off; the run that starts"):
        records = load(log)
    assert [r.line for r in records] == [1, 2, 3, 4, 5]
    assert records[-1].event is events.on_train_end
