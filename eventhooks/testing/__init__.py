"""A testing kit for adapters, ours and other libraries': record a run, check its order.

>>> from eventhooks import EventBus
>>> from eventhooks.testing import Recorder, assert_canonical_order
>>> bus = EventBus()
>>> rec = Recorder(bus)
>>> _ = bus.emit("on_train_begin", logs={})
>>> _ = bus.emit("on_train_end")
>>> rec.names
['on_train_start', 'on_train_end']
>>> assert_canonical_order(rec.names)
"""

from ._conformance import Conformance, check_adapter
from ._order import CanonicalOrderError, assert_canonical_order
from ._recorder import RECORDER_PRIORITY, CountingBus, Recorder

__all__ = [
    "RECORDER_PRIORITY",
    "CanonicalOrderError",
    "Conformance",
    "CountingBus",
    "Recorder",
    "assert_canonical_order",
    "check_adapter",
]
