"""Built-in subscribers: plain :class:`eventhooks.Callback` subclasses, no framework imports.

Each gets everything from payloads (``payload.source`` is the emitting trainer), so it works
unchanged under every adapter. Attach with ``bus.attach(cb)``.
"""

from .checkpoint import ModelCheckpoint
from .csv_logger import CSVLogger
from .early_stopping import EarlyStopping
from .event_log import EventLog
from .history import History
from .lambda_callback import LambdaCallback
from .progress import ProgressBar
from .terminate_on_nan import TerminateOnNaN

__all__ = [
    "CSVLogger",
    "EarlyStopping",
    "EventLog",
    "History",
    "LambdaCallback",
    "ModelCheckpoint",
    "ProgressBar",
    "TerminateOnNaN",
]
