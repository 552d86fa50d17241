"""Helpers around Keras calls that emit what Keras' callbacks cannot see.

Keras calls no hook when ``fit`` raises, and none when a model is saved or exported; these
wrappers emit ``teardown`` with the error, ``on_model_save`` and ``on_export_start``/``_end``
(an :class:`~eventhooks.lifecycle.Export` session).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import keras  # type: ignore[import-untyped]

from eventhooks import EventBus, events
from eventhooks.lifecycle import Export, Run

from ._keras_into import KerasCallback


@contextlib.contextmanager
def keras_run(bus: EventBus) -> Iterator[KerasCallback]:
    """A :class:`KerasCallback` whose ``fit`` always ends in ``teardown``, also on failure.

    >>> with keras_run(bus) as cb:                          # doctest: +SKIP
    ...     model.fit(x, y, epochs=3, callbacks=[cb])
    ...     model.predict(x, callbacks=[cb])

    If an exception escapes the block while a ``fit`` is running (a subscriber or another
    callback raised, a batch failed to load midway, Ctrl-C), ``teardown`` is emitted with it,
    then the exception goes on. "Running" means Keras reached ``on_train_begin``: a ``fit``
    that fails before that (data of the wrong shape fails while Keras builds the model, before
    it even hands the callbacks the model) emits nothing here, not even ``teardown``. Use
    :func:`fit` for a ``teardown`` in that case too. A ``predict`` or ``evaluate`` through
    ``cb`` during the ``fit`` (from a subscriber) does not end it: a later failure of the fit
    still gets its ``teardown``.
    """
    cb = KerasCallback(bus)
    try:
        yield cb
    except BaseException as exc:
        cb.abort(exc)
        raise


def fit(
    model: Any,
    *args: Any,
    bus: EventBus,
    callbacks: list[Any] | None = None,
    **kwargs: Any,
) -> Any:
    """``model.fit(*args, **kwargs)`` emitting on ``bus``; returns Keras' ``History``.

    The run opens (``on_pretrain_routine_start``) before Keras checks the data and builds the
    model, and the routine ends (``on_pretrain_routine_end``) when Keras begins training.
    ``teardown`` is emitted in every case, with the error if ``fit`` raised, even before
    training began (bad data): a run that was asked for always ends in ``teardown``.
    """
    run = Run(bus, source=model, initial_epoch=kwargs.get("initial_epoch") or 0).open()
    cb = KerasCallback(bus)
    cb._ahead = run
    try:
        return model.fit(*args, callbacks=[*(callbacks or ()), cb], **kwargs)
    except BaseException as exc:
        run.close(exc)  # nothing if the callback already tore the run down
        raise


def save(
    model: Any,
    path: str | os.PathLike[str],
    bus: EventBus,
    *,
    weights_only: bool = False,
    epoch: int | None = None,
    logs: Mapping[str, float] | None = None,
    **kwargs: Any,
) -> str:
    """Save ``model`` (``model.save``, or ``model.save_weights``), then emit ``on_model_save``.

    Keras wants ``.keras`` for a model and ``.weights.h5`` for weights. ``epoch`` and
    ``logs`` are passed on to subscribers (a checkpoint taken in ``on_fit_epoch_end`` knows
    them). Returns the path as a string.
    """
    if weights_only:
        model.save_weights(path, **kwargs)
    else:
        model.save(path, **kwargs)
    where = os.fspath(path)
    bus.emit(events.on_model_save, path=where, epoch=epoch, logs=dict(logs or {}), source=model)
    return where


def default_export_format() -> str:
    """``"torch"`` on the torch backend (it needs nothing more), else Keras' own default."""
    return "torch" if keras.backend.backend() == "torch" else "tf_saved_model"


def export(
    model: Any,
    path: str | os.PathLike[str],
    bus: EventBus,
    *,
    format: str | None = None,
    **kwargs: Any,
) -> str:
    """``model.export(path, format=...)`` between ``on_export_start`` and ``on_export_end``.

    On the torch backend only ``format="torch"`` (a ``.pt2`` ``torch.export`` program) works
    without more packages: ``onnx`` needs onnx, ``openvino`` openvino, ``litert``
    litert-torch and ``tf_saved_model`` TensorFlow. If the export raises, no
    ``on_export_end`` is emitted and the error goes on.
    """
    fmt = format or default_export_format()
    with Export(bus, format=fmt, source=model) as session:
        model.export(path, format=fmt, **kwargs)
        session.path = os.fspath(path)
    return os.fspath(path)
