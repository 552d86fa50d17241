"""Ultralytics adapter: every YOLO callback as a typed eventhooks event, with one call.

>>> from ultralytics import YOLO                      # doctest: +SKIP
>>> from eventhooks import EventBus
>>> from eventhooks.adapters.ultralytics import attach
>>> bus = EventBus()
>>> @bus.on("on_epoch_end")                           # Keras name, same moment
... def show(p): print(p.epoch, p.logs["loss"], p.logs.get("fitness"))
>>> model = YOLO("yolov8n.yaml")                      # doctest: +SKIP
>>> attach(model, bus)                                # doctest: +SKIP
>>> model.train(data="data.yaml", epochs=2)           # doctest: +SKIP

or, so that a training that fails to start still ends in ``teardown`` (see the quirks):

>>> from eventhooks.adapters.ultralytics import train
>>> train(model, bus, data="data.yaml", epochs=2)     # doctest: +SKIP

Ultralytics is AGPL-3.0 and an optional extra: this module never imports it (it only calls
``add_callback`` and reads attributes of the objects Ultralytics hands its callbacks).

What the events carry (``source`` is always the object Ultralytics passed: trainer,
validator, predictor or exporter):

- ``epoch``: ``trainer.epoch`` (0-based); ``batch``: counted by the lifecycle
  (:mod:`eventhooks.lifecycle`, which the adapter drives), restarting at each epoch
  (training), each validation and each prediction run.
- ``logs``: floats under Ultralytics' own keys (``train/box_loss``, ``val/box_loss``,
  ``metrics/mAP50(B)``, ``lr/pg0``, ``fitness``) plus ``loss`` and ``val_loss``, the sums of
  the loss components, so Keras-style subscribers (``monitor="val_loss"``) work, and
  classification's top-1 accuracy as ``val_accuracy`` (``accuracy`` in a ``model.val()``
  of its own; training batches measure none).
  ``on_train_batch_end``: running-mean losses and learning rates; ``on_train_epoch_end``:
  training losses and learning rates; ``on_val_end``: the validation's metrics (inside
  training also its losses); ``on_fit_epoch_end`` and ``on_model_save``: all of them;
  ``on_train_end``: the last epoch's, plus the best-weights validation as ``best/<key>``.
- ``on_model_save``: one event per file written (``last.pt``, ``best.pt`` when it improved,
  ``epoch<N>.pt`` with ``save_period``), ``path`` = that file.
- ``on_export_end``: ``path`` = the exported artifact (Ultralytics' ``exporter.file`` is the
  source weights); ``format`` on both export events.
- ``on_predict_postprocess_end`` / ``on_predict_batch_end``: ``outputs`` = the batch's
  ``Results`` list.
- ``teardown``: ``error`` set when the run failed (the exception is ``payload.exception``).
  A teardown subscriber failing while the run fails does not replace the run's error: it
  is logged and added to that error as a note (``bus.emit_teardown``).

Quirks, and what the adapter does about them:

- After the last epoch Ultralytics validates ``best.pt`` (a standalone-style validation,
  ``validator.training`` False) and then calls ``on_fit_epoch_end`` once more with
  ``epoch = last + 1``. With ``final_eval="drop"`` (the default) those validation events and
  that phantom epoch are not forwarded, so History, CSVLogger and EarlyStopping see exactly
  the epochs that ran; the best-weights metrics arrive in ``on_train_end``'s logs as
  ``best/<key>``. ``final_eval="keep"`` also forwards that validation, as the canonical
  order's validation after the last epoch (``epoch`` None: it is no epoch's); the phantom
  epoch is never forwarded.
- Validation inside training: ``on_val_*`` carry ``epoch`` and ``val/*`` losses. A
  standalone ``model.val()``: ``epoch`` is None and there are no losses.
- ``val=False``: Ultralytics still validates the last epoch (and an epoch it may stop
  after), and until its first validation ``trainer.metrics`` holds zeros (later, the last
  validation's). The epochs that did not validate carry no ``val_loss``, ``val/*``,
  ``metrics/*`` or ``fitness`` (as Keras leaves ``val_*`` out), so a ``monitor="val_loss"``
  callback does not act on those placeholders (EarlyStopping warns that it is missing).
- Ultralytics restarts an epoch, calling ``on_train_epoch_start`` again for the same
  epoch: after a batch ran out of memory (first epoch, GPU), and after an epoch whose loss
  or fitness was NaN, once it has validated it (it reloads ``last.pt``). Out of memory,
  the batch that failed gets its ``on_train_batch_end`` (learning rates, no losses) and
  the epoch restarts as the canonical order allows. After a NaN the order has no restart
  yet: the failed attempt ends with ``on_fit_epoch_end`` (its NaN logs) and the same epoch
  begins again, so History and CSVLogger show that epoch twice.
- ``time=``: when time runs out Ultralytics leaves the batch without
  ``on_train_batch_end``; the adapter ends it before ``on_train_epoch_end``.
- ``optimizer_step``, ``on_before_zero_grad``, ``on_params_update`` are registered but
  Ultralytics never calls them (its "reserved" names); a custom trainer that does gets them.
- A trainer runs ``on_pretrain_routine_start`` in its constructor: attached to a built
  trainer, the adapter opens the run at ``on_pretrain_routine_end`` (emitting
  ``on_pretrain_routine_start`` just before it, later than it happened). Attach to the
  YOLO model (or pass the callbacks to the trainer's ``_callbacks``) to hear it in time.
- ``bus.request_stop()`` sets ``trainer.stop = True`` after the event: Ultralytics then stops
  after the current batch (the epoch still validates and saves) or after the current epoch.
- A subscriber error under the ``raise`` policy propagates out of ``model.train()`` as
  :class:`eventhooks.SubscriberError`; Ultralytics runs ``teardown`` in a ``finally``, so
  every subscriber still hears it, with the error.
- That ``finally`` is in ``trainer.train()``, but the trainer's constructor already runs
  ``on_pretrain_routine_start`` and the dataset check: a dataset that is not usable fails
  the start there, and Ultralytics sends no ``teardown``. :func:`train`
  (``train(model, bus, **train_args)`` instead of ``model.train(**train_args)``) emits it,
  with the error, whenever ``model.train()`` raises without one, so every run ends in
  ``teardown`` as with the other adapters. With a plain ``model.train()`` such a run just
  ends silently; later validations, predictions and trainings are heard normally either
  way. (A subscriber failing at ``on_pretrain_routine_start`` gets its ``teardown``
  either way: the lifecycle ends a run it could not open.)
- A classification dataset folder that does not exist makes Ultralytics try to download
  it (``YOLO_OFFLINE`` does not stop that attempt); one that exists without images fails
  offline.
"""

