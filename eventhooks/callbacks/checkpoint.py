"""ModelCheckpoint: save the model at epoch ends, every epoch or only the best ones."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..callback import Callback
from ..payloads import CheckpointPayload, EpochPayload, RunPayload
from ._monitor import Mode, Monitor, trainer_name, writes_here

SaveFn = Callable[[Any, str], object]


class ModelCheckpoint(Callback):
    """Saves through the emitting trainer's ``save(path)`` at each ``on_fit_epoch_end``.

    ``path`` may be a format string over ``epoch`` (1-based, as in Keras), ``rank`` and the
    epoch's logs: ``"ckpt/{epoch:02d}-{val_loss:.3f}.npz"``. With ``save_best_only`` a file is
    written only when ``monitor`` improved. Where the trainer's ``save`` does not emit
    ``on_model_save`` itself (the NumPy trainer does), this subscriber emits it. A trainer
    without ``save()`` is a clear error unless ``save_fn(trainer, path)`` says how to save.
    Only rank 0 saves unless ``all_ranks=True``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        monitor: str = "val_loss",
        save_best_only: bool = False,
        mode: Mode = "auto",
        min_delta: float = 0.0,
        *,
        save_fn: SaveFn | None = None,
        all_ranks: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.monitor = monitor
        self.save_best_only = save_best_only
        self.save_fn = save_fn
        self.all_ranks = all_ranks
        self._op = Monitor(monitor, mode, min_delta, "ModelCheckpoint")
        self.best: float | None = None
        self.saved: list[str] = []
        self._saving: str | None = None
        self._heard = False

    def on_train_start(self, payload: RunPayload) -> None:
        self.best = None
        self.saved = []

    def on_model_save(self, payload: CheckpointPayload) -> None:
        if self._saving is not None:
            self._heard = True  # the trainer's save() announced itself

    def on_fit_epoch_end(self, payload: EpochPayload) -> None:
        if not writes_here(payload.rank, self.all_ranks):
            return
        logs = payload.logs
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                warnings.warn(
                    f"Can save best model only with {self.monitor} available, skipping. "
                    f"Available metrics are: {','.join(logs) or 'none'}",
                    stacklevel=2,
                )
                return
            if not self._op.improved(current, self.best):
                return
            self.best = current
        try:
            # epoch and rank win over log keys of the same name (Keras raises a TypeError)
            path = self.path.format(**{**logs, "epoch": payload.epoch + 1, "rank": payload.rank})
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"ModelCheckpoint: cannot format path {self.path!r} with epoch and "
                f"logs {sorted(logs)}: {exc!r}"
            ) from None
        self._save(payload, path)

    def _save(self, payload: EpochPayload, path: str) -> None:
        source = payload.source
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._saving, self._heard = path, False
        try:
            if self.save_fn is not None:
                self.save_fn(source, path)
            elif callable(getattr(source, "save", None)):
                source.save(path)
            else:
                raise TypeError(
                    f"ModelCheckpoint saves through the emitting trainer's save(path), and "
                    f"{trainer_name(source)} has none; pass save_fn=lambda trainer, path: ..."
                )
        finally:
            self._saving = None
        self.saved.append(path)
        if not self._heard and self.bus is not None:
            self.bus.emit(
                "on_model_save", path=path, epoch=payload.epoch, logs=payload.logs,
                source=source, rank=payload.rank, world_size=payload.world_size,
            )  # fmt: skip
