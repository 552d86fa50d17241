"""What a PyTorch run writes and reads besides its events: checkpoints and weights.

:class:`Checkpoints` is the part of :class:`._torch_run.Run` that saves and loads: its
``checkpoint`` and what ``ModelCheckpoint`` and ``EarlyStopping`` call on ``payload.source``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from eventhooks import EventBus, events
from eventhooks import lifecycle as lc


class Checkpoints:
    """Checkpoints and weights of a run's model (a mixin of the run, which sets the fields)."""

    bus: EventBus
    model: torch.nn.Module | None
    optimizers: tuple[torch.optim.Optimizer, ...]
    logs: dict[str, float]
    rank: int
    world_size: int
    _life: lc.Run | None
    _saves: list[dict[str, Any]]  # saves of their own waiting for a place in the order

    if TYPE_CHECKING:

        @property
        def epoch(self) -> int | None: ...

        def _catch_up(self) -> None: ...

    def checkpoint(self, path: str | os.PathLike[str]) -> Path | None:
        """Save ``{"model", "optimizer", "epoch", "logs"}`` state dicts and emit on_model_save.

        Only rank 0 writes (others return None). A save after the epoch's validation or its
        ``on_fit_epoch_end`` is the run's ``on_model_save``; one elsewhere is a save of its own.
        """
        life = self._life if self._life is not None and not self._life.closed else None
        if life is not None:
            self._catch_up()  # a loop broken out of ends first
        runs = life is not None and life.allows(events.on_model_save) and not (
            life.allows(events.on_val_start) and life.allows(events.on_fit_epoch_end)
        )  # a save between training and validation would leave the validation no room
        return self._save(path, runs)

    def _save(self, path: str | os.PathLike[str], the_runs: bool) -> Path | None:
        if self.model is None:
            raise ValueError("run.checkpoint() needs the run's model= (its state_dict is saved)")
        if self.rank != 0:
            return None
        target = write_checkpoint(path, self.model, self.optimizers, self.epoch, self.logs)
        if the_runs and self._life is not None:
            self._life.model_save(target, self.logs)
        elif self.bus.listening(events.on_model_save):  # a save of its own
            self._saves.append({"path": target, "epoch": self.epoch, "logs": dict(self.logs)})
            self._saved()
        return target

    def _saved(self, anyway: bool = False) -> None:
        """Emit the saves of their own once the order has room (a save inside a batch after
        its end, one inside a validation after it, one before an epoch's start after that);
        ``anyway``: the run ends, emit what is left."""
        life = self._life if self._life is not None and not self._life.closed else None
        if life is not None and not anyway and not life.allows(events.on_model_save):
            return
        saves, self._saves = self._saves, []
        for save in saves:
            self.bus.emit(events.on_model_save, **save, source=self, rank=self.rank,
                          world_size=self.world_size)  # fmt: skip

    def save(self, path: str | os.PathLike[str]) -> Path | None:
        """Same as :meth:`checkpoint`: what ``ModelCheckpoint`` calls on ``payload.source``."""
        return self.checkpoint(path)

    def get_weights(self) -> dict[str, torch.Tensor]:
        """A snapshot of the model's state_dict that later training cannot change."""
        if self.model is None:
            raise ValueError("run.get_weights() needs the run's model=")
        return {k: v.detach().clone() for k, v in state_of(self.model).items()}

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load a state_dict (from :meth:`get_weights`) into the model."""
        if self.model is None:
            raise ValueError("run.set_weights() needs the run's model=")
        getattr(self.model, "module", self.model).load_state_dict(weights)


def write_checkpoint(
    path: str | os.PathLike[str], model: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer], epoch: int | None, logs: dict[str, float],
) -> Path:  # fmt: skip
    """Save ``{"model", "optimizer", "epoch", "logs"}`` (``optimizer`` a list if several)."""
    target = Path(path)
    states = [state_of(opt) for opt in optimizers]
    state = {"model": state_of(model), "optimizer": states[0] if len(states) == 1 else states,
             "epoch": epoch, "logs": dict(logs)}  # fmt: skip
    partial = target.with_name(target.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, target)  # a crash mid-save leaves the previous checkpoint intact
    return target


def state_of(obj: Any) -> Any:
    """What a checkpoint saves of a model or optimizer (DDP's wrapper is looked through)."""
    inner = getattr(obj, "module", obj) if isinstance(obj, torch.nn.Module) else obj
    return inner.state_dict()
