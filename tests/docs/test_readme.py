"""The README's promises: its examples run, its event table is the registry's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from eventhooks import events

README = Path(__file__).resolve().parents[2] / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each ```python block runs on its own, in an empty folder, and its asserts hold."""
    monkeypatch.chdir(tmp_path)
    code = compile(BLOCKS[index], f"README.md example {index + 1}", "exec")
    exec(code, {"__name__": f"readme_example_{index + 1}"})


def test_event_table_matches_registry() -> None:
    rows = re.findall(r"^\| `(\w+)` \| (`\w+`|\u2013) \| `(\w+)` \|", TEXT, flags=re.M)
    table = [(name, keras.strip("`"), payload) for name, keras, payload in rows]
    expected = [
        (e.name, e.keras if e.keras else "\u2013", e.payload.__name__) for e in events.BUILTIN
    ]
    assert table == expected


def test_quick_start_is_two_commands() -> None:
    quick = TEXT.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^make (\w+)", quick, flags=re.M)
    assert commands == ["demo", "test"]
