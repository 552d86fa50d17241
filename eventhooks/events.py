"""The vocabulary: the 25 lifecycle moments and their 35 names, as data, in one place.

Each moment is an :class:`Event` named by its Ultralytics callback; its Keras name, where it
has one, is an alias. Use the constants (``events.on_fit_epoch_end``, or its Keras twin
``events.on_epoch_end``: the same object) so that type checkers know the payload type.
The order of :data:`BUILTIN` is the canonical order of one run (PRODUCT.md §1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

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

P = TypeVar("P", bound=BaseModel)

Counter = str
"""The payload field that ``every=``/``once=`` count by: ``"epoch"``, ``"batch"``, or a custom
event's own (``"step"``)."""


@dataclass(frozen=True, eq=False)
class Event(Generic[P]):
    """One lifecycle moment: its canonical name, its other names and its payload type.

    ``counter`` says which payload field ``every=``/``once=`` filters count by; ``keras`` is
    the Keras ``Callback`` method name of the moment, if Keras has one.
    """

    name: str
    payload: type[P]
    doc: str = ""
    aliases: tuple[str, ...] = ()
    counter: Counter | None = None
    keras: str | None = None
    _validate: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The compiled pydantic validator, called directly: it skips BaseModel.__init__.
        object.__setattr__(self, "_validate", self.payload.__pydantic_validator__.validate_python)

    @property
    def names(self) -> tuple[str, ...]:
        """The canonical name first, then the aliases."""
        return (self.name, *self.aliases)

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of this event's payload as written to JSON (an event log line's
        ``payload``: ``rank`` and ``world_size`` included), titled with the event's name."""
        schema = self.payload.model_json_schema(mode="serialization")
        schema["title"] = self.name
        if self.doc:
            schema["description"] = self.doc
        return schema

    def __repr__(self) -> str:
        return f"<Event {self.name}>"


def _event(
    name: str,
    payload: type[P],
    doc: str,
    keras: str | None = None,
    counter: Counter | None = None,
) -> Event[P]:
    aliases = (keras,) if keras and keras != name else ()
    return Event(name, payload, doc, aliases, counter, keras)


# fmt: off
on_pretrain_routine_start = _event("on_pretrain_routine_start", RunPayload,
    "Before the model, data and optimizer are built.")
on_pretrain_routine_end = _event("on_pretrain_routine_end", RunPayload,
    "After the model, data and optimizer are built.")
on_train_start = _event("on_train_start", RunPayload,
    "Training begins.", "on_train_begin")
on_train_epoch_start = _event("on_train_epoch_start", EpochPayload,
    "An epoch begins (epoch is 0-based, absolute).", "on_epoch_begin", "epoch")
on_train_batch_start = _event("on_train_batch_start", BatchPayload,
    "A training batch begins (batch is 0-based, resets each epoch).", "on_train_batch_begin",
    "batch")
on_before_zero_grad = _event("on_before_zero_grad", StepPayload,
    "Before gradients are cleared.")
optimizer_step = _event("optimizer_step", StepPayload,
    "After the optimizer updated the weights.")
on_params_update = _event("on_params_update", ParamsUpdatePayload,
    "The run's first hyper-parameters (the learning rate...) after `on_train_start`; each change.")
on_train_batch_end = _event("on_train_batch_end", BatchPayload,
    "A training batch ended (logs: running means, as in Keras; Lightning's: the step's).",
    "on_train_batch_end", "batch")
on_train_epoch_end = _event("on_train_epoch_end", EpochPayload,
    "The training part of an epoch ended, before validation.", None, "epoch")
on_val_start = _event("on_val_start", RunPayload,
    "Validation or evaluation begins.", "on_test_begin")
on_val_batch_start = _event("on_val_batch_start", BatchPayload,
    "A validation batch begins.", "on_test_batch_begin", "batch")
on_val_batch_end = _event("on_val_batch_end", BatchPayload,
    "A validation batch ended.", "on_test_batch_end", "batch")
on_val_end = _event("on_val_end", RunPayload,
    "Validation ended (logs: its metrics by their own names, `loss` as Keras' `on_test_end`).",
    "on_test_end")
on_model_save = _event("on_model_save", CheckpointPayload,
    "A checkpoint was written (path).")
on_fit_epoch_end = _event("on_fit_epoch_end", EpochPayload,
    "The whole epoch ended, validation included (logs: train and val_ metrics).",
    "on_epoch_end", "epoch")
on_train_end = _event("on_train_end", RunPayload,
    "Training ended normally (logs: the last epoch's).", "on_train_end")
teardown = _event("teardown", TeardownPayload,
    "Always last, also after a failure (carries the error, if any).")
on_predict_start = _event("on_predict_start", RunPayload,
    "Prediction begins.", "on_predict_begin")
on_predict_batch_start = _event("on_predict_batch_start", PredictBatchPayload,
    "A prediction batch begins.", "on_predict_batch_begin", "batch")
on_predict_postprocess_end = _event("on_predict_postprocess_end", PredictBatchPayload,
    "A prediction batch's outputs were post-processed.", None, "batch")
on_predict_batch_end = _event("on_predict_batch_end", PredictBatchPayload,
    "A prediction batch ended (outputs).", "on_predict_batch_end", "batch")
on_predict_end = _event("on_predict_end", RunPayload,
    "Prediction ended.", "on_predict_end")
on_export_start = _event("on_export_start", ExportPayload,
    "Export begins (format).")
on_export_end = _event("on_export_end", ExportPayload,
    "Export ended (path of the artifact).")
# fmt: on

# Keras names: the same Event objects under their Keras spelling.
on_train_begin = on_train_start
on_epoch_begin = on_train_epoch_start
on_train_batch_begin = on_train_batch_start
on_test_begin = on_val_start
on_test_batch_begin = on_val_batch_start
on_test_batch_end = on_val_batch_end
on_test_end = on_val_end
on_epoch_end = on_fit_epoch_end
on_predict_begin = on_predict_start
on_predict_batch_begin = on_predict_batch_start

#: The 25 built-in moments in canonical order.
BUILTIN: tuple[Event[Any], ...] = (
    on_pretrain_routine_start, on_pretrain_routine_end, on_train_start, on_train_epoch_start,
    on_train_batch_start, on_before_zero_grad, optimizer_step, on_params_update,
    on_train_batch_end, on_train_epoch_end, on_val_start, on_val_batch_start, on_val_batch_end,
    on_val_end, on_model_save, on_fit_epoch_end, on_train_end, teardown, on_predict_start,
    on_predict_batch_start, on_predict_postprocess_end, on_predict_batch_end, on_predict_end,
    on_export_start, on_export_end,
)  # fmt: skip

#: The 14 Keras ``Callback`` method names.
KERAS_NAMES: tuple[str, ...] = tuple(e.keras for e in BUILTIN if e.keras)

#: Every built-in name (Keras or Ultralytics spelling) -> its canonical (Ultralytics) name.
CANONICAL: dict[str, str] = {name: e.name for e in BUILTIN for name in e.names}

#: The 25 Ultralytics callback names.
ULTRALYTICS_NAMES: tuple[str, ...] = tuple(e.name for e in BUILTIN)