from __future__ import annotations

from typing import Any

from eventhooks import EventBus, events

from ._ultralytics_link import FinalEval, Forwarder, Link, check_final_eval

__all__ = ["NAMES", "FinalEval", "Forwarder", "Link", "attach", "detach", "train"]

#: The 25 Ultralytics callback names the adapter registers.
NAMES: tuple[str, ...] = events.ULTRALYTICS_NAMES


def _callbacks_of(target: Any) -> dict[str, list[Any]]:
    callbacks = getattr(target, "callbacks", None)
    if not isinstance(callbacks, dict) or not callable(getattr(target, "add_callback", None)):
        raise TypeError(
            "attach() needs an Ultralytics YOLO model, trainer, validator, predictor or "
            f"exporter (an object with add_callback() and a callbacks dict), "
            f"got {type(target).__name__}"
        )
    return callbacks


def _forwarders(target: Any, bus: EventBus | None = None) -> list[tuple[str, Forwarder]]:
    return [
        (name, fn)
        for name, fns in _callbacks_of(target).items()
        for fn in fns
        if isinstance(fn, Forwarder) and (bus is None or fn.link.bus is bus)
    ]


def attach(target: Any, bus: EventBus, *, final_eval: FinalEval | None = None) -> Link:
    """Register a forwarder to ``bus`` for each of the 25 Ultralytics callbacks of ``target``.

    ``target`` is a ``YOLO`` model (its trainer, validators, predictor and exporter inherit
    the callbacks) or a trainer, validator, predictor or exporter. ``final_eval`` chooses
    what happens to the best-weights validation after the last epoch (see the module docs;
    ``"drop"`` unless given). Attaching the same bus again registers nothing more and
    returns the existing link, with its ``final_eval`` changed if one is given.
    """
    existing = _forwarders(target, bus)
    if existing:
        link = existing[0][1].link
        if final_eval is not None:
            link.final_eval = check_final_eval(final_eval)
        return link
    link = Link(bus, final_eval=final_eval or "drop")
    for name in NAMES:
        target.add_callback(name, Forwarder(link, name))
    return link


def detach(target: Any, bus: EventBus | None = None) -> int:
    """Remove the forwarders (to ``bus``, or to any bus) from ``target``; returns how many."""
    callbacks = _callbacks_of(target)
    removed = 0
    for name, fn in _forwarders(target, bus):
        callbacks[name].remove(fn)
        removed += 1
    return removed


def train(model: Any, bus: EventBus, *, final_eval: FinalEval | None = None, **kwargs: Any) -> Any:
    """``model.train(**kwargs)`` heard on ``bus``, ending in ``teardown`` even if it fails to start.

    Attaches ``bus`` to ``model`` first (as :func:`attach`; it stays attached) and returns
    what ``model.train`` returns. If ``model.train`` raises and no ``teardown`` was emitted
    for it (Ultralytics sends none when the trainer's constructor fails: an unusable
    dataset, bad arguments), emits ``teardown`` with the error and re-raises it (a teardown
    subscriber failing then is only noted on it). Only ``bus`` gets that teardown, not other
    buses attached to ``model``.
    """
    link = attach(model, bus, final_eval=final_eval)
    since = link.run
    try:
        return model.train(**kwargs)
    except BaseException as exc:
        link.abort(exc, model, since)
        raise
