"""What a PyTorch run keeps: running means that stay tensors until someone needs a float.

A loss logged every batch is a tensor; turning it into a float (``.item()``) blocks until the
device has computed it. So logged tensors are only detached and kept; they become floats when
a subscriber listens to a moment that carries them, or once per epoch. Also here: where this
process sits in ``torch.distributed``, the averaging of logs and the agreement to stop across
ranks.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sized
from typing import Any

import torch
import torch.distributed as dist

from eventhooks import EventBus

#: Reason given to the bus of a rank that stops because another rank asked to.
PEER_STOP = "stop requested on another rank"


def _check(name: str, value: object) -> object:
    """Reject what is not a scalar metric, naming it (a tensor of 10 losses is a bug)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"metric {name!r} must be a scalar, got a tensor of shape {tuple(value.shape)}"
            )
        return value.detach()
    if isinstance(value, (str, bytes)) or type(value).__name__ in ("bool", "bool_"):
        # float() would take "0.5", True and numpy's True alike
        raise TypeError(
            f"metric {name!r} must be a number or a scalar tensor, got {type(value).__name__}"
        )
    try:
        return float(value)  # type: ignore[arg-type]  # numpy scalars and the like
    except (TypeError, ValueError):
        raise TypeError(
            f"metric {name!r} must be a number or a scalar tensor, got {type(value).__name__}"
        ) from None


#: Pending tensors of one metric are summed into one (on their device, no sync) this often.
FOLD_EVERY = 256


def _fold(values: list[torch.Tensor]) -> torch.Tensor:
    """The sum of scalar tensors as one float64 tensor, computed where they live (no sync)."""
    try:
        return torch.stack(values).sum(dtype=torch.float64)
    except RuntimeError:  # mixed shapes, () and (1,): rare, and slower
        return torch.stack([v.reshape(()) for v in values]).sum(dtype=torch.float64)


def _to_float(values: list[torch.Tensor]) -> float:
    """One device synchronisation for many scalar tensors."""
    return float(values[0]) if len(values) == 1 else float(_fold(values))


class Means:
    """Running means of the metrics logged in the batches of one phase (train or validation).

    Batch logs are means over the epoch so far, as in Keras; the same numbers at the end are
    the epoch's metrics. Batches are weighted equally. This is on every batch's path, so a
    metric is a flat ``[total, count, pending tensors, their folded sum]`` list.
    """

    __slots__ = ("_means",)

    def __init__(self) -> None:
        self._means: dict[str, list[Any]] = {}

    def add(self, metrics: Mapping[str, object]) -> None:
        # All checked before any is kept: a call that raises logs nothing (no NaN left behind).
        checked = [
            (name, value.detach())
            if type(value) is torch.Tensor and value.numel() == 1
            else (name, _check(name, value))
            for name, value in metrics.items()
        ]
        means = self._means
        for name, value in checked:
            mean = means.get(name)
            if mean is None:
                mean = means[name] = [0.0, 0, [], None]
            if isinstance(value, torch.Tensor):
                pending = mean[2]
                pending.append(value)
                if len(pending) >= FOLD_EVERY:
                    # Summed apart from the float32 pending ones: a mixed-dtype stack would
                    # convert each tensor separately, and cost more than it saves.
                    folded = _fold(pending)
                    pending.clear()
                    mean[3] = folded if mean[3] is None else mean[3] + folded
            else:
                mean[0] += value
            mean[1] += 1

    def floats(self) -> dict[str, float]:
        """The running means as floats (one device sync per metric with pending tensors)."""
        out: dict[str, float] = {}
        for name, mean in self._means.items():
            pending, folded = mean[2], mean[3]
            if folded is not None:
                pending.append(folded)
                mean[3] = None
            if pending:
                mean[0] += _to_float(pending)
                pending.clear()
            out[name] = mean[0] / mean[1] if mean[1] else math.nan
        return out

    def __bool__(self) -> bool:
        return bool(self._means)


def to_floats(metrics: Mapping[str, object]) -> dict[str, float]:
    """Metrics logged once (not per batch) as floats, scalars checked."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        checked = _check(name, value)
        out[name] = float(checked)  # type: ignore[arg-type]
    return out


def length(loader: object) -> int | None:
    """``len(loader)``, or None when it has none: a DataLoader is ``Sized`` even over an
    ``IterableDataset`` without ``__len__``, and then ``len()`` raises ``TypeError``."""
    if not isinstance(loader, Sized):
        return None
    try:
        return len(loader)
    except TypeError:
        return None


def where() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average(logs: dict[str, float], world_size: int, moment: str) -> dict[str, float]:
    """Average ``logs`` over all ranks (a collective: every rank must call it, in step).

    The ranks first check that they log the same metric names: an all_reduce of vectors that
    mean different things would silently mix them (or hang on different lengths).
    """
    if world_size == 1:
        return dict(logs)
    names = sorted(logs)
    fingerprint = float(zlib.crc32("\0".join(names).encode()))
    check = torch.tensor([fingerprint, -fingerprint], dtype=torch.float64)
    dist.all_reduce(check, op=dist.ReduceOp.MAX)
    if check[0].item() != -check[1].item():
        raise RuntimeError(
            f"sync_logs: ranks logged different metrics at {moment!r} "
            f"(this rank: {names}); every rank must log the same names"
        )
    if not names:
        return {}
    values = torch.tensor([logs[n] for n in names], dtype=torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values /= world_size
    return dict(zip(names, values.tolist(), strict=True))


def agree_to_stop(bus: EventBus, world_size: int) -> bool:
    """Whether to stop; under torch.distributed the ranks agree, one rank asking is enough (a
    collective: every rank calls it at each epoch boundary)."""
    stop = bus.stop_requested
    if world_size > 1:
        flag = torch.tensor([1.0 if stop else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and not stop:
            bus.request_stop(PEER_STOP)
            stop = True
    return stop
