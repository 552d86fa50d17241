"""Type checkers know a subscriber's payload type: checked by running mypy on small snippets."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

GOOD = """
from eventhooks import EventBus, EpochPayload, events

bus = EventBus()

@bus.on(events.on_epoch_end)
def report(payload: EpochPayload) -> None:
    print(payload.epoch + 1, payload.logs["loss"])

@bus.on("on_fit_epoch_end")
def by_name(payload: EpochPayload) -> None:
    print(payload.epoch)

reveal_type(by_name)

reveal_type(report)
sub = bus.subscribe(events.on_val_end, lambda p: None)
sub.disconnect()
"""

BAD = """
from eventhooks import BatchPayload, EventBus, events

bus = EventBus()

@bus.on(events.on_fit_epoch_end)      # an epoch event, a batch-payload subscriber
def wrong(payload: BatchPayload) -> None:
    print(payload.batch)

@bus.on(events.on_train_batch_end, when=lambda p: p.epochh is None)
def typo(payload: BatchPayload) -> None:
    pass

@bus.on("on_epoch_end")               # by name: the same check as by constant
def wrong_by_name(payload: BatchPayload) -> None:
    print(payload.batch)

def on_batch(payload: BatchPayload) -> None: ...
bus.subscribe(events.on_val_end, on_batch)  # a run event, a batch subscriber
"""


def mypy(code: str, tmp_path: Path) -> tuple[str, int]:
    source = tmp_path / "snippet.py"
    source.write_text(textwrap.dedent(code))
    out, err, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(source)]
    )
    return out + err, status


def test_a_typed_subscriber_checks_clean(tmp_path: Path) -> None:
    out, status = mypy(GOOD, tmp_path)
    assert status == 0, out
    assert 'Revealed type is "def (eventhooks.payloads.EpochPayload)' in out
    assert out.count('Revealed type is "def (eventhooks.payloads.EpochPayload)') == 2


def test_a_mismatched_payload_type_is_caught(tmp_path: Path) -> None:
    out, status = mypy(BAD, tmp_path)
    assert status == 1
    assert "snippet.py:6: error" in out and "EpochPayload" in out  # the decorator's type
    assert 'has no attribute "epochh"' in out  # the filter's payload is typed too
    assert "snippet.py:14: error" in out  # @bus.on("on_epoch_end") with a BatchPayload handler
    assert 'expected "Callable[[RunPayload], object]"' in out  # subscribe by constant
    assert "Found 4 errors" in out
