"""The ``eventhooks`` command: demo, events, schema, replay, plot.

Every failure the user can cause (bad arguments, a missing or malformed file, an optional
dependency not installed) ends in one ``eventhooks: error: ...`` line and a non-zero exit;
``--traceback`` shows the full story for bug reports.

Exit statuses: 0 done, 1 error, 2 bad arguments, 3 (``replay`` only) replayed, but the log
ends early (a killed run: its last line cut off, or its last run without ``teardown``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from . import registry as _registry
from .errors import EventhooksError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3  # replay: every complete event replayed, but the log ends early


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its default prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (try --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="eventhooks",
        description="One typed event bus for ML training: try the demo, browse the events, "
        "replay a recorded run.",
    )
    parser.add_argument("--version", action="version", version=f"eventhooks {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback on errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo", help="train the NumPy reference trainer with progress bar, early stopping, "
        "CSV and event logs, checkpoint and a PNG plot",
    )  # fmt: skip
    demo.add_argument("--out", metavar="DIR", help="run folder (default: runs/<timestamp>)")
    demo.add_argument("--epochs", type=_positive, default=40, help="at most (default 40)")
    demo.add_argument("--patience", type=_non_negative, default=3, help="(default 3)")
    demo.add_argument("--seed", type=int, default=0, help="data and weights seed (default 0)")
    demo.add_argument("--no-plot", action="store_true", help="skip the PNG")

    sub.add_parser("events", help="table of the 35 names, 25 moments and payload fields")

    schema = sub.add_parser("schema", help="JSON Schema of one event's payload, or of all")
    schema.add_argument("name", nargs="?", help="any of an event's names (default: all)")

    replay = sub.add_parser(
        "replay", help="re-emit an event log into subscribers",
        epilog=f"exit status: 0 the log is complete, {EXIT_INCOMPLETE} it was replayed but ends "
        "early (last line cut off, or last run without teardown: a killed run), "
        f"{EXIT_ERROR} error, {EXIT_USAGE} bad arguments",
    )  # fmt: skip
    replay.add_argument("log", help="an event log (.jsonl) written by EventLog")
    replay.add_argument("--csv", metavar="PATH", help="write the epochs as CSVLogger does")
    replay.add_argument("--plot", metavar="PNG", help="draw the training curves to a PNG")
    _plot_options(replay)
    replay.add_argument(
        "--tensorboard", metavar="DIR", help="write the run's scalars as TensorBoard event "
        "files in DIR (train/ and validation/ runs, as Keras' TensorBoard callback)",
    )  # fmt: skip
    replay.add_argument(
        "--mlflow", metavar="URI", help="log the run to the MLflow tracking URI "
        "(sqlite:///mlflow.db, http://127.0.0.1:5000...); a crashed or killed run ends FAILED",
    )  # fmt: skip
    replay.add_argument(
        "--mlflow-experiment", metavar="NAME",
        help="MLflow experiment (default: MLflow's, or MLFLOW_EXPERIMENT_NAME)",
    )  # fmt: skip

    plot = sub.add_parser(
        "plot", help="training curves of an event log as a PNG",
        description="Training curves of an event log's last run: one panel per metric with "
        "its validation twin, the learning rates together, the best epoch marked.",
    )  # fmt: skip
    plot.add_argument("log", help="an event log (.jsonl) written by EventLog")
    plot.add_argument(
        "-o", "--output", metavar="PNG", help="the PNG to write (default: beside the log, "
        "its name ending in .png instead of .jsonl)",
    )  # fmt: skip
    _plot_options(plot)
    return parser


def _plot_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--title", help="figure title (default: the log's folder and name, and the run's date)"
    )
    parser.add_argument(
        "--monitor", metavar="METRIC",
        help="mark this metric's best epoch (default: val_loss, else loss)",
    )  # fmt: skip
    parser.add_argument(
        "--mode", choices=("auto", "min", "max"), default="auto",
        help="whether the monitored metric is better lower (min) or higher (max); auto: "
        "from its name, as EarlyStopping decides",
    )  # fmt: skip


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # argparse would name the function instead of the expected value
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _demo(args: argparse.Namespace) -> int:
    from ._cli_demo import report, run_demo

    result = run_demo(
        args.out, epochs=args.epochs, seed=args.seed, patience=args.patience,
        plot=not args.no_plot,
    )  # fmt: skip
    print(report(result))
    return 0


def _events(args: argparse.Namespace) -> int:
    from ._cli_tables import events_table

    print(events_table())
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(_registry.schema(args.name), indent=2))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from ._cli_replay import replay_log

    replayed = replay_log(
        args.log, csv=args.csv, plot=args.plot, title=args.title, monitor=args.monitor,
        mode=args.mode, tensorboard=args.tensorboard, mlflow=args.mlflow,
        mlflow_experiment=args.mlflow_experiment,
    )  # fmt: skip
    print(replayed.text)  # its last line says how the log ends early, if it does
    return 0 if replayed.incomplete is None else EXIT_INCOMPLETE


def _plot(args: argparse.Namespace) -> int:
    from ._cli_replay import default_plot_path, replay_command

    output = args.output if args.output is not None else default_plot_path(args.log)
    print(replay_command(
        args.log, plot=output, title=args.title, monitor=args.monitor, mode=args.mode,
        summary=False,
    ))  # fmt: skip
    return 0


_COMMANDS = {"demo": _demo, "events": _events, "schema": _schema, "replay": _replay,
             "plot": _plot}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors: already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("eventhooks: interrupted", file=sys.stderr)
        return 130
    except (EventhooksError, OSError, ValueError, ImportError) as exc:
        if args.traceback:
            raise
        print(f"eventhooks {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.strerror or text}: {exc.filename}"
    return text or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
