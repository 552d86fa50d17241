"""ProgressBar: tqdm bars for epochs and batches, with live metrics; silent off a terminal."""

from __future__ import annotations

import importlib.util
import sys
from typing import IO, Any

from ..callback import Callback
from ..payloads import BatchPayload, EpochPayload, RunPayload, TeardownPayload
from ._monitor import writes_here


def _fmt(logs: dict[str, float]) -> dict[str, str]:
    return {k: f"{v:.4g}" for k, v in logs.items()}


class ProgressBar(Callback):
    """An epoch bar and, below it, a bar over the current epoch's batches.

    Totals come from ``payload.params`` (``epochs``, ``steps``) where the framework gives
    them. ``disable=None`` (default) shows the bars only when ``file`` (stderr) is a
    terminal, so logs of batch jobs stay clean; ``mininterval`` (seconds) limits redraws.
    tqdm is imported only when a bar is shown: eventhooks' core does not need it
    (``pip install 'eventhooks[cli]'``). Only rank 0 draws unless ``all_ranks=True``.
    """

    def __init__(
        self,
        *,
        file: IO[str] | None = None,
        disable: bool | None = None,
        leave: bool = True,
        mininterval: float = 0.1,
        all_ranks: bool = False,
    ) -> None:
        self.file = file
        self.disable = disable
        self.leave = leave
        self.mininterval = mininterval
        self.all_ranks = all_ranks
        self._epochs: Any = None
        self._batches: Any = None
        self._params: dict[str, Any] = {}
        if self.disable is False and importlib.util.find_spec("tqdm") is None:
            raise ImportError("ProgressBar needs tqdm: pip install 'eventhooks[cli]'")

    @property
    def enabled(self) -> bool:
        if self.disable is not None:
            return not self.disable
        stream = self.file if self.file is not None else sys.stderr
        isatty = getattr(stream, "isatty", None)
        return bool(isatty and isatty())

    def _tqdm(self, **kwargs: Any) -> Any:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError("ProgressBar needs tqdm: pip install 'eventhooks[cli]'") from None
        return tqdm(file=self.file, dynamic_ncols=True, mininterval=self.mininterval, **kwargs)

    def on_train_start(self, payload: RunPayload) -> None:
        self._close()
        if not (self.enabled and writes_here(payload.rank, self.all_ranks)):
            return
        self._params = payload.params or {}
        self._epochs = self._tqdm(
            total=self._params.get("epochs"), desc="Epochs", unit="epoch", leave=self.leave,
            initial=payload.epoch or 0, position=0,
        )  # fmt: skip

    def on_train_epoch_start(self, payload: EpochPayload) -> None:
        if self._epochs is None:
            return
        if self._batches is not None:
            self._batches.close()
        # Loops that learn their length late (an instrumented PyTorch loop knows ``steps``
        # only when the epoch's first loop starts) send fresher params with each epoch.
        self._params = {**self._params, **(payload.params or {})}
        epochs = self._params.get("epochs")
        # Numbered from 0 as the payloads, the CSV and the plots; the count says how far along.
        of = f" ({payload.epoch + 1}/{epochs})" if epochs else ""
        self._batches = self._tqdm(
            total=self._params.get("steps"), desc=f"epoch {payload.epoch}{of}",
            unit="batch", leave=False, position=1,
        )  # fmt: skip

    def on_train_batch_end(self, payload: BatchPayload) -> None:
        if self._batches is not None:
            self._batches.set_postfix(_fmt(payload.logs), refresh=False)
            self._batches.update(1)

    def on_fit_epoch_end(self, payload: EpochPayload) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None
        if self._epochs is not None:
            self._epochs.set_postfix(_fmt(payload.logs), refresh=False)
            self._epochs.update(1)

    def on_train_end(self, payload: RunPayload) -> None:
        self._close()

    def teardown(self, payload: TeardownPayload) -> None:
        self._close()

    def _close(self) -> None:
        for bar in (self._batches, self._epochs):
            if bar is not None:
                bar.close()
        self._batches = self._epochs = None
