"""Metrics out of Ultralytics objects, as ``dict[str, float]`` logs (no ultralytics import).

Keys are Ultralytics' own (the columns of its ``results.csv``): ``train/box_loss``,
``val/box_loss``, ``metrics/mAP50(B)``, ``lr/pg0``, ``fitness``. Two sums are added so that
subscribers written for Keras keys work unchanged: ``loss`` (the sum of the ``train/*``
losses, each a running mean over the epoch's batches) and ``val_loss`` (the sum of the
``val/*`` losses, when the validation ran inside training and computed losses). Epochs
that did not validate (``val=False``) carry no validation keys at all.

Headline metrics also get their Keras-style twin (:data:`TWINS`): classification top-1,
``metrics/accuracy_top1``, is ``val_accuracy`` in a training's epoch and validation logs and
``accuracy`` in a validation of its own (``model.val()``), as Keras' ``evaluate`` names it.
Ultralytics measures no accuracy on training batches, so a training epoch has no
``accuracy``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from types import FrameType
from typing import Any

from eventhooks import Logs


def floats(values: Mapping[str, Any] | None, prefix: str = "") -> Logs:
    """``{prefix + key: float(value)}``, skipping values that are not numbers."""
    logs: Logs = {}
    if not values:
        return logs
    for key, value in values.items():
        try:
            logs[prefix + str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return logs


def _named(values: Any, names: Iterable[str]) -> Mapping[str, Any]:
    """Loss components as a mapping: Ultralytics 8.4 keeps a dict, older versions a tensor."""
    if values is None:
        return {}
    if isinstance(values, Mapping):
        return values
    flat = values.tolist() if hasattr(values, "tolist") else values
    if not isinstance(flat, list):
        flat = [flat]
    return dict(zip(names, flat, strict=False))


#: Ultralytics' headline metrics that have an obvious Keras name: key -> twin (``val_`` inside
#: a training). Detection's mAP has none.
TWINS: dict[str, str] = {"metrics/accuracy_top1": "accuracy"}


def _with_twins(logs: Logs, prefix: str) -> Logs:
    for key, twin in TWINS.items():
        if key in logs:
            logs[prefix + twin] = logs[key]
    return logs


def _with_sum(logs: Logs, prefix: str, total: str) -> Logs:
    parts = [value for key, value in logs.items() if key.startswith(prefix)]
    if parts:
        logs[total] = sum(parts)
    return logs


def train_losses(trainer: Any) -> Logs:
    """The epoch's running-mean losses (``trainer.tloss``) as ``train/<name>``, and ``loss``."""
    names = getattr(trainer, "loss_names", ())
    logs = floats(_named(getattr(trainer, "tloss", None), names), "train/")
    return _with_sum(logs, "train/", "loss")


def learning_rates(trainer: Any) -> Logs:
    """The current learning rate of each optimizer parameter group, as ``lr/pg<i>``."""
    optimizer = getattr(trainer, "optimizer", None)
    groups = getattr(optimizer, "param_groups", None) or ()
    return {f"lr/pg{i}": float(group["lr"]) for i, group in enumerate(groups)}


def fit_logs(trainer: Any, *, validated: bool = True) -> Logs:
    """An epoch's logs: training losses, validation metrics and losses, learning rates, fitness.

    ``validated``: a validation ran in this epoch. If not, ``trainer.metrics`` are the zeros
    ``_setup_train`` fills in (or the last validation's) and ``trainer.fitness`` is None (or
    stale), so metrics, ``val/*``, ``val_loss`` and ``fitness`` are left out, as Keras leaves
    ``val_*`` out of epochs it did not validate.
    """
    logs = train_losses(trainer)
    if validated:
        logs.update(floats(getattr(trainer, "metrics", None)))
        _with_sum(logs, "val/", "val_loss")
        _with_twins(logs, "val_")
    logs.update(floats(getattr(trainer, "lr", None)) or learning_rates(trainer))
    fitness = getattr(trainer, "fitness", None)
    if validated and fitness is not None:
        logs["fitness"] = float(fitness)
    return logs


def val_logs(validator: Any, loss_names: Iterable[str] = ()) -> Logs:
    """A validation's metrics (with ``fitness``); inside training also its mean losses."""
    metrics = getattr(validator, "metrics", None)
    try:
        results = getattr(metrics, "results_dict", None)
    except Exception:  # a metrics object that has not processed anything
        results = None
    logs = floats(results if isinstance(results, Mapping) else None)
    training = bool(getattr(validator, "training", False))
    _with_twins(logs, "val_" if training else "")
    if training:
        batches = len(getattr(validator, "dataloader", None) or ()) or 1
        losses = _named(getattr(validator, "loss", None), loss_names)
        logs.update({f"val/{k}": v / batches for k, v in floats(losses).items()})
        _with_sum(logs, "val/", "val_loss")
    return logs


def export_artifact(exporter: Any) -> str | None:
    """The artifact path ``Exporter.__call__`` is about to return (its local ``f``).

    Ultralytics keeps it in no attribute (``exporter.file`` is the source weights), so it is
    read from the calling frame; ``None`` if that frame is not found.
    """
    frame: FrameType | None = sys._getframe(1)
    for _ in range(16):
        if frame is None:
            return None
        local = frame.f_locals
        if frame.f_code.co_name == "__call__" and local.get("self") is exporter and "f" in local:
            artifact = local["f"]
            if isinstance(artifact, (list, tuple)):
                artifact = artifact[0] if artifact else None
            return os.fspath(artifact) if artifact else None
        frame = frame.f_back
    return None
