"""Built-in subscribers: plain :class:`eventhooks.Callback` subclasses, no framework imports.

Each gets everything from payloads (``payload.source`` is the emitting trainer), so it works
unchanged under every adapter. Attach with ``bus.attach(cb)``. The trackers (:class:`TensorBoard`,
:class:`MLflowLogger`) import their library only when created, and run in the background.
"""

from .checkpoint import ModelCheckpoint
from .csv_logger import CSVLogger
from .early_stopping import EarlyStopping
from .event_log import EventLog
from .history import History
from .lambda_callback import LambdaCallback
from .mlflow_logger import MLflowLogger
from .progress import ProgressBar
from .tensorboard import TensorBoard
from .terminate_on_nan import TerminateOnNaN

__all__ = [
    "CSVLogger",
    "EarlyStopping",
    "EventLog",
    "History",
    "LambdaCallback",
    "MLflowLogger",
    "ModelCheckpoint",
    "ProgressBar",
    "TensorBoard",
    "TerminateOnNaN",
]
