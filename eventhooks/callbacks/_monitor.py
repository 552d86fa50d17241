"""Which way a monitored metric improves, shared by EarlyStopping and ModelCheckpoint.

Keras asks the compiled model for a metric's direction; a subscriber cannot (it sees only
logs, under any framework), so ``mode="auto"`` decides from the metric's name and refuses to
guess when the name says nothing.
"""

from __future__ import annotations

import math
from typing import Literal

Mode = Literal["auto", "min", "max"]

_LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "rmse", "mape", "crossentropy", "perplexity")
_HIGHER_IS_BETTER = ("acc", "accuracy", "auc", "precision", "recall", "f1", "map", "iou")


def direction(monitor: str, mode: str, owner: str) -> Literal["min", "max"]:
    """Resolve ``mode`` for ``monitor``; ``owner`` names the subscriber in errors."""
    if mode in ("min", "max"):
        return mode  # type: ignore[return-value]
    if mode != "auto":
        raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    name = monitor.removeprefix("val_").lower()
    last = name.replace("/", "_").replace("-", "_").split("_")[-1]
    if name in _LOWER_IS_BETTER or last in _LOWER_IS_BETTER or name.endswith("loss"):
        return "min"
    if name in _HIGHER_IS_BETTER or last in _HIGHER_IS_BETTER or name.endswith("accuracy"):
        return "max"
    raise ValueError(
        f"{owner}: cannot tell whether {monitor!r} should be minimized or maximized; "
        "pass mode='min' or mode='max'"
    )


class Monitor:
    """Improvement test with ``min_delta``, as Keras does it; NaN never improves anything."""

    def __init__(self, monitor: str, mode: str, min_delta: float, owner: str) -> None:
        self.monitor = monitor
        self.mode = direction(monitor, mode, owner)
        self.min_delta = abs(float(min_delta))

    def improved(self, current: float, reference: float | None) -> bool:
        """Whether ``current`` beats ``reference`` by more than ``min_delta``."""
        if math.isnan(current):
            return False
        if reference is None:
            return True
        if self.mode == "min":
            return current + self.min_delta < reference
        return current - self.min_delta > reference


def writes_here(rank: int, all_ranks: bool) -> bool:
    """Writers write from rank 0 only under distributed training, unless told otherwise."""
    return all_ranks or rank == 0


def rank_path(path: str, rank: int) -> str:
    """``{rank}`` in a writer's path becomes the process rank (one file per rank)."""
    return path.replace("{rank}", str(rank))


def trainer_name(source: object) -> str:
    """How errors name the emitting trainer (``payload.source``)."""
    if source is None:
        return "no trainer (payload.source is None)"
    return f"{type(source).__module__}.{type(source).__qualname__}"
