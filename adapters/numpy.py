"""The NumPy reference trainer: a real MLP classifier that emits all 25 lifecycle moments.

It needs nothing but NumPy, so it is what the demo runs and what every built-in subscriber is
tested under. Its API is Keras' (``fit``/``evaluate``/``predict``, ``get_weights``,
``stop_training``, logs keyed ``loss``/``accuracy``/``val_loss``/``val_accuracy``); its events
follow the canonical order of PRODUCT.md §1.

Decisions worth knowing:

* **The order is the lifecycle's** (:mod:`eventhooks.lifecycle`): ``fit`` is a
  :class:`~eventhooks.lifecycle.Run`, ``evaluate`` a ``Validation``, ``predict`` a
  ``Prediction``, ``export`` an ``Export``. The trainer says what happened; the lifecycle
  emits it in the canonical order (PRODUCT.md §1), keeps ``epoch``/``batch``/``step`` and ends
  the fit with one ``teardown``. It is tested on ``EventBus(check_order=True)``.
* **Stopping** (``bus.request_stop()`` or ``trainer.stop_training = True``; the two are kept
  as one: setting the attribute requests the run's stop, a request sets the attribute) is
  checked after every training batch and before every epoch. A stop mid-epoch ends the batch
  loop after the current batch, then *closes the epoch as Keras does*:
  ``on_train_epoch_end``, validation (when ``validation_data`` is given), the checkpoint,
  ``on_fit_epoch_end``; then ``on_train_end`` and ``teardown``. Every epoch thus reports the
  same log keys, so a CSV logger or a History never sees a ragged last row. ``evaluate`` and
  ``predict`` ignore stop requests (a request is kept until the next run opens, as Keras
  keeps ``stop_training``).
* **Saving**: ``save(path)`` itself emits ``on_model_save``; ``fit(checkpoint=path)`` saves
  between validation and ``on_fit_epoch_end``, where the canonical order puts it. Inside a
  fit, a save is the run's ``on_model_save`` where the order has room for one (after the
  epoch's validation, or after ``on_fit_epoch_end``: a ``ModelCheckpoint``); a save by a
  subscriber anywhere else (mid-epoch, between the epoch's training and its validation, at
  ``on_train_end``) is a session of its own, as an ``evaluate()`` by a subscriber is: it
  does not disturb the fit.
* **Zero-grad and step** follow the classic PyTorch idiom ``zero_grad(); backward(); step()``:
  ``on_before_zero_grad`` fires before the previous gradients are dropped and
  ``optimizer_step`` after the weights were updated, when ``trainer.gradients`` holds the
  gradients of this very step. ``step`` counts the trainer's optimizer steps over every fit
  (``trainer.iterations``, restored by :func:`load`).
* **Learning rate**: the run's first rate is announced right after ``on_train_start``
  (``on_params_update``, ``epoch`` None). With ``lr_schedule(epoch) -> lr`` the rate of
  epoch ``e`` is ``lr_schedule(e)``; it is set between epochs, after ``on_fit_epoch_end`` of
  epoch ``e - 1`` (where PyTorch's epoch-level ``scheduler.step()`` goes), and announced there by
  ``on_params_update`` (``batch`` None); a run that stops sets no rate for an epoch it will
  not train. A rate changed by anyone else (``trainer.lr = ...`` in a subscriber) is announced
  after the next optimizer step, or at the epoch's end if none comes first; at an epoch's end
  the schedule has the last word, as Keras' ``LearningRateScheduler`` has.
* **Failures**: whatever raises inside ``fit`` (a subscriber, the schedule, Ctrl-C) is
  announced by ``teardown(error=...)`` and then re-raised unchanged (a teardown subscriber
  failing then only adds a note to it: ``bus.emit_teardown``). A subscriber error
  reaches the caller as the bus raises it (:class:`eventhooks.SubscriberError`).
* **Bad arguments** are such failures too: ``fit`` opens the run
  (``on_pretrain_routine_start``, whose ``params`` are the arguments as given, ``steps``
  still None), checks its arguments and data in the pretrain routine, and a refusal ends
  the run with ``teardown(error=...)`` before any weight is built. ``evaluate``,
  ``predict`` and ``export`` are sessions without a teardown: they check their arguments
  (for ``export``, that the path can be a file) before their first event, so a refused
  call emits nothing.
* **Hot path**: the lifecycle emits nothing nobody hears, and builds a batch's logs (the
  trainer hands them over as a function) only when a subscriber will get them,
  so with nobody listening (or only an ``every=50`` subscriber, on the other 49 batches) no
  logs dict is built and nothing is validated.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eventhooks import EventBus, events
from eventhooks.lifecycle import Export, Prediction, Run, Validation

from . import _numpy_io as io
from . import _numpy_mlp as mlp
from ._numpy_mlp import Array

__all__ = ["NumpyTrainer", "load"]

History = dict[str, list[float]]
"""Keras' ``History.history``: each metric's value per epoch."""

_DTYPES = ("float32", "float64")


class NumpyTrainer:
    """A multilayer perceptron classifier trained by mini-batch SGD or Adam, in NumPy.

    ``hidden`` are the widths of the ReLU layers; the output layer is a softmax over
    ``n_classes`` (inferred from the labels of the first ``fit`` when not given). ``seed``
    fixes the initial weights and the shuffling. ``lr_schedule(epoch)`` returns the learning
    rate of an epoch. ``bus`` is where the events go (a private :class:`EventBus` if None).
    """

    def __init__(
        self,
        *,
        bus: EventBus | None = None,
        hidden: Sequence[int] = (32,),
        seed: int = 0,
        lr: float = 0.001,
        optimizer: str = "adam",
        momentum: float = 0.0,
        lr_schedule: Callable[[int], float] | None = None,
        n_classes: int | None = None,
        dtype: str = "float32",
    ) -> None:
        hidden = tuple(hidden)
        if not all(isinstance(h, int | np.integer) and h > 0 for h in hidden):
            raise ValueError(f"hidden= must be positive layer widths, got {hidden!r}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer= must be 'adam' or 'sgd', got {optimizer!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype= must be 'float32' or 'float64', got {dtype!r}")
        if n_classes is not None and n_classes < 2:
            raise ValueError(f"n_classes= must be at least 2, got {n_classes!r}")
        self.bus = bus if bus is not None else EventBus()
        self.hidden = tuple(int(h) for h in hidden)
        self.seed = seed
        self.optimizer_name = optimizer
        self.momentum = momentum
        self.lr_schedule = lr_schedule
        self.n_classes = n_classes
        self.dtype = dtype
        self.input_dim: int | None = None
        #: Set True (by a subscriber, say) to stop after the current batch, as in Keras.
        self.stop_training = False
        #: The last ``fit``'s history, as Keras' ``History.history``.
        self.history: History = {}
        #: Optimizer steps taken so far, over every ``fit`` (Keras' ``optimizer.iterations``).
        self.iterations = 0
        #: The gradients of the latest optimizer step (None between zero-grad and backward).
        self.gradients: list[Array] | None = None
        self._lr = _check_lr(lr, "lr=")
        self._announced_lr = self._lr
        self._weights: list[Array] = []
        self._optimizer: mlp.Optimizer | None = None
        seeds = np.random.SeedSequence(seed).spawn(2)
        self._init_rng = np.random.default_rng(seeds[0])
        self._shuffle_rng = np.random.default_rng(seeds[1])
        self._epoch: int | None = None  # the epoch under way or last completed
        self._epoch_logs: dict[str, float] = {}  # the last completed epoch's logs
        self._run: Run | None = None  # the fit under way

    # -- model ------------------------------------------------------------------------------

    @property
    def built(self) -> bool:
        return bool(self._weights)

    @property
    def lr(self) -> float:
        """The learning rate; setting it takes effect at the next optimizer step."""
        return self._optimizer.lr if self._optimizer is not None else self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _check_lr(value, "lr")
        if self._optimizer is not None:
            self._optimizer.lr = self._lr

    @property
    def config(self) -> dict[str, Any]:
        """The architecture, as stored in saved and exported artifacts."""
        return {
            "input_dim": self.input_dim,
            "hidden": list(self.hidden),
            "n_classes": self.n_classes,
            "activation": "relu",
            "dtype": self.dtype,
        }

    def build(self, input_dim: int, n_classes: int) -> None:
        """Create the weights (done by the first ``fit``; call it to predict untrained)."""
        if input_dim < 1 or n_classes < 2:
            raise ValueError(
                f"build needs input_dim >= 1 and n_classes >= 2, got {input_dim}, {n_classes}"
            )
        self.input_dim, self.n_classes = int(input_dim), int(n_classes)
        sizes = mlp.layer_sizes(self.input_dim, self.hidden, self.n_classes)
        self._weights = mlp.init_weights(sizes, self._init_rng, self.dtype)

    def get_weights(self) -> list[Array]:
        """Copies of the weights, ``[W0, b0, W1, b1, ...]`` (empty before the model is built)."""
        return [w.copy() for w in self._weights]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Replace the weights (copied); an unbuilt trainer takes its sizes from them."""
        arrays = [np.asarray(w) for w in weights]
        expected = 2 * (len(self.hidden) + 1)
        if len(arrays) != expected:
            raise ValueError(
                f"set_weights: expected {expected} arrays for hidden={self.hidden}, "
                f"got {len(arrays)}"
            )
        if self.built:
            assert self.input_dim is not None and self.n_classes is not None
            sizes = mlp.layer_sizes(self.input_dim, self.hidden, self.n_classes)
        else:
            if arrays[0].ndim != 2 or arrays[-1].ndim != 1:
                raise ValueError("set_weights: the first array must be a 2-D kernel")
            sizes = mlp.layer_sizes(arrays[0].shape[0], self.hidden, arrays[-1].shape[0])
        for i, (array, shape) in enumerate(zip(arrays, mlp.weight_shapes(sizes), strict=True)):
            if array.shape != shape:
                raise ValueError(
                    f"set_weights: array {i} has shape {array.shape}, expected {shape}"
                )
            if not np.issubdtype(array.dtype, np.number):
                raise ValueError(f"set_weights: array {i} is not numeric ({array.dtype})")
        self.input_dim, self.n_classes = sizes[0], sizes[-1]
        self._weights = [a.astype(self.dtype, copy=True) for a in arrays]

    # -- training ---------------------------------------------------------------------------

    def fit(
        self,
        x: Any,
        y: Any,
        *,
        epochs: int = 1,
        batch_size: int = 32,
        validation_data: tuple[Any, Any] | None = None,
        validation_batch_size: int | None = None,
        shuffle: bool = True,
        initial_epoch: int = 0,
        checkpoint: str | os.PathLike[str] | None = None,
        verbose: int | str = 0,
    ) -> History:
        """Train, emitting the FIT sequence; returns the Keras-like history dict.

        Epochs run from ``initial_epoch`` to ``epochs - 1`` (Keras' convention). With
        ``checkpoint`` the weights are saved there after each epoch's validation (the same
        file each time, like Ultralytics' ``last.pt``), emitting ``on_model_save``.
        ``verbose`` (Keras' 0, 1, 2 or ``"auto"``) only reaches subscribers as
        ``params["verbose"]``: the trainer prints nothing itself, a bridged Keras
        ``ProgbarLogger`` prints a bar (1) or a line per epoch (2). 0 by default, because
        here, unlike in Keras, nobody adds a progress bar unasked.

        A bad argument fails inside the run, as any failure does: ``on_pretrain_routine_start``,
        then ``teardown`` carrying the error, which then reaches the caller unchanged.
        """
        # Until the pretrain routine has checked them, params are the arguments as given and
        # the number of steps is unknown (None, as Keras has it for data of unknown length).
        params: dict[str, Any] = {
            "verbose": verbose, "epochs": epochs, "steps": None, "batch_size": batch_size,
        }  # fmt: skip
        self.stop_training = False
        # This run's, not the previous fit's: a run that ends (or fails) before its first
        # epoch reports no epoch and no logs.
        self.history, self._epoch, self._epoch_logs = {}, None, {}
        try:
            with Run(self.bus, source=self, params=params) as run:
                self._run = run
                args = self._check_fit_args(
                    x, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data,
                    validation_batch_size=validation_batch_size, initial_epoch=initial_epoch,
                    checkpoint=checkpoint, verbose=verbose,
                )  # fmt: skip
                self._prepare(args.x, args.y, args.val, args.initial_epoch)
                # step counts the trainer's optimizer steps over every fit, as Keras does.
                run.initial_epoch, run.step = args.initial_epoch, self.iterations
                run.ready(params=args.params)
                run.first_hyperparams = self._first_rate  # announced at the run's start
                run.train_start()
                self._stopping(run)
                for epoch in run.epochs(args.epochs):
                    self._train_epoch(run, epoch, args, shuffle)
        finally:
            self._run = None
        return self.history

    def _check_fit_args(
        self,
        x: Any,
        y: Any,
        *,
        epochs: Any,
        batch_size: Any,
        validation_data: Any,
        validation_batch_size: Any,
        initial_epoch: Any,
        checkpoint: Any,
        verbose: Any,
    ) -> _FitArgs:
        """``fit``'s arguments checked and converted, or the error that refuses them."""
        if verbose not in (0, 1, 2, "auto") or isinstance(verbose, bool):
            raise ValueError(f"fit: verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
        xs, ys = self._check_data(x, y, "x", "y", labels=True)
        if not len(xs):
            raise ValueError("fit: x is empty")
        batch_size = _check_count(batch_size, "batch_size", 1)
        epochs = _check_count(epochs, "epochs", 0)
        initial_epoch = _check_count(initial_epoch, "initial_epoch", 0)
        val: tuple[Array, Array] | None = None
        if validation_data is not None:
            if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
                raise ValueError("fit: validation_data must be a pair (x_val, y_val)")
            x_val, y_val = validation_data
            val = self._check_data(x_val, y_val, "x_val", "y_val", labels=True)
            if not len(val[0]):
                raise ValueError("fit: validation_data is empty")
            if val[0].shape[1] != xs.shape[1]:
                raise ValueError(
                    f"fit: x_val has {val[0].shape[1]} features but x has {xs.shape[1]}"
                )
        val_batch = _check_count(validation_batch_size or batch_size, "validation_batch_size", 1)
        # Checked now, not at the first save, after an epoch of training.
        target = None if checkpoint is None else io.destination(checkpoint, "fit: checkpoint")
        steps = math.ceil(len(xs) / batch_size)
        params = {"verbose": verbose, "epochs": epochs, "steps": steps, "batch_size": batch_size}
        return _FitArgs(xs, ys, val, epochs, initial_epoch, batch_size, val_batch, target, params)

    def _prepare(
        self, x: Array, y: Array, val: tuple[Array, Array] | None, initial_epoch: int
    ) -> None:
        """The pretrain routine: build the weights (first fit) and the optimizer.

        The data is checked against the model first: a refused fit builds nothing.
        """
        labels = int(y.max()) + 1 if val is None else max(int(y.max()), int(val[1].max())) + 1
        n_classes = self.n_classes or max(labels, 2)
        if self.built and x.shape[1] != self.input_dim:
            raise ValueError(f"fit: x has {x.shape[1]} features, the model takes {self.input_dim}")
        if labels > n_classes:
            raise ValueError(f"fit: label {labels - 1} is out of range for n_classes={n_classes}")
        if not self.built:
            self.build(x.shape[1], n_classes)
        if self._optimizer is None:
            self._optimizer = mlp.make_optimizer(self.optimizer_name, self._lr, self.momentum)
        if self.lr_schedule is not None:
            # The run's first rate: announced at the run's start (_first_rate).
            self._scheduled_lr(initial_epoch)
            self._announced_lr = self.lr

    def _stopping(self, run: Run) -> bool:
        """Keras' ``stop_training`` and the run's stop request, kept as one."""
        if run.stop_requested:
            self.stop_training = True
        elif self.stop_training:
            run.request_stop("trainer.stop_training was set")
        return self.stop_training

    def _scheduled_lr(self, epoch: int) -> None:
        assert self.lr_schedule is not None
        self.lr = _check_lr(self.lr_schedule(epoch), f"lr_schedule({epoch})")

    def _first_rate(self) -> dict[str, float]:
        self._announced_lr = self.lr
        return {"lr": self.lr}

    def _announce_lr(self, run: Run) -> None:
        """``on_params_update`` if the rate changed since it was last announced."""
        if self.lr != self._announced_lr:
            self._announced_lr = self.lr
            run.params_update({"lr": self.lr})

    def _train_epoch(self, run: Run, epoch: int, args: _FitArgs, shuffle: bool) -> None:
        """EPOCH := train_epoch_start BATCH* train_epoch_end VAL? save? fit_epoch_end lr?"""
        x, y, batch_size = args.x, args.y, args.batch_size
        optimizer = self._optimizer
        assert optimizer is not None
        self._epoch = epoch
        order = self._shuffle_rng.permutation(len(x)) if shuffle else None
        mean = _RunningMean()
        for b in range(math.ceil(len(x) / batch_size)):
            rows: Any = slice(b * batch_size, (b + 1) * batch_size)
            if order is not None:
                rows = order[rows]
            xb, yb = x[rows], y[rows]
            run.batch_start()
            run.zero_grad()
            self.gradients = None
            # Read each step: a subscriber's set_weights() swaps in a new list.
            weights = self._weights
            loss, right, grads = mlp.loss_and_grads(weights, xb, yb)
            self.gradients = grads
            optimizer.apply(weights, grads)
            run.optimizer_step()
            self.iterations += 1
            if optimizer.lr != self._announced_lr:  # set by a subscriber since the last step
                self._announce_lr(run)
            mean.add(loss, right, len(yb))
            run.batch_end(mean.logs)
            if self._stopping(run):
                break
        logs = mean.logs()
        run.train_epoch_end(logs)
        logs = dict(logs)
        if args.val is not None:
            with run.validation() as val:
                val_logs = self._validate(val, args.val[0], args.val[1], args.val_batch)
            logs.update({f"val_{k}": v for k, v in val_logs.items()})
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)
        self._epoch_logs = logs
        if args.checkpoint is not None:
            run.model_save(self._write_checkpoint(args.checkpoint), dict(logs))
        run.epoch_end(logs)
        stopping = self._stopping(run)  # run.epochs() ends the fit on it
        if self.lr_schedule is not None and epoch + 1 < args.epochs and not stopping:
            self._scheduled_lr(epoch + 1)
        self._announce_lr(run)

    def _validate(self, val: Validation, x: Array, y: Array, batch_size: int) -> dict[str, float]:
        """VAL := val_start (val_batch_start val_batch_end)* val_end; returns the metrics.

        Keys are unprefixed (``loss``, ``accuracy``) as in Keras' ``on_test_*`` hooks; ``fit``
        adds the ``val_`` prefix for the epoch logs.
        """
        mean = _RunningMean()
        for b in range(math.ceil(len(x) / batch_size)):
            val.batch_start()
            rows = slice(b * batch_size, (b + 1) * batch_size)
            loss, right = mlp.loss_and_correct(self._weights, x[rows], y[rows])
            mean.add(loss, right, len(y[rows]))
            val.batch_end(mean.logs)
        logs = mean.logs()
        val.end(logs)
        return logs

    # -- evaluation and prediction ----------------------------------------------------------

    def evaluate(
        self, x: Any, y: Any, *, batch_size: int = 32, return_dict: bool = False
    ) -> list[float] | dict[str, float]:
        """Loss and accuracy, emitting the VAL sequence (Keras' ``on_test_*``) on its own."""
        xs, ys = self._check_data(x, y, "x", "y", labels=True)
        self._check_ready(xs, ys, "evaluate")
        if not len(xs):
            raise ValueError("evaluate: x is empty")
        batch_size = _check_count(batch_size, "batch_size", 1)
        steps = math.ceil(len(xs) / batch_size)
        params = {"verbose": 0, "epochs": 1, "steps": steps, "batch_size": batch_size}
        with Validation(self.bus, source=self, params=params) as val:
            logs = self._validate(val, xs, ys, batch_size)
        return logs if return_dict else [logs["loss"], logs["accuracy"]]

    def predict(self, x: Any, *, batch_size: int = 32) -> Array:
        """Class probabilities, emitting the PREDICT sequence.

        ``on_predict_postprocess_end`` carries the predicted classes of the batch (the
        post-processing of probabilities), ``on_predict_batch_end`` the probabilities.
        """
        xs, _ = self._check_data(x, None, "x", None, labels=False)
        self._check_ready(xs, None, "predict")
        assert self.n_classes is not None
        batch_size = _check_count(batch_size, "batch_size", 1)
        steps = math.ceil(len(xs) / batch_size)
        params = {"verbose": 0, "epochs": 1, "steps": steps, "batch_size": batch_size}
        listening = self.bus.listening
        outputs = []
        with Prediction(self.bus, source=self, params=params) as prediction:
            for b in range(steps):
                prediction.batch_start()
                probs = mlp.predict_proba(self._weights, xs[b * batch_size : (b + 1) * batch_size])
                outputs.append(probs)
                if listening(events.on_predict_postprocess_end):
                    prediction.postprocess_end(probs.argmax(axis=1))
                prediction.batch_end(probs)
        if not outputs:
            return np.zeros((0, self.n_classes), dtype=self.dtype)
        return np.concatenate(outputs)

    # -- artifacts --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a checkpoint (npz: architecture, weights, progress) and emit ``on_model_save``.

        The file is written at exactly ``path``, whatever its suffix.
        """
        self._check_ready(None, None, "save")
        target = self._write_checkpoint(path)
        run = self._run
        if run is not None and _has_room_for_a_save(run):
            run.model_save(target, dict(self._epoch_logs))
        elif self.bus.listening(events.on_model_save):  # a session of its own
            self.bus.emit(events.on_model_save, source=self, path=target, epoch=self._epoch,
                          logs=dict(self._epoch_logs))  # fmt: skip
        return target

    def _write_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        state = {
            "iterations": self.iterations, "epoch": self._epoch, "lr": self.lr,
            "optimizer": self.optimizer_name, "momentum": self.momentum,
        }  # fmt: skip
        return io.write(path, "npz", "checkpoint", self.config, self._weights, state)

    def export(self, path: str | os.PathLike[str], *, format: str | None = None) -> Path:
        """Write an inference artifact (``json`` or ``npz``, by ``format`` or by suffix).

        Emits ``on_export_start`` (format) and ``on_export_end`` (format and path). Read it
        back with :func:`load`.
        """
        self._check_ready(None, None, "export")
        # Every check before on_export_start: an EXPORT session has no teardown, so a refused
        # export emits nothing rather than a start without an end.
        fmt = io.format_of(io.destination(path, "export: path"), format)
        with Export(self.bus, format=fmt, source=self) as export:
            target = export.path = io.write(path, fmt, "export", self.config, self._weights)
        return target

    # -- input checks -----------------------------------------------------------------------

    def _check_data(
        self, x: Any, y: Any, xname: str, yname: str | None, *, labels: bool
    ) -> tuple[Array, Array]:
        xs = np.asarray(x)
        if xs.ndim != 2:
            raise ValueError(f"{xname} must be 2-D (samples, features), got shape {xs.shape}")
        if not np.issubdtype(xs.dtype, np.number) or np.issubdtype(xs.dtype, np.complexfloating):
            raise ValueError(f"{xname} must be real numbers, got dtype {xs.dtype}")
        xs = xs.astype(self.dtype, copy=False)
        if not labels:
            return xs, np.zeros(0, dtype=np.int64)
        ys = np.asarray(y)
        if ys.ndim == 2 and ys.shape[1] == 1:
            ys = ys[:, 0]
        if ys.ndim != 1:
            raise ValueError(
                f"{yname} must be 1-D integer class labels, got shape {ys.shape} "
                "(for one-hot labels pass y.argmax(axis=1))"
            )
        if len(ys) != len(xs):
            raise ValueError(f"{xname} has {len(xs)} samples but {yname} has {len(ys)}")
        if len(ys) and not np.issubdtype(ys.dtype, np.integer):
            if not np.issubdtype(ys.dtype, np.floating) or not np.all(ys == np.round(ys)):
                raise ValueError(f"{yname} must be integer class labels, got dtype {ys.dtype}")
            if not np.all(np.isfinite(ys)):  # inf == round(inf), and casts to a huge label
                bad = ys[~np.isfinite(ys)][0]
                raise ValueError(f"{yname} must be integer class labels, got {bad}")
        ys = ys.astype(np.int64)
        if len(ys) and ys.min() < 0:
            raise ValueError(f"{yname} has a negative label ({ys.min()})")
        return xs, ys

    def _check_ready(self, x: Array | None, y: Array | None, what: str) -> None:
        if not self.built:
            raise RuntimeError(
                f"{what}: the model has no weights yet; call fit(), build() or set_weights()"
            )
        if x is not None and x.shape[1] != self.input_dim:
            raise ValueError(f"{what}: x has {x.shape[1]} features, the model takes "
                             f"{self.input_dim}")  # fmt: skip
        if y is not None and len(y) and self.n_classes is not None and y.max() >= self.n_classes:
            raise ValueError(
                f"{what}: label {int(y.max())} is out of range for n_classes={self.n_classes}"
            )


@dataclass(frozen=True, slots=True)
class _FitArgs:
    """``fit``'s arguments once checked: arrays in the trainer's dtype, counts as ints."""

    x: Array
    y: Array
    val: tuple[Array, Array] | None
    epochs: int
    initial_epoch: int
    batch_size: int
    val_batch: int
    checkpoint: Path | None
    params: dict[str, Any]


class _RunningMean:
    """Loss and accuracy averaged over the samples seen so far: Keras' batch and epoch logs."""

    __slots__ = ("correct", "seen", "total")

    def __init__(self) -> None:
        self.seen = self.correct = 0
        self.total = 0.0

    def add(self, loss: float, correct: int, n: int) -> None:
        """One batch of ``n`` samples, its mean ``loss`` and how many it got ``correct``."""
        self.seen += n
        self.total += loss * n
        self.correct += correct

    def logs(self) -> dict[str, float]:
        return {"loss": self.total / self.seen, "accuracy": self.correct / self.seen}


