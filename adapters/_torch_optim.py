"""Optimizer moments from the optimizer itself, not from calls the user has to add.

Steps come from PyTorch's step post hook, ``zero_grad`` from a wrapper on the optimizer
instance (PyTorch has no hook for it), and hyper-parameter changes (a scheduler, or
``group["lr"] = ...``) from comparing the param groups with the values last announced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from eventhooks import lifecycle as lc

_NOT_HYPER = frozenset({"params", "initial_lr", "name"})  # never hyper-parameters
_ABSENT: Any = object()  # ``zero_grad`` was not an instance attribute (the class's was in use)


def as_optimizers(optimizer: Any) -> tuple[torch.optim.Optimizer, ...]:
    """``optimizer=`` as a tuple: none, one, or several."""
    if optimizer is None:
        return ()
    optimizers = (optimizer,) if isinstance(optimizer, torch.optim.Optimizer) else tuple(optimizer)
    for opt in optimizers:
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(opt).__name__}")
    return optimizers


def hyperparams(optimizers: Sequence[torch.optim.Optimizer]) -> dict[str, float]:
    """Numeric hyper-parameters of every param group: ``lr``, ``momentum``...; several groups
    or optimizers add ``/pgN`` and ``/optN`` (``lr/pg1``, ``lr/opt1/pg0``)."""
    out: dict[str, float] = {}
    for o, opt in enumerate(optimizers):
        groups = opt.param_groups
        for g, group in enumerate(groups):
            suffix = (f"/opt{o}" if len(optimizers) > 1 else "") + (
                f"/pg{g}" if len(groups) > 1 else ""
            )
            for key, value in group.items():
                if key in _NOT_HYPER or isinstance(value, bool):
                    continue
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    value = value.item()
                if isinstance(value, (int, float)):
                    out[key + suffix] = float(value)
    return out


class OptimizerWatch:
    """A run's hooks on its optimizers: moments inside training batches only, a step counted
    anywhere. ``remove()`` leaves the optimizers as they were."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], life: lc.Run) -> None:
        self.life: lc.Run | None = life  # None once removed: a wrapper left behind is inert
        self._undo: list[Callable[[], None]] = []
        try:
            for opt in optimizers:
                self._undo.append(opt.register_step_post_hook(self._after_step).remove)
                self._undo.append(_ZeroGrad(self, opt).remove)
        except BaseException:
            self.remove()
            raise

    def _after_step(self, *_: Any) -> None:
        if self.life is not None and self.life.in_batch:
            self.life.optimizer_step()
        elif self.life is not None:
            self.life.step += 1

    def remove(self) -> None:
        self.life = None
        for undo in self._undo:
            undo()
        self._undo.clear()


class _ZeroGrad:
    """Stands in for ``optimizer.zero_grad`` while a run is active: announce, then clear.
    ``previous`` (another run's wrapper, the user's function, or nothing) is put back after."""

    def __init__(self, watch: OptimizerWatch, opt: torch.optim.Optimizer) -> None:
        self.watch, self.opt, self.original = watch, opt, opt.zero_grad
        self.previous: Any = opt.__dict__.get("zero_grad", _ABSENT)
        opt.zero_grad = self  # type: ignore[method-assign]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.watch.life is not None and self.watch.life.in_batch:
            self.watch.life.zero_grad()
        return self.original(*args, **kwargs)

    def remove(self) -> None:
        if self.opt.__dict__.get("zero_grad") is self:  # else wrapped on top of it: left inert
            previous = self.previous
            while isinstance(previous, _ZeroGrad) and previous.watch.life is None:
                previous = previous.previous  # a run that ended out of order: skipped
            if previous is _ABSENT:
                del self.opt.__dict__["zero_grad"]
            else:
                self.opt.__dict__["zero_grad"] = previous
