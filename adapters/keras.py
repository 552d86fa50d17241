"""Keras 3 adapter, both ways.

Into Keras: ``model.fit(..., callbacks=[KerasCallback(bus)])`` emits every moment Keras
exposes on ``bus``; :func:`keras_run` / :func:`fit` add ``teardown`` when ``fit`` raises;
:func:`save` and :func:`export` emit ``on_model_save`` and ``on_export_start``/``_end``.

Out of Keras: ``bus.attach(from_keras(keras_callback))`` runs an unchanged Keras callback
under any loop that emits on the bus.

Importing this module imports Keras (set ``KERAS_BACKEND`` first, as with Keras itself).
"""

from __future__ import annotations

from ._keras_from import KerasBridge, KerasModelProxy, from_keras
from ._keras_into import KerasCallback
from ._keras_run import default_export_format, export, fit, keras_run, save

__all__ = [
    "KerasBridge",
    "KerasCallback",
    "KerasModelProxy",
    "default_export_format",
    "export",
    "fit",
    "from_keras",
    "keras_run",
    "save",
]
