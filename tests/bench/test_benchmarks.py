"""The core benchmark runs and reports every case (its numbers are never asserted)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_core_benchmark_reports_every_case_against_its_target() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("bench_core", BENCHMARKS / "bench_core.py")
        assert spec is not None and spec.loader is not None
        bench = sys.modules["bench_core"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)  # pydantic resolves its models' annotations there
        text = bench.main(rounds=1)
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop("bench_core", None)
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")][1:]
    labels = [row[0].lstrip("| ") for row in rows]
    assert labels[:-1] == list(bench.cases()) and labels[-1].startswith("each extra subscriber")
    for row in rows:
        assert re.fullmatch(r"-?[\d,]+", row[1]) and re.fullmatch(r"-?\d+\.\dx", row[2])
    targets = {label: row[3].strip(" |") for label, row in zip(labels, rows, strict=True)}
    assert targets["`bus.emit`, 0 subscribers"] == "5x" and targets[bench.ONE] == "45x"
