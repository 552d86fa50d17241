"""Event logs read back: replay re-emits a run, validated and in order; bad files are clear."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventhooks import EventBus, events
from eventhooks.callbacks import CSVLogger, EventLog, History
from eventhooks.eventlog import VERSION, EventLogError
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
    again = EventBus()
    rec = Recorder(again)
    marker = object()
    replay(log, again, source=marker)
    assert rec.payloads("on_train_start")[0].source is marker


# Strategies for payload fields: every serialized field of every payload type.
names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
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
    again = EventBus()
    replayed = Recorder(again)
    if not sequence:
        assert not log.exists()  # opened at the first event
        return
    assert replay(log, again) == len(sequence)
    assert replayed.names == live.names
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
    path = write_log(tmp_path, "", GOOD, "   ", GOOD)
    assert [r.line for r in load(path)] == [2, 4]
