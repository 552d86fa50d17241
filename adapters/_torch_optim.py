"""Optimizer moments from the optimizer itself, not from calls the user has to add.

Steps come from PyTorch's step post hook, ``zero_grad`` from a wrapper on the optimizer
instance (PyTorch has no hook for it), and hyper-parameter changes (a scheduler, or
``group["lr"] = ...``) from comparing the param groups with the values last seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

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


class _ZeroGrad:
    """Stands in for ``optimizer.zero_grad`` while a run is active: announce, then clear.
    ``previous`` (another run's wrapper, the user's function, or nothing) is put back after."""

    def __init__(self, announce: Callable[[], None], opt: torch.optim.Optimizer) -> None:
        self.announce: Callable[[], None] | None = announce
        self.original: Callable[..., Any] = opt.zero_grad
        self.previous: Any = opt.__dict__.get("zero_grad", _ABSENT)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.announce is not None:
            self.announce()
        return self.original(*args, **kwargs)


class OptimizerWatch:
    """Hooks installed on the run's optimizers; ``remove()`` leaves them as they were."""

    def __init__(
        self, optimizers: Sequence[torch.optim.Optimizer],
        after_step: Callable[[], None], before_zero_grad: Callable[[], None],
    ) -> None:  # fmt: skip
        self.optimizers = tuple(optimizers)
        self._handles: list[Any] = []
        self._wrappers: list[_ZeroGrad] = []
        try:
            for opt in self.optimizers:
                self._handles.append(opt.register_step_post_hook(lambda *_: after_step()))
                wrapper = _ZeroGrad(before_zero_grad, opt)
                opt.zero_grad = wrapper  # type: ignore[method-assign]
                self._wrappers.append(wrapper)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for opt, wrapper in zip(self.optimizers, self._wrappers, strict=False):
            wrapper.announce = None  # inert even if someone wrapped it again on top of us
            if opt.__dict__.get("zero_grad") is wrapper:
                previous = wrapper.previous
                while isinstance(previous, _ZeroGrad) and previous.announce is None:
                    previous = previous.previous  # a run that ended out of order: skipped
                if previous is _ABSENT:
                    del opt.__dict__["zero_grad"]
                else:
                    opt.__dict__["zero_grad"] = previous
        self._wrappers.clear()
