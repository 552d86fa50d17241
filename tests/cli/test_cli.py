"""The ``eventhooks`` command, in-process through ``main`` and once as the console script."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventhooks import EventBus, events, registry
from eventhooks._cli_demo import dataset
from eventhooks.adapters.numpy import load
from eventhooks.callbacks import History
from eventhooks.cli import main
from eventhooks.replay import replay

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCRIPT = Path(sys.executable).parent / "eventhooks"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, command: str = "eventhooks") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{command}") and "error:" in lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: Any) -> Iterator[tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("demo") / "run"
    code = main(["demo", "--out", str(folder), "--epochs", "25", "--seed", "3"])
    assert code == 0
    yield folder, ""


# -- events and schema -----------------------------------------------------------------------


def test_events_table_lists_35_names_25_moments_and_their_fields(capsys: Any) -> None:
    code, out, _ = run(capsys, "events")
    assert code == 0
    table, footer = out.split("\n\n", 1)
    # After header and rule; custom events other tests registered would follow the 25.
    rows = [line.split() for line in table.splitlines()[2:27]]
    assert [row[0] for row in rows] == [str(i) for i in range(1, 26)]
    assert [row[1] for row in rows] == [e.name for e in events.BUILTIN]
    for row, event in zip(rows, events.BUILTIN, strict=True):
        assert row[2] == (event.keras or "-")
        assert row[3] == event.payload.__name__
        line = " ".join(row)
        for field in event.payload.model_json_schema()["properties"]:
            if field not in ("rank", "world_size"):
                assert f"{field}" in line, (event.name, field)
    shown = {row[1] for row in rows} | {row[2] for row in rows if row[2] != "-"}
    assert shown == {n for e in events.BUILTIN for n in e.names} and len(shown) == 35
    assert footer.startswith("35 names for 25 lifecycle moments")


def test_schema_of_all_and_of_one_event(capsys: Any) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0 and json.loads(out) == registry.schema()
    code, out, _ = run(capsys, "schema", "on_epoch_end")
    schema = json.loads(out)
    assert code == 0 and schema["title"] == "on_fit_epoch_end"
    # What an event log line's payload holds: the run's rank and world_size always written.
    assert set(schema["required"]) == {"epoch", "rank", "world_size"}


def test_unknown_event_is_a_one_line_error(capsys: Any) -> None:
    code, out, err = run(capsys, "schema", "on_epoch_ends")
    assert code == 1 and out == ""
    assert "unknown event 'on_epoch_ends'" in one_line_error(err, "eventhooks schema")


@pytest.mark.parametrize(
    "argv",
    [[], ["bogus"], ["demo", "--epochs", "0"], ["demo", "--epochs", "x"], ["plot"],
     ["plot", "log.jsonl", "--mode", "best"], ["replay"], ["schema", "a", "b"]],
)  # fmt: skip
def test_bad_arguments_are_one_line_usage_errors(capsys: Any, argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    one_line_error(err)
    assert "_positive" not in err  # argparse names a type's function unless told otherwise


def test_a_non_integer_epochs_says_what_was_expected(capsys: Any) -> None:
    code, _, err = run(capsys, "demo", "--epochs", "x")
    assert code == 2 and "argument --epochs: must be an integer, got 'x'" in err


def test_replay_of_two_runs_counts_every_epoch_it_prints(capsys: Any, tmp_path: Path) -> None:
    from eventhooks.callbacks import EventLog

    bus = EventBus()
    log = tmp_path / "two.jsonl"
    with EventLog(log) as writer:
        bus.attach(writer)
        for epochs in (2, 3):
            bus.emit("on_train_start")
            for epoch in range(epochs):
                bus.emit("on_fit_epoch_end", epoch=epoch, logs={"loss": 1.0 / (epoch + 1)})
            bus.emit("on_train_end")
            bus.emit("teardown")
    code, out, _ = run(capsys, "replay", str(log))
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert code == 0 and "5 epochs in 2 runs" in out and len(rows) == 5


def test_help_and_version_exit_zero(capsys: Any) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "demo" in out and "replay" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("eventhooks ")


# -- demo ------------------------------------------------------------------------------------


def test_demo_writes_csv_event_log_checkpoint_and_png(demo_run: tuple[Path, str]) -> None:
    folder, _ = demo_run
    csv_lines = (folder / "history.csv").read_text().splitlines()
    assert csv_lines[0] == "epoch,accuracy,loss,val_accuracy,val_loss"
    epochs = len(csv_lines) - 1
    assert 1 <= epochs <= 25
    width, height = png_size(folder / "curves.png")
    assert width > 100 and height > 100
    # The event log holds the whole run: replaying it gives the CSV's numbers.
    history = History()
    bus = EventBus()
    bus.attach(history)
    replay(folder / "events.jsonl", bus)
    assert history.epoch == list(range(epochs))
    for line, epoch in zip(csv_lines[1:], history.epoch, strict=True):
        cells = line.split(",")
        assert int(cells[0]) == epoch
        assert [float(c) for c in cells[1:]] == [
            history.history[k][epoch] for k in ("accuracy", "loss", "val_accuracy", "val_loss")
        ]
    # The checkpoint is the best epoch's model: its val loss is the run's minimum.
    _, _, x_val, y_val = dataset(3)
    metrics = load(folder / "best.npz").evaluate(x_val, y_val, return_dict=True)
    assert isinstance(metrics, dict)  # evaluate's type covers both return forms
    assert metrics["loss"] == pytest.approx(min(history.history["val_loss"]), rel=1e-6)


def test_demo_reports_where_everything_is(
    capsys: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "demo", "--epochs", "2", "--no-plot")
    assert code == 0
    (folder,) = (tmp_path / "runs").iterdir()  # runs/<timestamp>/
    assert f"run folder: {Path('runs') / folder.name}" in out
    for name in ("history.csv", "events.jsonl", "best.npz"):
        assert (folder / name).is_file() and name in out
    assert not (folder / "curves.png").exists()
    assert "trained 2 epochs" in out


def test_demo_numbers_epochs_from_0_like_its_csv_and_plot(
    capsys: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's epochs are the CSV's and the plot's: 0-based, as the payloads."""
    from matplotlib.figure import Figure

    from eventhooks import plot

    figures: list[Figure] = []
    real = plot.figure

    def spy(*args: Any, **kwargs: Any) -> Figure:
        figures.append(real(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(plot, "figure", spy)
    code, out, err = run(capsys, "demo", "--out", str(tmp_path / "run"), "--seed", "0")
    assert code == 0, err
    rows = [line.split(",") for line in (tmp_path / "run" / "history.csv").read_text().splitlines()]
    epochs = [int(row[0]) for row in rows[1:]]
    val_loss = [float(row[rows[0].index("val_loss")]) for row in rows[1:]]
    best = epochs[val_loss.index(min(val_loss))]
    assert epochs[0] == 0 and len(epochs) < 40  # it stopped early
    lines = out.splitlines()
    assert lines[0].startswith(
        f"trained {len(epochs)} epochs (epochs 0-{epochs[-1]}, numbered from 0 as in the CSV "
        "and the plot): "
    )
    assert lines[1] == (
        f"early stopping after epoch {epochs[-1]}: val_loss did not improve for 3 epochs; "
        f"weights restored from epoch {best} (val_loss={min(val_loss):.4f})"
    )
    # curves.png: the same epochs on its x axis, and that best epoch marked.
    (fig,) = figures
    shown = plot.layout(fig)
    assert png_size(tmp_path / "run" / "curves.png") == (shown.width, shown.height)
    panel = {p.title: p for p in shown.panels}
    assert [x for x, _ in panel["loss"].lines["val_loss"]] == epochs
    assert panel["loss"].best == (best, min(val_loss))
    assert shown.title.startswith("run/events.jsonl, ")


def test_every_command_the_demo_prints_runs_as_shown(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(SCRIPT), "demo", "--out", "my run", "--epochs", "3"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    commands = {
        line.split(":", 1)[0]: line.split(":", 1)[1].strip()
        for line in done.stdout.splitlines()
        if line.startswith(("replay it:", "plot it:"))
    }
    assert set(commands) == {"replay it", "plot it"}
    for command in commands.values():
        assert command.startswith(f"{SCRIPT} ") or command.startswith("eventhooks ")
        pasted = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=tmp_path)
        assert pasted.returncode == 0, (command, pasted.stderr)
    assert (tmp_path / "my run" / "replayed.csv").read_bytes() == (
        tmp_path / "my run" / "history.csv"
    ).read_bytes()
    assert png_size(tmp_path / "my run" / "events.png")[0] > 100


def test_the_demo_names_the_command_as_it_can_be_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventhooks._cli_commands import eventhooks_command

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.chdir(SCRIPT.parent.parent.parent)  # the folder holding .venv
    assert eventhooks_command() == str(Path(SCRIPT.parent.parent.name, "bin", "eventhooks"))
    monkeypatch.chdir(SCRIPT.parent)
    assert eventhooks_command() == "./eventhooks"
    monkeypatch.chdir(tmp_path)  # not below: the absolute path
    assert eventhooks_command() == str(SCRIPT)
    monkeypatch.setenv("PATH", str(SCRIPT.parent))  # `eventhooks` on PATH is this script
    assert eventhooks_command() == "eventhooks"


# -- replay and plot -------------------------------------------------------------------------


def test_replay_reproduces_the_runs_csv_and_plots(
    capsys: Any, demo_run: tuple[Path, str], tmp_path: Path
) -> None:
    folder, _ = demo_run
    csv_out, png = tmp_path / "replayed.csv", tmp_path / "replayed.png"
    code, out, err = run(
        capsys, "replay", str(folder / "events.jsonl"), "--csv", str(csv_out), "--plot", str(png)
    )
    assert code == 0, err
    assert csv_out.read_bytes() == (folder / "history.csv").read_bytes()
    png_size(png)
    epochs = len((folder / "history.csv").read_text().splitlines()) - 1
    assert f"{epochs} epochs from" in out and str(csv_out) in out and str(png) in out


def test_plot_writes_a_png(capsys: Any, demo_run: tuple[Path, str], tmp_path: Path) -> None:
    folder, _ = demo_run
    png = tmp_path / "sub" / "curves.png"
    code, out, _ = run(capsys, "plot", str(folder / "events.jsonl"), "-o", str(png))
    assert code == 0 and str(png) in out
    width, height = png_size(png)
    assert width > 100 and height > 100


def test_replay_of_a_missing_or_malformed_log_is_one_line(capsys: Any, tmp_path: Path) -> None:
    code, _, err = run(capsys, "replay", str(tmp_path / "nope.jsonl"))
    assert code == 1 and "nope.jsonl" in one_line_error(err, "eventhooks replay")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"v": 1, "event": "on_train_start", "payload": {}}\n{"v": 9}\n')
    code, _, err = run(capsys, "plot", str(bad), "-o", str(tmp_path / "x.png"))
    line = one_line_error(err, "eventhooks plot")
    assert code == 1 and "line 2: unknown schema version 9" in line
    assert not (tmp_path / "x.png").exists()


def test_plot_of_a_log_without_epochs_is_one_line(capsys: Any, tmp_path: Path) -> None:
    log = tmp_path / "empty.jsonl"
    log.write_text('{"v": 1, "event": "on_train_start", "payload": {}}\n')
    code, _, err = run(capsys, "plot", str(log), "-o", str(tmp_path / "x.png"))
    assert code == 1 and "no epoch logs" in one_line_error(err, "eventhooks plot")


def test_plot_without_matplotlib_says_which_extra_to_install(
    demo_run: tuple[Path, str], tmp_path: Path
) -> None:
    folder, _ = demo_run
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # as if it were not installed
        "from eventhooks.cli import main\n"
        f"sys.exit(main(['plot', {str(folder / 'events.jsonl')!r}, '-o', "
        f"{str(tmp_path / 'x.png')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    line = one_line_error(done.stderr, "eventhooks plot")
    assert "pip install 'eventhooks[plot]'" in line


# -- the console script ----------------------------------------------------------------------


def test_console_script_runs_the_demo_and_fails_cleanly(tmp_path: Path) -> None:
    assert SCRIPT.is_file(), "the console script is installed with the project"
    done = subprocess.run(
        [str(SCRIPT), "demo", "--out", str(tmp_path / "run"), "--epochs", "3"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for name in ("history.csv", "events.jsonl", "best.npz", "curves.png"):
        assert str(tmp_path / "run" / name) in done.stdout
    png_size(tmp_path / "run" / "curves.png")
    done = subprocess.run(
        [sys.executable, "-m", "eventhooks.cli", "replay", str(tmp_path / "none.jsonl")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    one_line_error(done.stderr, "eventhooks replay")


def test_replay_of_a_log_without_training_writes_no_csv(capsys: Any, tmp_path: Path) -> None:
    log = tmp_path / "predict.jsonl"
    log.write_text(
        '{"v": 1, "event": "on_predict_start", "payload": {}}\n'
        '{"v": 1, "event": "on_predict_end", "payload": {}}\n'
    )
    code, out, _ = run(capsys, "replay", str(log), "--csv", str(tmp_path / "h.csv"))
    assert code == 0 and "replayed 2 events, 0 epochs" in out
    assert "no training run in the log: no CSV" in out
    assert not (tmp_path / "h.csv").exists()


def test_replay_puts_each_metric_on_its_own_epoch(capsys: Any, tmp_path: Path) -> None:
    """A metric logged on some epochs only (val_loss every other epoch) is not shifted."""
    bus = EventBus()
    from eventhooks.callbacks import EventLog

    log = tmp_path / "sparse.jsonl"
    bus.attach(EventLog(log))
    bus.emit("on_train_start")
    bus.emit("on_fit_epoch_end", epoch=0, logs={"loss": 0.9})
    bus.emit("on_fit_epoch_end", epoch=1, logs={"loss": 0.5, "val_loss": 0.7})
    bus.emit("on_train_end")
    bus.emit("teardown")
    code, out, _ = run(capsys, "replay", str(log), "--csv", str(tmp_path / "r.csv"),
                       "--plot", str(tmp_path / "r.png"))  # fmt: skip
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert rows == [["0", "0.9000", "-"], ["1", "0.5000", "0.7000"]]
    assert (tmp_path / "r.csv").read_text().splitlines()[1:] == ["0,0.9,NA", "1,0.5,0.7"]
    assert png_size(tmp_path / "r.png")[0] > 100


def test_a_deeply_nested_log_line_is_a_one_line_error(capsys: Any, tmp_path: Path) -> None:
    log = tmp_path / "deep.jsonl"
    log.write_text("[" * 100_000 + "\n")
    code, _, err = run(capsys, "replay", str(log))
    assert code == 1
    assert one_line_error(err, "eventhooks replay").endswith("line 1: JSON nested too deeply")


# -- replay of a log that ends early (a killed run) ------------------------------------------


def killed_run(path: Path, epochs: int, *, per_mille_kept: int | None = None) -> list[bytes]:
    """A run's log as a killed process leaves it: no teardown, the last line maybe cut.

    Returns the lines as written (newlines kept). With ``per_mille_kept``, that share of the
    last line stays, at least one byte of it and never all of it: a cut inside the line.
    """
    from eventhooks.callbacks import EventLog

    bus = EventBus()
    with EventLog(path) as writer:
        bus.attach(writer)
        bus.emit("on_pretrain_routine_start")
        bus.emit("on_train_start")
        for epoch in range(epochs):
            bus.emit("on_fit_epoch_end", epoch=epoch, logs={"loss": 1.0 / (epoch + 1)})
    lines = path.read_bytes().splitlines(keepends=True)
    if per_mille_kept is not None:
        last = lines[-1].removesuffix(b"\n")
        kept = 1 + (len(last) - 2) * per_mille_kept // 1000
        path.write_bytes(b"".join(lines[:-1]) + last[:kept])
    return lines


def test_replay_of_a_killed_run_replays_what_is_complete_and_exits_3(
    capsys: Any, tmp_path: Path
) -> None:
    log, csv_out = tmp_path / "killed.jsonl", tmp_path / "replayed.csv"
    killed_run(log, 3, per_mille_kept=400)  # line 5, epoch 2, cut off
    code, out, err = run(capsys, "replay", str(log), "--csv", str(csv_out))
    assert code == 3 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"replayed 4 events, 2 epochs from {log}"
    assert lines[-1] == (
        "log ends early: line 5 is cut off; the run that starts at line 1 has no teardown "
        "(a killed run?)"
    )
    assert sum("log ends early" in line for line in lines) == 1
    assert csv_out.read_text().splitlines() == ["epoch,loss,val_loss", "0,1.0,NA", "1,0.5,NA"]


def test_replay_of_a_run_without_teardown_exits_3(capsys: Any, tmp_path: Path) -> None:
    log = tmp_path / "killed.jsonl"
    killed_run(log, 2)  # killed between two events: every line whole
    code, out, err = run(capsys, "replay", str(log))
    assert code == 3 and err == ""
    assert out.splitlines()[0] == f"replayed 4 events, 2 epochs from {log}"
    assert out.splitlines()[-1] == (
        "log ends early: the run that starts at line 1 has no teardown (a killed run?)"
    )


@settings(max_examples=25, deadline=None)
@given(epochs=st.integers(1, 4), per_mille_kept=st.integers(0, 1000))
def test_any_cut_inside_the_last_line_exits_3_with_the_complete_events(
    tmp_path_factory: Any, epochs: int, per_mille_kept: int
) -> None:
    log = tmp_path_factory.mktemp("cut") / "e.jsonl"
    lines = killed_run(log, epochs, per_mille_kept=per_mille_kept)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["replay", str(log)])
    text = out.getvalue().splitlines()
    assert code == 3
    assert text[0] == f"replayed {len(lines) - 1} events, {epochs - 1} epochs from {log}"
    assert text[-1].startswith(f"log ends early: line {len(lines)} is cut off; ")


def test_replay_help_documents_its_exit_statuses(capsys: Any) -> None:
    code, out, _ = run(capsys, "replay", "--help")
    assert code == 0
    assert "exit status: 0 the log is complete, 3 it was replayed but ends early" in " ".join(
        out.split()
    )


def test_plot_of_a_killed_runs_log_draws_the_complete_epochs_and_says_so(
    capsys: Any, tmp_path: Path
) -> None:
    log, png = tmp_path / "killed.jsonl", tmp_path / "curves.png"
    killed_run(log, 3, per_mille_kept=500)
    code, out, err = run(capsys, "plot", str(log), "-o", str(png))
    assert code == 0 and err == ""  # plot keeps its statuses: 0 when it drew the curves
    assert out.splitlines() == [
        f"training curves: {png}",
        "log ends early: line 5 is cut off; the run that starts at line 1 has no teardown "
        "(a killed run?)",
    ]
    assert png_size(png)[0] > 100


def test_console_script_exits_3_on_a_killed_runs_log(tmp_path: Path) -> None:
    log = tmp_path / "killed.jsonl"
    killed_run(log, 2, per_mille_kept=300)
    done = subprocess.run([str(SCRIPT), "replay", str(log)], capture_output=True, text=True)
    assert done.returncode == 3
    assert done.stderr == ""  # one line on stdout, no Python warning
    assert done.stdout.splitlines()[0] == f"replayed 3 events, 1 epochs from {log}"
    assert done.stdout.splitlines()[-1].startswith("log ends early: line 4 is cut off; ")
