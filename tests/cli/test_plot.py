"""``eventhooks plot`` and ``replay --plot``: the grid, the panels, the best epoch, the title.

The figures are checked through :func:`eventhooks.plot.layout`, which reads the drawn
figure back (its axes, lines, labels and title); the figure the command saved is caught by
wrapping :func:`eventhooks.plot.figure`. The PNG's own size is read from its header.
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure
from test_cli import png_size, run

from eventhooks import EventBus
from eventhooks import plot as plot_module
from eventhooks.callbacks import EventLog
from eventhooks.plot import (
    LR_PANEL,
    MAX_COLUMNS,
    Layout,
    default_monitor,
    figure,
    grid,
    is_learning_rate,
    layout,
    learning_rate_name,
    panel_of,
    panels,
    plot_series,
    run_title,
)

#: The epoch-end log keys of a real Ultralytics detection run (yolov8n, eventhooks'
#: adapter), in the order the adapter emits them.
ULTRALYTICS_DETECT = [
    "train/box_loss", "train/cls_loss", "train/dfl_loss", "loss", "metrics/precision(B)",
    "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)", "val/box_loss",
    "val/cls_loss", "val/dfl_loss", "val_loss", "lr/pg0", "lr/pg1", "lr/pg2", "fitness",
]  # fmt: skip


def write_log(path: Path, epochs: list[dict[str, float]], *, runs: int = 1) -> Path:
    """A complete run's event log with these epoch logs (each run gets all of them)."""
    bus = EventBus()
    with EventLog(path) as writer:
        bus.attach(writer)
        for _ in range(runs):
            bus.emit("on_pretrain_routine_start")
            bus.emit("on_train_start")
            for epoch, logs in enumerate(epochs):
                bus.emit("on_fit_epoch_end", epoch=epoch, logs=logs)
            bus.emit("on_train_end")
            bus.emit("teardown")
    return path


