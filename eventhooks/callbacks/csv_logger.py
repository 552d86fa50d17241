"""CSVLogger: one row per epoch, as Keras writes it."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import IO, Any

from ..callback import Callback
from ..payloads import EpochPayload, RunPayload, TeardownPayload
from ._monitor import rank_path, writes_here


class CSVLogger(Callback):
    """Writes ``on_fit_epoch_end`` logs to ``path``: columns ``epoch`` then sorted keys.

    As in Keras, the columns are fixed by the first epoch (train keys without any ``val_``
    key also get their ``val_`` twins), a missing value is written ``NA``, and each row is
    flushed. The file opens at ``on_train_start`` (``append=True`` keeps earlier rows and
    writes no second header) and closes at ``on_train_end`` or ``teardown``. Only rank 0
    writes unless ``all_ranks=True`` (put ``{rank}`` in the path then).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        separator: str = ",",
        append: bool = False,
        *,
        all_ranks: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.separator = separator
        self.append = append
        self.all_ranks = all_ranks
        self.keys: list[str] | None = None
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._header = True

    def on_train_start(self, payload: RunPayload) -> None:
        if not writes_here(payload.rank, self.all_ranks):
            return
        self._close()
        path = Path(rank_path(self.path, payload.rank))
        path.parent.mkdir(parents=True, exist_ok=True)
        self._header = not (self.append and path.exists() and path.stat().st_size > 0)
        self._file = open(path, "a" if self.append else "w", newline="", encoding="utf-8")
        self.keys = None
        self._writer = None

    def on_fit_epoch_end(self, payload: EpochPayload) -> None:
        if self._file is None or not writes_here(payload.rank, self.all_ranks):
            return
        logs = payload.logs
        if self.keys is None:
            keys = sorted(logs)
            if keys and not any(k.startswith("val_") for k in keys):
                keys += [f"val_{k}" for k in keys]
            self.keys = keys
        if self._writer is None:
            self._writer = csv.writer(self._file, delimiter=self.separator)
            if self._header:
                self._writer.writerow(["epoch", *self.keys])
        self._writer.writerow([payload.epoch, *(logs.get(k, "NA") for k in self.keys)])
        self._file.flush()

    def on_train_end(self, payload: RunPayload) -> None:
        self._close()

    def teardown(self, payload: TeardownPayload) -> None:
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._writer = None

    def __del__(self) -> None:
        self._close()
