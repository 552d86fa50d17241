"""A ready-made PyTorch loop for users without one: ``fit``, ``evaluate``, ``predict``, ``export``.

``fit`` is the instrumented loop of :mod:`._torch_run` written once, so both paths emit the
same moments in the same order; ``predict`` and ``export`` are lifecycle sessions of their
own. Batches are ``(inputs, targets)`` pairs (``predict`` also takes bare inputs); ``metrics``
maps names to ``fn(outputs, targets) -> scalar``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from eventhooks import EventBus
from eventhooks.lifecycle import Export, Prediction

from ._torch_logs import length, where
from ._torch_run import Run

Metric = Callable[[Any, Any], Any]
ExportFormat = Literal["torch.export", "torchscript"]


def _device_of(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(_to(item, device) for item in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(item, device) for item in batch)
    if isinstance(batch, Mapping):
        return {key: _to(value, device) for key, value in batch.items()}
    return batch


def _pair(batch: Any, where_: str) -> tuple[Any, Any]:
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        raise TypeError(f"{where_}: batches must be (inputs, targets) pairs, got {type(batch)}")
    return batch[0], batch[1]


def _measure(
    loss: torch.Tensor, outputs: Any, targets: Any, metrics: Mapping[str, Metric] | None
) -> dict[str, Any]:
    logged: dict[str, Any] = {"loss": loss.detach()}
    for name, fn in (metrics or {}).items():
        logged[name] = fn(outputs, targets)
    return logged


def _set_epoch(loader: Iterable[Any], epoch: int) -> None:
    """Reshuffle a DistributedSampler differently each epoch, as PyTorch asks users to do."""
    set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    train_loader: Iterable[Any],
    *,
    epochs: int,
    bus: EventBus,
    val_loader: Iterable[Any] | None = None,
    metrics: Mapping[str, Metric] | None = None,
    scheduler: Any = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    sync_logs: bool = False,
    initial_epoch: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` and emit every training moment; returns the history (logs by name).

    ``scheduler`` is stepped once per epoch, after validation, as in PyTorch's own recipes
    (``ReduceLROnPlateau`` with ``val_loss``, or ``loss`` without validation); the change is
    announced between the epochs (``on_params_update`` after ``on_fit_epoch_end``), the last
    epoch's included. ``checkpoint_dir`` saves ``last.pt`` every epoch (``on_model_save``).
    ``sync_logs`` averages epoch logs over torch.distributed ranks.
    A stop request (``bus.request_stop()``) ends training after the current batch, or after
    the epoch under torch.distributed. ``device`` is where batches are moved (default: the
    model's device; the model itself is not moved). A ``DistributedSampler`` gets
    ``set_epoch(epoch)`` each epoch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit(): epochs must be an int >= 0, got {epochs!r}")
    run = Run(bus, optimizer, model=model, checkpoint_dir=checkpoint_dir, sync_logs=sync_logs)
    run.params["epochs"] = epochs
    steps = length(train_loader)  # known at on_pretrain_routine_start, for progress bars
    if steps is not None:
        run.params["steps"] = steps
    target = torch.device(device) if device is not None else _device_of(model)
    with run:
        for epoch in run.epochs(range(initial_epoch, epochs)):
            _set_epoch(train_loader, epoch)
            model.train()
            for batch in run.batches(train_loader):
                inputs, targets = _pair(_to(batch, target), "fit(train_loader)")
                optimizer.zero_grad()
                outputs = model(inputs)
                loss = loss_fn(outputs, targets)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                run.log(**_measure(loss, outputs, targets, metrics))
            if val_loader is not None:
                _validate(run, model, loss_fn, val_loader, metrics, target)
            if scheduler is not None:
                _step_scheduler(scheduler, run)
    return run.history


def _step_scheduler(scheduler: Any, run: Run) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        monitored = run.val_logs.get("loss", run.train_logs.get("loss"))
        if monitored is not None:
            scheduler.step(monitored)
    else:
        scheduler.step()


def _validate(
    run: Run,
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    loader: Iterable[Any],
    metrics: Mapping[str, Metric] | None,
    device: torch.device,
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in run.validation(loader):
                inputs, targets = _pair(_to(batch, device), "evaluate(loader)")
                outputs = model(inputs)
                run.log(**_measure(loss_fn(outputs, targets), outputs, targets, metrics))
    finally:
        model.train(was_training)
    return dict(run.val_logs)


def evaluate(
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    loader: Iterable[Any],
    *,
    bus: EventBus,
    metrics: Mapping[str, Metric] | None = None,
    sync_logs: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` (``on_val_start`` ... ``on_val_end``); returns the mean metrics."""
    run = Run(bus, model=model, sync_logs=sync_logs)
    target = torch.device(device) if device is not None else _device_of(model)
    return _validate(run, model, loss_fn, loader, metrics, target)


