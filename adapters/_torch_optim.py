"""Optimizer moments from the optimizer itself, not from calls the user has to add.

``optimizer_step`` comes from PyTorch's step post hook; ``on_before_zero_grad`` from a wrapper
put on the optimizer instance's ``zero_grad`` (PyTorch has no zero_grad hook); and
``on_params_update`` from comparing the param groups' hyper-parameters with the last values
seen, so a learning-rate scheduler, or a user writing ``group["lr"] = ...``, is noticed
without telling anyone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

#: Param-group entries that are never hyper-parameters worth announcing.
_NOT_HYPER = frozenset({"params", "initial_lr", "name"})


class StepListener(Protocol):
    """What the optimizer watcher reports to (the run)."""

    def _after_step(self, index: int) -> None: ...
    def _before_zero_grad(self, index: int) -> None: ...


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
    """Numeric hyper-parameters of every param group, named ``lr``, ``lr/pg1``, ``lr/opt1/pg0``.

    One optimizer with one group gives plain names (``lr``, ``momentum``); more groups or
    optimizers add ``/pgN`` and ``/optN`` so that the names stay unique.
    """
    out: dict[str, float] = {}
    many = len(optimizers) > 1
    for o, opt in enumerate(optimizers):
        groups = opt.param_groups
        for g, group in enumerate(groups):
            suffix = (f"/opt{o}" if many else "") + (f"/pg{g}" if len(groups) > 1 else "")
            for key, value in group.items():
                if key in _NOT_HYPER or isinstance(value, bool):
                    continue
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    value = value.item()
                if isinstance(value, (int, float)):
                    out[key + suffix] = float(value)
    return out


#: ``zero_grad`` was not an instance attribute (the class's method was in use).
_ABSENT: Any = object()


class _ZeroGrad:
    """Stands in for ``optimizer.zero_grad`` while a run is active: announce, then clear.

    ``previous`` is what the optimizer instance held under ``zero_grad`` before (another
    run's wrapper, the user's own function, or nothing): removing the wrapper puts it back,
    so a run nested in another on the same optimizer leaves the outer run's hook in place.
    """

    def __init__(self, listener: StepListener, index: int, opt: torch.optim.Optimizer) -> None:
        self.listener: StepListener | None = listener
        self.index = index
        self.original: Callable[..., Any] = opt.zero_grad
        self.previous: Any = opt.__dict__.get("zero_grad", _ABSENT)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.listener is not None:
            self.listener._before_zero_grad(self.index)
        return self.original(*args, **kwargs)


class OptimizerWatch:
    """Hooks installed on the run's optimizers; ``remove()`` leaves them as they were."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], listener: StepListener):
        self.optimizers = tuple(optimizers)
        self._handles: list[Any] = []
        self._wrappers: list[_ZeroGrad] = []
        try:
            for index, opt in enumerate(self.optimizers):
                self._handles.append(opt.register_step_post_hook(self._post_hook(listener, index)))
                wrapper = _ZeroGrad(listener, index, opt)
                opt.zero_grad = wrapper  # type: ignore[method-assign]
                self._wrappers.append(wrapper)
        except BaseException:
            self.remove()
            raise

    @staticmethod
    def _post_hook(listener: StepListener, index: int) -> Callable[..., None]:
        def hook(_opt: Any, _args: Any, _kwargs: Any) -> None:
            listener._after_step(index)

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for opt, wrapper in zip(self.optimizers, self._wrappers, strict=False):
            wrapper.listener = None  # inert even if someone wrapped it again on top of us
            if opt.__dict__.get("zero_grad") is wrapper:
                _restore(opt, wrapper.previous)
        self._wrappers.clear()


def _restore(opt: torch.optim.Optimizer, previous: Any) -> None:
    """Put back what ``zero_grad`` was before, skipping wrappers of runs that already ended.

    Runs that end out of order (the outer one first) leave their wrapper under a later one;
    it is inert, and skipped here, so the optimizer ends up as it was before both.
    """
    while isinstance(previous, _ZeroGrad) and previous.listener is None:
        previous = previous.previous
    if previous is _ABSENT:
        del opt.__dict__["zero_grad"]
    else:
        opt.__dict__["zero_grad"] = previous