def ultralytics_epochs(count: int = 3) -> list[dict[str, float]]:
    """Epoch logs with Ultralytics' keys: losses falling, mAP rising, val_loss best at 1."""
    out = []
    for epoch in range(count):
        logs = {key: 1.0 + epoch for key in ULTRALYTICS_DETECT}
        logs.update({k: 5.0 - epoch for k in ULTRALYTICS_DETECT if k.endswith("loss")})
        logs["val_loss"] = [3.0, 2.0, 2.5, 2.2][epoch % 4]
        logs.update({f"lr/pg{g}": 0.01 * (epoch + 1) for g in range(3)})
        out.append(logs)
    return out


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Figure]]:
    """The figures the command draws (and saves), in order."""
    figures: list[Figure] = []
    real = plot_module.figure

    def spy(*args: Any, **kwargs: Any) -> Figure:
        figures.append(real(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(plot_module, "figure", spy)
    yield figures


def by_title(shown: Layout) -> dict[str, Any]:
    return {panel.title: panel for panel in shown.panels}


# -- grouping ------------------------------------------------------------------------------


def test_keras_twins_share_a_panel() -> None:
    keys = ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert panels(keys) == {"accuracy": ["accuracy", "val_accuracy"], "loss": ["loss", "val_loss"]}


def test_ultralytics_twins_and_learning_rates_share_panels() -> None:
    assert panels(ULTRALYTICS_DETECT) == {
        "box_loss": ["train/box_loss", "val/box_loss"],
        "cls_loss": ["train/cls_loss", "val/cls_loss"],
        "dfl_loss": ["train/dfl_loss", "val/dfl_loss"],
        "loss": ["loss", "val_loss"],
        "metrics/precision(B)": ["metrics/precision(B)"],
        "metrics/recall(B)": ["metrics/recall(B)"],
        "metrics/mAP50(B)": ["metrics/mAP50(B)"],
        "metrics/mAP50-95(B)": ["metrics/mAP50-95(B)"],
        LR_PANEL: ["lr/pg0", "lr/pg1", "lr/pg2"],
        "fitness": ["fitness"],
    }


@pytest.mark.parametrize(
    "key",
    ["lr", "learning_rate", "lr/pg0", "lr/pg12", "lr-Adam", "lr-Adam/pg1", "train/lr", "LR",
     "lr_0", "learning_rate_1", "lr_0/pg1", "learning_rate-Adam", "val/lr"],
)  # fmt: skip
def test_every_learning_rate_goes_to_the_learning_rate_panel(key: str) -> None:
    assert panel_of(key) == LR_PANEL


@pytest.mark.parametrize(
    ("key", "panel"),
    [("train_loss", "loss"), ("val_acc", "acc"), ("validation/f1", "f1"), ("val_", "val_"),
     ("train/", "train/"), ("slr", "slr"), ("metrics/lrap", "metrics/lrap"),
     ("lr_decay", "lr_decay"), ("learning_rate_decay", "learning_rate_decay"),
     ("lr_", "lr_"), ("lr-", "lr-"), ("lr_0x", "lr_0x")],
)  # fmt: skip
def test_other_keys_lose_a_training_or_validation_prefix_only(key: str, panel: str) -> None:
    assert panel_of(key) == panel


@pytest.mark.parametrize(
    ("key", "name"),
    [("lr", "learning_rate"), ("learning_rate", "learning_rate"),
     ("lr/pg1", "learning_rate/pg1"), ("learning_rate/pg1", "learning_rate/pg1"),
     ("lr_0", "learning_rate_0"), ("learning_rate_12", "learning_rate_12"),
     ("lr_0/pg1", "learning_rate_0/pg1"), ("lr-Adam", "learning_rate-Adam"),
     ("lr-Adam/pg1", "learning_rate-Adam/pg1"), ("learning_rate-Adam", "learning_rate-Adam"),
     ("lr_decay", None), ("learning_rate_decay", None), ("lr_", None), ("lr-", None),
     ("lr_0x", None), ("lrx", None), ("slr", None), ("train/lr", None), ("LR", None),
     ("momentum", None), ("", None),
     # LearningRateMonitor's momentum and weight decay (found by review): not rates
     ("lr-SGD-momentum", None), ("lr-SGD-weight_decay", None), ("lr-Adam-beta1/pg1", None)],
)  # fmt: skip
def test_learning_rate_names_are_one_rule(key: str, name: str | None) -> None:
    """The rule TensorBoard, MLflowLogger and the plots share (#14)."""
    assert learning_rate_name(key) == name
    if name is not None:
        assert learning_rate_name(name) == name  # a canonical name is its own
        assert is_learning_rate(key)


def test_grid_has_at_most_three_columns() -> None:
    assert [grid(n) for n in (1, 2, 3, 4, 9, 10)] == [
        (1, 1), (1, 2), (1, 3), (2, 3), (3, 3), (4, 3)
    ]  # fmt: skip
    with pytest.raises(ValueError):
        grid(0)


_NAMES = st.text(string.ascii_letters + string.digits + "_/-() ", min_size=1, max_size=12)
_PREFIXES = st.sampled_from(["", "val_", "train_", "train/", "val/", "validation_", "lr/"])
_KEYS = st.lists(st.tuples(_PREFIXES, _NAMES).map("".join), max_size=30, unique=True)


@settings(max_examples=300)
@given(keys=_KEYS)
def test_grouping_puts_every_key_in_one_panel_with_its_twins(keys: list[str]) -> None:
    grouped = panels(keys)
    placed = [key for members in grouped.values() for key in members]
    assert sorted(placed) == sorted(keys)  # each key once, none invented
    where = {key: name for name, members in grouped.items() for key in members}
    for key in keys:
        twins = [f"val_{key}", f"validation_{key}", f"val/{key}"]
        if key.startswith(("train_", "train/")):
            twins += [f"val_{key[6:]}", f"val/{key[6:]}"]
        for twin in twins:
            if twin in where:
                assert where[twin] == where[key], (key, twin)
    if keys:
        rows, columns = grid(len(grouped))
        assert 1 <= columns <= MAX_COLUMNS and rows * columns >= len(grouped)
        assert (rows - 1) * columns < len(grouped)  # no empty row


@settings(max_examples=500)
@given(key=st.text(min_size=1, max_size=20))
def test_a_key_and_its_twins_map_to_one_panel(key: str) -> None:
    for prefix in ("val_", "val/", "validation_", "validation/"):
        assert panel_of(prefix + key) == panel_of(key)
    for sep in ("_", "/"):
        assert panel_of(f"train{sep}{key}") == panel_of(f"val{sep}{key}")


@settings(max_examples=15)
@given(keys=st.lists(st.tuples(_PREFIXES, _NAMES).map("".join), min_size=1, max_size=12,
                     unique=True))  # fmt: skip
def test_the_drawn_figure_shows_every_key_once_in_at_most_three_columns(
    keys: list[str],
) -> None:
    series = {key: [(0, 1.0), (1, 0.5)] for key in keys}
    shown = layout(figure(series, mark_best=False))
    drawn = [key for panel in shown.panels for key in panel.lines]
    assert sorted(drawn) == sorted(keys)
    assert sorted(entry for panel in shown.panels for entry in panel.legend) == sorted(keys)
    assert shown.columns <= MAX_COLUMNS and len(shown.panels) == len(panels(keys))
    assert all(panel.column < MAX_COLUMNS for panel in shown.panels)


# -- the figure -------------------------------------------------------------------------------


def test_an_ultralytics_run_is_a_grid_of_three_columns(
    capsys: Any, tmp_path: Path, drawn: list[Figure]
) -> None:
    log = write_log(tmp_path / "yolo" / "events.jsonl", ultralytics_epochs())
    png = tmp_path / "yolo.png"
    code, out, err = run(capsys, "plot", str(log), "-o", str(png))
    assert code == 0 and err == "" and out == f"training curves: {png}\n"
    (fig,) = drawn
    shown = layout(fig)
    assert (shown.rows, shown.columns) == (4, 3)  # 10 panels, not one row of 16
    assert png_size(png) == (shown.width, shown.height)
    assert shown.width <= 1400 and shown.height <= 1400
    panel = by_title(shown)
    assert list(panel) == list(panels(ULTRALYTICS_DETECT))
    assert [(p.row, p.column) for p in shown.panels] == [(i // 3, i % 3) for i in range(10)]
    assert set(panel["box_loss"].lines) == {"train/box_loss", "val/box_loss"}
    assert set(panel["loss"].lines) == {"loss", "val_loss"}
    assert set(panel[LR_PANEL].lines) == {"lr/pg0", "lr/pg1", "lr/pg2"}
    assert panel[LR_PANEL].lines["lr/pg2"] == [(0.0, 0.01), (1.0, 0.02), (2.0, 0.03)]
    for p in shown.panels:
        assert p.xlabel == "epoch" and p.ylabel == p.title
        for points in p.lines.values():
            assert [x for x, _ in points] == [0.0, 1.0, 2.0]  # 0-based, as the payloads
    # val_loss (3.0, 2.0, 2.5) is best at epoch 1: starred in its panel, a line in every one.
    assert panel["loss"].best == (1.0, 2.0)
    assert panel["loss"].best_label == "best: epoch 1 (val_loss=2)"
    assert all(p.best is None for p in shown.panels if p.title != "loss")
    assert all(p.best_lines == [1.0] for p in shown.panels)
    assert panel["loss"].legend == ["loss", "val_loss", "best: epoch 1 (val_loss=2)"]
    assert panel[LR_PANEL].legend == ["lr/pg0", "lr/pg1", "lr/pg2"]


def test_the_best_epoch_follows_the_monitor_and_its_direction() -> None:
    series = {
        "loss": [(0, 1.0), (1, 0.5), (2, 0.4)],
        "val_loss": [(0, 0.9), (1, math.nan), (2, 0.7), (3, 0.7)],
        "val_accuracy": [(0, 0.5), (1, 0.8), (2, 0.6)],
        "fitness": [(0, 0.2), (1, 0.1), (2, 0.3)],
    }
    assert default_monitor(list(series)) == "val_loss"
    assert default_monitor(["loss", "acc"]) == "loss"
    assert default_monitor(["acc", "val_acc"]) is None
    panel = by_title(layout(figure(series)))
    assert panel["loss"].best == (2.0, 0.7)  # NaN skipped, the first of a tie
    panel = by_title(layout(figure(series, monitor="val_accuracy")))
    assert panel["accuracy"].best == (1.0, 0.8) and panel["loss"].best is None
    panel = by_title(layout(figure(series, monitor="fitness", mode="min")))
    assert panel["fitness"].best == (1.0, 0.1)
    with pytest.raises(ValueError, match="--mode"):
        figure(series, monitor="fitness")
    with pytest.raises(ValueError, match=r"'nope'.*loss, val_loss"):
        figure(series, monitor="nope")
    shown = layout(figure({"acc": [(0, 0.5)], "val_acc": [(0, 0.4)]}))
    assert all(p.best is None and p.best_lines == [] for p in shown.panels)


def test_monitor_and_mode_from_the_command_line(
    capsys: Any, tmp_path: Path, drawn: list[Figure]
) -> None:
    log = write_log(tmp_path / "events.jsonl", ultralytics_epochs(4))
    code, _, err = run(capsys, "plot", str(log), "--monitor", "fitness", "--mode", "max")
    assert code == 0, err
    assert by_title(layout(drawn[-1]))["fitness"].best == (3.0, 4.0)
    code, _, err = run(capsys, "plot", str(log), "--monitor", "fitness")
    assert code == 1 and "pass mode='min' or mode='max' (--mode" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "replay", str(log), "--plot", str(tmp_path / "r.png"),
                       "--monitor", "metrics/mAP50(B)", "--mode", "max")  # fmt: skip
    assert code == 0, err
    assert by_title(layout(drawn[-1]))["metrics/mAP50(B)"].best == (3.0, 4.0)


def test_the_title_names_the_run_and_its_date(
    capsys: Any, tmp_path: Path, drawn: list[Figure], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = write_log(tmp_path / "run7" / "events.jsonl", [{"loss": 1.0}, {"loss": 0.5}])
    first = float(log.read_text().split('"time":', 1)[1].split(",", 1)[0])
    date = datetime.fromtimestamp(first).astimezone()
    expected = f"run7/events.jsonl, {date:%Y-%m-%d %H:%M %Z}"
    assert run_title(log, first) == expected
    assert run(capsys, "plot", str(log), "-o", str(tmp_path / "a.png"))[0] == 0
    assert layout(drawn[-1]).title == expected
    assert run(capsys, "plot", str(log), "-o", str(tmp_path / "b.png"), "--title", "mine")[0] == 0
    assert layout(drawn[-1]).title == "mine"
    monkeypatch.chdir(tmp_path / "run7")  # a relative path is named by its folder too
    assert run_title(Path("events.jsonl"), None) == "run7/events.jsonl"
    assert run_title(Path("/events.jsonl"), None) == "events.jsonl"


def test_a_one_metric_run_is_one_panel(tmp_path: Path) -> None:
    out = plot_series({"loss": [(0, 1.0), (1, 0.5)]}, tmp_path / "one.png")
    shown = layout(figure({"loss": [(0, 1.0), (1, 0.5)]}))
    assert (shown.rows, shown.columns) == (1, 1) and png_size(out) == (shown.width, shown.height)
    assert shown.panels[0].best == (1.0, 0.5)


# -- where the PNG goes, which run it draws --------------------------------------------------


def test_plot_without_output_writes_beside_the_log_and_says_where(
    capsys: Any, tmp_path: Path
) -> None:
    log = write_log(tmp_path / "runs" / "a" / "train.jsonl", [{"loss": 1.0}, {"loss": 0.5}])
    code, out, err = run(capsys, "plot", str(log))
    png = tmp_path / "runs" / "a" / "train.png"
    assert code == 0 and err == "" and out == f"training curves: {png}\n"
    assert png_size(png)[0] > 100


def test_the_default_png_is_never_the_log_itself() -> None:
    from eventhooks._cli_replay import default_plot_path

    assert default_plot_path("runs/a/events.jsonl") == Path("runs/a/events.png")
    assert default_plot_path("log") == Path("log.png")
    assert default_plot_path("odd.png") == Path("odd.png.png")


def test_plot_of_a_log_with_two_runs_draws_the_last(
    capsys: Any, tmp_path: Path, drawn: list[Figure]
) -> None:
    log = write_log(tmp_path / "two.jsonl", [{"loss": 1.0}, {"loss": 0.5}], runs=2)
    code, out, _ = run(capsys, "plot", str(log))
    assert code == 0 and out.strip().endswith("(the last of 2 runs)")
    (panel,) = layout(drawn[-1]).panels
    assert panel.lines["loss"] == [(0.0, 1.0), (1.0, 0.5)]  # not 0, 1, 0, 1


def test_the_title_date_of_a_log_with_two_runs_is_the_drawn_runs(
    capsys: Any, tmp_path: Path, drawn: list[Figure]
) -> None:
    import json

    log = write_log(tmp_path / "two.jsonl", [{"loss": 1.0}], runs=2)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    second = [i for i, line in enumerate(lines) if line["event"] == "on_train_start"][1]
    for i, line in enumerate(lines):  # run 1 at noon on 1970-01-02, run 2 at noon on 01-05
        line["time"] = 43_200.0 + 86_400.0 * (1 if i < second else 4) + i
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, _, _ = run(capsys, "plot", str(log))
    title = layout(drawn[-1]).title
    assert code == 0 and "1970-01-05" in title, title


# -- review of #14: names matplotlib would read as TeX ----------------------------------------


def test_dollar_signs_in_names_and_folders_are_drawn_as_text(
    capsys: Any, tmp_path: Path, drawn: list[Figure]
) -> None:
    """A metric named ``$\\frac$`` or ``cost $x$``, and a run folder with ``$`` in its name,
    are labels like any other: not TeX that fails to parse (no PNG) or renders otherwise."""
    keys = ["$\\frac$", "val_$\\frac$", "cost $x$", "loss"]
    log = write_log(tmp_path / "$\\sqrt$" / "events.jsonl",
                    [{k: 1.0 / (e + 1) for k in keys} for e in range(2)])  # fmt: skip
    code, out, err = run(capsys, "plot", str(log))
    png = log.with_suffix(".png")
    assert code == 0 and err == "" and out == f"training curves: {png}\n"
    assert png_size(png)[0] > 100
    shown = by_title(layout(drawn[-1]))
    assert shown["$\\frac$"].legend == ["$\\frac$", "val_$\\frac$"]
    assert shown["cost $x$"].ylabel == "cost $x$"
    texts = [t for ax in drawn[-1].get_axes() for t in (ax.title, ax.yaxis.label)]
    legends = [ax.get_legend() for ax in drawn[-1].get_axes()]
    texts += [t for legend in legends if legend is not None for t in legend.get_texts()]
    assert texts and not any(t.get_parse_math() for t in texts)
