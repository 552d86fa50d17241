"""The peers' benchmark runs every dispatch and reports a number for each (never asserts one)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
NUMBER = r"[\d,]+"
RATIO = r"\d+\.\dx"


def test_peers_benchmark_reports_every_dispatch_at_1_and_10_callbacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the module sets it; the test leaves it as it was
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("bench_peers", BENCHMARKS / "bench_peers.py")
        assert spec is not None and spec.loader is not None
        bench = sys.modules["bench_peers"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        text = bench.main(rounds=1, number=20)
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop("bench_peers", None)
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")][1:]
    labels = [row[0].removeprefix("| ") for row in rows]
    assert labels == [bench.BARE, *bench.BUILDERS]
    for row in rows:
        ns_1, ratio_1, ns_10, ratio_10 = row[1:5]
        assert re.fullmatch(NUMBER, ns_1) and re.fullmatch(NUMBER, ns_10), row
        assert re.fullmatch(RATIO, ratio_1) and re.fullmatch(RATIO, ratio_10), row
    versus = {label: row[5].rstrip(" |") for label, row in zip(labels, rows, strict=True)}
    for peer in [label for label in labels if label not in (bench.BARE, bench.EVENTHOOKS)]:
        assert re.fullmatch(r"\d+\.\d\d \((yes|no)\) / \d+\.\d\d \((yes|no)\)", versus[peer]), peer
    assert set(bench.TARGETS) <= set(labels)
    verdicts = [line for line in text.splitlines() if line.startswith("eventhooks' validated emit")]
    assert len(verdicts) == 1 and re.search(r" is (NOT )?cheaper than every peer", verdicts[0])