def predict(
    model: torch.nn.Module,
    loader: Iterable[Any],
    *,
    bus: EventBus,
    postprocess: Callable[[Any], Any] | None = None,
    device: str | torch.device | None = None,
) -> Any:
    """Run ``model`` over ``loader`` and emit the prediction moments; returns the outputs.

    Batches are inputs or ``(inputs, ...)`` tuples. ``postprocess`` turns raw outputs into
    what the caller wants (``on_predict_postprocess_end`` carries its result). Outputs that
    are all tensors are concatenated; otherwise a list of per-batch outputs is returned.
    """
    target = torch.device(device) if device is not None else _device_of(model)
    results: list[Any] = []
    was_training = model.training
    model.eval()
    rank, world_size = where()
    try:
        with Prediction(bus, source=model, rank=rank, world_size=world_size) as session:
            with torch.inference_mode():
                for batch in loader:
                    session.batch_start()
                    inputs = _to(batch, target)
                    if isinstance(inputs, (list, tuple)):
                        inputs = inputs[0]
                    outputs = model(inputs)
                    if postprocess is not None:
                        outputs = postprocess(outputs)
                    session.postprocess_end(outputs)
                    session.batch_end(outputs)
                    results.append(outputs)
    finally:
        model.train(was_training)
    if results and all(isinstance(r, torch.Tensor) for r in results):
        return torch.cat(results)
    return results


def export(
    model: torch.nn.Module,
    example_inputs: tuple[Any, ...],
    path: str | os.PathLike[str],
    *,
    bus: EventBus,
    format: ExportFormat = "torch.export",
    dynamic_batch: bool = True,
) -> Path:
    """Export ``model`` (``on_export_start``/``on_export_end``); returns the artifact's path.

    ``"torch.export"`` writes a ``.pt2`` program (``torch.export.load(path).module()``);
    ``"torchscript"`` a traced module (``torch.jit.load``; deprecated by PyTorch, kept for
    runtimes that still need it). ``torch.export`` fixes every size of the example inputs
    unless told otherwise: ``dynamic_batch`` (default) lets the first dimension of each tensor
    input vary (use an example batch of 2 or more: PyTorch specialises sizes 0 and 1).
    """
    if format not in ("torch.export", "torchscript"):
        raise ValueError(
            f"export(): format must be 'torch.export' or 'torchscript', got {format!r}"
        )
    if not isinstance(example_inputs, tuple):
        raise TypeError("export(): example_inputs must be a tuple of the model's positional inputs")
    rank, world_size = where()
    target = Path(path)
    session = Export(bus, format=format, source=model, rank=rank, world_size=world_size).open()
    inner = getattr(model, "module", model)  # look through DistributedDataParallel
    was_training = inner.training
    inner.eval()
    try:
        if format == "torch.export":
            dims = tuple(
                {0: torch.export.Dim.AUTO}
                if dynamic_batch and isinstance(a, torch.Tensor) and a.dim() > 0
                else None
                for a in example_inputs
            )
            program = torch.export.export(inner, example_inputs, dynamic_shapes=dims)
            torch.export.save(program, target)
        else:
            traced = torch.jit.trace(inner, example_inputs)  # type: ignore[no-untyped-call]
            traced.save(str(target))
    finally:
        inner.train(was_training)
    session.end(target)
    return target
