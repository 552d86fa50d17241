"""eventhooks: one typed, framework-agnostic event bus for machine-learning training.

Write a subscriber once; run it under Keras, PyTorch, Ultralytics or the NumPy reference loop.
"""

from . import events, payloads, registry
from ._subscription import Attachment, ErrorPolicy, OptionArgs, Options, Subscription, not_a_hook
from .bus import EventBus
from .callback import Callback
from .errors import (
    EventhooksError,
    OrderError,
    PayloadError,
    RegistryError,
    SubscriberError,
    UnknownEventError,
)
from .events import Event
from .payloads import (
    BatchPayload,
    CheckpointPayload,
    EpochPayload,
    ExportPayload,
    Logs,
    ParamsUpdatePayload,
    Payload,
    PredictBatchPayload,
    RunPayload,
    StepPayload,
    TeardownPayload,
)

__version__ = "0.1.0"

__all__ = [
    "Attachment",
    "BatchPayload",
    "Callback",
    "CheckpointPayload",
    "EpochPayload",
    "ErrorPolicy",
    "Event",
    "EventBus",
    "EventhooksError",
    "ExportPayload",
    "Logs",
    "OptionArgs",
    "Options",
    "OrderError",
    "ParamsUpdatePayload",
    "Payload",
    "PayloadError",
    "PredictBatchPayload",
    "RegistryError",
    "RunPayload",
    "StepPayload",
    "SubscriberError",
    "Subscription",
    "TeardownPayload",
    "UnknownEventError",
    "__version__",
    "events",
    "not_a_hook",
    "payloads",
    "registry",
]
