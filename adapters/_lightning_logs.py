"""What :class:`~eventhooks.adapters.lightning.LightningCallback` reads off a Lightning
``Trainer``: metrics as floats, learning rates, the run's params, ModelCheckpoint's files."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor


def to_float(value: Any) -> float | None:
    """A number (a one-element tensor included) as a float; None for anything else."""
    try:
        return float(value.item() if isinstance(value, Tensor) or hasattr(value, "item")
                     else value)  # fmt: skip
    except (TypeError, ValueError, RuntimeError):
        return None


def floats(metrics: Mapping[str, Any], keys: Iterable[str] | None = None) -> dict[str, float]:
    """The entries of ``metrics`` that are numbers (only ``keys``, if given), as floats."""
    out = {}
    for key in metrics if keys is None else keys:
        if key in metrics and (number := to_float(metrics[key])) is not None:
            out[key] = number
    return out


def val_name(key: str) -> str:
    """A validation metric's name inside a fit: ``val_*`` (``val/x`` -> ``val_x``)."""
    if key.startswith("val_"):
        return key
    return "val_" + (key[4:] if key.startswith("val/") else key)


def train_logs(
    trainer: pl.Trainer, val_keys: set[str], metrics: Mapping[str, Any] | None = None,
    given: Mapping[str, float] | None = None,
) -> dict[str, float]:  # fmt: skip
    """What the module logged in training (``metrics``: ``trainer.callback_metrics`` unless
    given), as floats, ``given``'s numbers over them; ``loss`` from ``train_loss`` if need be."""
    metrics = trainer.callback_metrics if metrics is None else metrics
    given = given or {}
    logs = {}
    for key, value in metrics.items():
        if key not in val_keys:
            number = given[key] if key in given else to_float(value)
            if number is not None:
                logs[key] = number
    if "loss" not in logs:
        for alias in ("train_loss", "train/loss"):
            if alias in logs:
                logs["loss"] = logs[alias]
                break
    return logs


def batch_logs(trainer: pl.Trainer, val_keys: set[str], outputs: Any) -> dict[str, float]:
    """A training batch's logs at its end: :func:`train_logs`, then :func:`output_logs`.

    Read without ``trainer.callback_metrics``, which recomputes every metric: what it would
    hold now is the values logged on step this batch (their forward caches in Lightning's
    result collection, already synced as ``sync_dist`` asked), over what it kept before.
    Under automatic optimization Lightning hands the hook the loss divided by
    ``accumulate_grad_batches``: it is multiplied back, so ``loss`` is what the step returned."""
    given = output_logs(outputs)
    if "loss" in given and trainer.accumulate_grad_batches != 1 and getattr(
        trainer.lightning_module, "automatic_optimization", False
    ):  # fmt: skip
        given["loss"] *= trainer.accumulate_grad_batches
    try:
        connector: Any = trainer._logger_connector
        results: Any = trainer.fit_loop.epoch_loop._results  # ``trainer._results`` here
        kept: dict[str, Any] = connector._callback_metrics
        if not results.training or connector._first_loop_iter is None:
            raise AttributeError("not in a training batch")
        fresh, index = {}, results.dataloader_idx
        for metric in results.values():
            value, meta = metric._forward_cache, metric.meta
            if (meta.on_step and not metric.has_reset and isinstance(value, Tensor)
                    and meta.dataloader_idx == index):  # fmt: skip
                name, forked = results._forked_name(metric, True)
                fresh[name] = fresh[forked] = value
    except AttributeError:  # not the Lightning this was written for: its public way
        return {**train_logs(trainer, val_keys), **given}
    logs = train_logs(trainer, val_keys, {**kept, **fresh} if fresh else kept, given)
    logs.update(given)
    return logs


def epoch_train_logs(trainer: pl.Trainer, val_keys: set[str]) -> dict[str, float]:
    """The training part of the epoch's logs, as ``callback_metrics`` holds it at
    ``on_train_epoch_end``: each metric's epoch value (its mean...) over its last step's.

    Read from the training loop's own results, so that it is right before the epoch's
    validation too (Lightning validates before it computes the epoch's values: they are
    computed here, synced as ``sync_dist`` asks, on every rank at the same point), and a name
    that validation also logs keeps its training value. Failing that, :func:`train_logs`."""
    try:
        results: Any = trainer.fit_loop.epoch_loop._results
        if not results.training:
            raise AttributeError("not the training results")
        step, epoch = results.metrics(True)["callback"], results.metrics(False)["callback"]
    except (AttributeError, KeyError, TypeError):
        return train_logs(trainer, val_keys)
    return train_logs(trainer, set(), {**step, **epoch})


def logged_in_validation(trainer: pl.Trainer, before: Mapping[str, Any]) -> set[str]:
    """At a validation's end: the names its metrics have in ``callback_metrics`` (``name``,
    ``name_epoch``, ``name/dataloader_idx_1``...), from the validation loop's own results
    (``trainer._results``, the active loop's), every dataloader's; failing that, what changed
    since ``before`` (its start)."""
    results: Any = getattr(trainer, "_results", None)
    try:
        names: set[str] = set()
        for metric in results.values():
            if metric.meta.on_epoch and not metric.has_reset:
                names.update(results._forked_name(metric, False))
        if names:
            return names
    except (AttributeError, KeyError, TypeError):
        pass
    metrics = trainer.callback_metrics
    return {k for k, v in metrics.items()
            if k not in before or to_float(before[k]) != to_float(v)}  # fmt: skip


def learning_rates(trainer: pl.Trainer) -> dict[str, float]:
    """``lr`` (one parameter group in all), else ``lr_0``, ``lr_1``... over every optimizer."""
    rates = [to_float(g.get("lr")) for opt in trainer.optimizers for g in opt.param_groups]
    if len(rates) == 1:
        return {"lr": rates[0]} if rates[0] is not None else {}
    return {f"lr_{i}": r for i, r in enumerate(rates) if r is not None}


def params(trainer: pl.Trainer) -> dict[str, Any]:
    """The run's parameters; ``epochs``/``steps`` also under Keras' names (progress bars)."""
    found: dict[str, Any] = {
        "epochs": trainer.max_epochs, "max_epochs": trainer.max_epochs,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
    }  # fmt: skip
    batches = trainer.num_training_batches
    if isinstance(batches, int) or (isinstance(batches, float) and math.isfinite(batches)):
        found["steps"] = found["steps_per_epoch"] = int(batches)
    return found


def checkpoints(trainer: pl.Trainer, seen: dict[str, int]) -> list[str]:
    """The files Lightning's ModelCheckpoint callbacks wrote (or rewrote) since ``seen``
    (path -> mtime, updated here), existing now."""
    written = []
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        paths = {*callback.best_k_models, callback.best_model_path, callback.last_model_path}
        for path in sorted(p for p in paths if p):
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                continue
            if seen.get(path) != mtime:
                seen[path] = mtime
                written.append(path)
    return written


def context(trainer: pl.Trainer) -> dict[str, Any]:
    """A session's context: the Trainer, and the process' place under DDP."""
    return {"source": trainer, "rank": trainer.global_rank, "world_size": trainer.world_size}


def output_logs(outputs: Any) -> dict[str, float]:
    """A step's returned value as logs: a dict's numbers, or a lone loss as ``loss``."""
    if isinstance(outputs, Mapping):
        return floats(outputs)
    number = to_float(outputs)
    return {} if number is None else {"loss": number}
