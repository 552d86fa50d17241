"""LambdaCallback: a few functions as one subscriber, attached and detached together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import registry as _registry


class LambdaCallback:
    """``LambdaCallback(on_epoch_end=fn, teardown=fn2)``: each function takes the payload.

    Any of the 35 names works as a keyword; a misspelt one is a ``TypeError`` here, not a
    subscriber that silently never runs. ``bus.attach(cb)`` subscribes them all.
    """

    def __init__(self, **hooks: Callable[[Any], object]) -> None:
        for name, fn in hooks.items():
            if name not in _registry.default or not name.isidentifier():
                raise TypeError(f"LambdaCallback: {name!r} is not an event name")
            if not callable(fn):
                raise TypeError(f"LambdaCallback: {name}= must be callable, got {fn!r}")
            setattr(self, name, fn)
        self.hooks = dict(hooks)

    def __repr__(self) -> str:
        return f"LambdaCallback({', '.join(self.hooks)})"
