"""Keras-style subscribers: subclass :class:`Callback`, override ``on_*`` methods, attach.

Every method takes the event's payload. Override it under the Keras name
(``on_epoch_end``) or the Ultralytics one (``on_fit_epoch_end``): both hear the same moment.
Override ``on_event(event, payload)`` to hear every event, other libraries' included (loggers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ._subscription import default_hook, delivering_bus
from .events import Event
from .payloads import (
    BatchPayload,
    CheckpointPayload,
    EpochPayload,
    ExportPayload,
    ParamsUpdatePayload,
    PredictBatchPayload,
    RunPayload,
    StepPayload,
    TeardownPayload,
)

if TYPE_CHECKING:
    from .bus import EventBus


class Callback:
    """Base class for class-style subscribers; ``bus.attach(cb)`` connects what you override.

    While a method handles an event, ``self.bus`` is the bus that delivered it, so
    ``self.request_stop()`` reaches that bus, also for a callback attached to two buses.
    Outside a delivery, ``self.bus`` is the bus it was attached to last.
    """

    #: ``bus.attach`` recognises callbacks by this: only overridden hooks are subscribed.
    __eventhooks_callback__ = True

    @property
    def bus(self) -> EventBus | None:
        """The bus delivering the event being handled, else the one attached last."""
        return delivering_bus(self) or getattr(self, "_eventhooks_bus", None)

    @bus.setter
    def bus(self, bus: EventBus | None) -> None:
        self._eventhooks_bus = bus

    # Ultralytics names (canonical)
    @default_hook
    def on_pretrain_routine_start(self, payload: RunPayload) -> None: ...
    @default_hook
    def on_pretrain_routine_end(self, payload: RunPayload) -> None: ...
    @default_hook
    def on_train_start(self, payload: RunPayload) -> None: ...
    @default_hook
    def on_train_epoch_start(self, payload: EpochPayload) -> None: ...
    @default_hook
    def on_train_batch_start(self, payload: BatchPayload) -> None: ...
    @default_hook
    def on_before_zero_grad(self, payload: StepPayload) -> None: ...
    @default_hook
    def optimizer_step(self, payload: StepPayload) -> None: ...
    @default_hook
    def on_params_update(self, payload: ParamsUpdatePayload) -> None: ...
    @default_hook
    def on_train_batch_end(self, payload: BatchPayload) -> None: ...
    @default_hook
    def on_train_epoch_end(self, payload: EpochPayload) -> None: ...
    @default_hook
    def on_val_start(self, payload: RunPayload) -> None: ...
    @default_hook
    def on_val_batch_start(self, payload: BatchPayload) -> None: ...
    @default_hook
    def on_val_batch_end(self, payload: BatchPayload) -> None: ...
    @default_hook
    def on_val_end(self, payload: RunPayload) -> None: ...
    @default_hook
    def on_model_save(self, payload: CheckpointPayload) -> None: ...
    @default_hook
    def on_fit_epoch_end(self, payload: EpochPayload) -> None: ...
    @default_hook
    def on_train_end(self, payload: RunPayload) -> None: ...
    @default_hook
    def teardown(self, payload: TeardownPayload) -> None: ...
    @default_hook
    def on_predict_start(self, payload: RunPayload) -> None: ...
    @default_hook
    def on_predict_batch_start(self, payload: PredictBatchPayload) -> None: ...
    @default_hook
    def on_predict_postprocess_end(self, payload: PredictBatchPayload) -> None: ...
    @default_hook
    def on_predict_batch_end(self, payload: PredictBatchPayload) -> None: ...
    @default_hook
    def on_predict_end(self, payload: RunPayload) -> None: ...
    @default_hook
    def on_export_start(self, payload: ExportPayload) -> None: ...
    @default_hook
    def on_export_end(self, payload: ExportPayload) -> None: ...

    # Keras names (the same moments)
    @default_hook
    def on_train_begin(self, payload: RunPayload) -> None: ...
    @default_hook
    def on_epoch_begin(self, payload: EpochPayload) -> None: ...
    @default_hook
    def on_train_batch_begin(self, payload: BatchPayload) -> None: ...
    @default_hook
    def on_epoch_end(self, payload: EpochPayload) -> None: ...
    @default_hook
    def on_test_begin(self, payload: RunPayload) -> None: ...
    @default_hook
    def on_test_batch_begin(self, payload: BatchPayload) -> None: ...
    @default_hook
    def on_test_batch_end(self, payload: BatchPayload) -> None: ...
    @default_hook
    def on_test_end(self, payload: RunPayload) -> None: ...
    @default_hook
    def on_predict_begin(self, payload: RunPayload) -> None: ...
    @default_hook
    def on_predict_batch_begin(self, payload: PredictBatchPayload) -> None: ...

    # Every event
    @default_hook
    def on_event(self, event: Event[Any], payload: BaseModel) -> None:
        """Hears every event the bus's registry knows when attached, custom ones included.

        For subscribers that treat events alike (loggers, recorders). It runs in addition to
        the named methods, after them at equal priority.
        """

    def request_stop(self, reason: str | None = None) -> None:
        """Ask the loop to stop after the current batch or epoch: the loop of the bus that
        delivered the event being handled (outside a delivery, of the bus attached last)."""
        bus = self.bus
        if bus is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a bus")
        bus.request_stop(reason)