def _has_room_for_a_save(run: Run) -> bool:
    """Whether a save inside ``run`` is the run's ``on_model_save``: after the epoch's
    validation or its end. Between the epoch's training and its validation it would leave no
    room for the validation (the order has none after a save), so there it is not."""
    if not run.allows(events.on_model_save):
        return False
    return not (run.allows(events.on_val_start) and run.allows(events.on_fit_epoch_end))


def load(path: str | os.PathLike[str], *, bus: EventBus | None = None) -> NumpyTrainer:
    """A trainer rebuilt from a ``save`` checkpoint or an ``export`` artifact (npz or json).

    A checkpoint also restores the progress counters, the optimizer's kind, learning rate
    and momentum; the optimizer's moments are not stored, so a resumed Adam starts them
    afresh. A damaged or foreign file is a ``ValueError`` naming it; nothing in a file is
    ever executed.
    """
    config, state, weights = io.read(path)
    try:
        trainer = NumpyTrainer(
            bus=bus, hidden=tuple(config["hidden"]), n_classes=config["n_classes"],
            dtype=config["dtype"], lr=state.get("lr", 0.001),
            optimizer=state.get("optimizer", "adam"), momentum=state.get("momentum", 0.0),
        )  # fmt: skip
        trainer.set_weights(weights)
        stated = (config["n_classes"], config.get("input_dim", trainer.input_dim))
        if (trainer.n_classes, trainer.input_dim) != stated:
            raise ValueError(f"the header's sizes {stated} do not match the weights")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{os.fspath(path)!r} cannot be loaded: {exc}") from None
    trainer.iterations = int(state.get("iterations", 0))
    trainer._epoch = state.get("epoch")
    return trainer


def _check_count(value: Any, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def _check_lr(value: Any, name: str) -> float:
    try:
        lr = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return lr
