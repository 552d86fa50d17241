"""Payload types: what each lifecycle event carries, validated by pydantic.

Only what every framework can supply is required (Keras gives ``on_train_begin`` nothing but
``logs``, and its batch hooks no epoch). Framework objects ride along in fields that are kept
out of serialization and out of the JSON Schema, so every payload dumps to JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from .errors import PayloadError, _text, _type_name

#: Metrics by name. numpy and torch scalars become floats; NaN and inf are kept (a NaN loss
#: is information) and written to JSON as ``NaN``/``Infinity``.
Logs = dict[str, float]

Index = Annotated[int, Field(ge=0, le=2**63 - 1)]
"""A 0-based epoch or batch index (at most a 64-bit int: what a log can be read back with)."""


def _fspath(value: Any) -> Any:
    """An ``os.PathLike``'s path, as ``os.fspath`` gives it. A path object that fails (its
    ``__fspath__`` raises, or returns neither str nor bytes) is a ``ValueError``, which pydantic
    reports for the field. Bytes, given or returned, are decoded as UTF-8 by the ``str``
    validation that follows; bytes that are not UTF-8 are refused there."""
    kind = type(value)
    if kind is str:  # the common case, first
        return value
    try:
        pathlike = getattr(kind, "__fspath__", None) is not None  # as os.PathLike checks
    except Exception:  # a metaclass' __getattr__
        pathlike = False
    if not pathlike:
        return value  # not a path: the str validation says what is wrong with it
    try:
        return os.fspath(value)
    except Exception as exc:
        raise ValueError(
            f"{_type_name(value)} gives no path: {_type_name(exc)}: {_text(exc)}"
        ) from None


PathStr = Annotated[str, BeforeValidator(_fspath)]
"""A filesystem path, given as ``str``, ``bytes`` (UTF-8) or ``os.PathLike``, stored as ``str``."""


class _Context(BaseModel):
    """The run's facts, validated: what :class:`RunContext` checks once per run."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    source: Any = None
    params: dict[str, Any] | None = None
    rank: Index = 0
    world_size: Annotated[int, Field(ge=1)] = 1


#: The names of the run's facts, accepted wherever payload fields are.
CONTEXT_FIELDS = ("source", "params", "rank", "world_size")


class RunContext:
    """The facts of a run that every payload carries: ``source``, ``params``, ``rank``,
    ``world_size``. Checked once when a run opens (and when they change), not at every emit.
    """

    __slots__ = ("params", "rank", "source", "world_size")

    def __init__(self, checked: _Context) -> None:
        self.source, self.params = checked.source, checked.params
        self.rank, self.world_size = checked.rank, checked.world_size

    @classmethod
    def check(
        cls, source: Any = None, params: Any = None, rank: Any = 0, world_size: Any = 1
    ) -> RunContext:
        """Validate the run's facts; a bad one is a :class:`PayloadError` naming its field."""
        given = {"source": source, "params": params, "rank": rank, "world_size": world_size}
        try:
            return cls(_Context.model_validate(given))
        except Exception as exc:
            raise PayloadError.from_validation("run context", "run context", exc) from None

    def changed(self, **changes: Any) -> RunContext:
        """This context with ``changes`` (same names as :meth:`check`), validated."""
        unknown = set(changes) - set(CONTEXT_FIELDS)
        if unknown:
            raise TypeError(f"a run's context has no {sorted(unknown)}")
        current = {name: getattr(self, name) for name in CONTEXT_FIELDS}
        return RunContext.check(**{**current, **changes})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunContext):
            return NotImplemented
        same_place = self.rank == other.rank and self.world_size == other.world_size
        return same_place and self.source is other.source and self.params == other.params

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<RunContext rank={self.rank}/{self.world_size} source={self.source!r}>"


#: A payload emitted outside any run: no source, no params, rank 0 of 1.
NO_CONTEXT = RunContext(_Context())


class Payload(BaseModel):
    """What every event carries: the fields of its moment, and the run's facts.

    ``source`` is the framework object that emitted the event (a Keras model, an Ultralytics
    trainer, the NumPy trainer); ``params`` are the run's parameters where the framework has
    them (Keras ``params``). Neither is serialized. ``rank``/``world_size`` locate the process
    under distributed training, and are written to JSON. These four are the run's, checked
    once per run (:class:`RunContext`), not validated again with every emit; they are given
    to a payload as keywords like its fields.
    """

    model_config = ConfigDict(
        extra="forbid",
        arbitrary_types_allowed=True,
        ser_json_inf_nan="constants",
        revalidate_instances="never",
    )

    def __init__(self, /, **data: Any) -> None:
        context = {name: data.pop(name) for name in CONTEXT_FIELDS if name in data}
        super().__init__(**data)
        if context:
            self.__dict__["_context"] = RunContext.check(**context)

    # Tells pydantic that validation need not call this __init__ (emit validates without
    # it, and attaches the run's facts itself): a custom __init__ would cost every emit.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def model_validate(cls, obj: Any, **options: Any) -> Self:
        """pydantic's, also taking the run's facts (``rank``...) from a mapping."""
        if isinstance(obj, Mapping) and any(name in obj for name in CONTEXT_FIELDS):
            fields = dict(obj)
            context = RunContext.check(**split_context(fields))
            payload = super().model_validate(fields, **options)
            payload.__dict__["_context"] = context
            return payload
        return super().model_validate(obj, **options)

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **options: Any) -> Self:
        """pydantic's, also reading the run's facts that ``model_dump_json`` writes."""
        data = json.loads(json_data)
        if isinstance(data, dict) and any(name in data for name in CONTEXT_FIELDS):
            context = RunContext.check(**split_context(data))
            payload = super().model_validate_json(json.dumps(data), **options)
            payload.__dict__["_context"] = context
            return payload
        return super().model_validate_json(json_data, **options)

    def __eq__(self, other: object) -> bool:
        """Equal fields and the same run's facts (the same ``source``, equal ``params``...)."""
        if not isinstance(other, Payload):
            return NotImplemented
        return bool(super().__eq__(other)) and self.context == other.context

    __hash__ = None  # type: ignore[assignment]  # as pydantic's models: mutable, unhashable

    @property
    def context(self) -> RunContext:
        """The run's facts this payload carries."""
        context: RunContext = self.__dict__.get("_context", NO_CONTEXT)
        return context

    @property
    def source(self) -> Any:
        return self.context.source

    @property
    def params(self) -> dict[str, Any] | None:
        return self.context.params

    @computed_field  # type: ignore[prop-decorator]
    @property
    def rank(self) -> int:
        return self.context.rank

    @computed_field  # type: ignore[prop-decorator]
    @property
    def world_size(self) -> int:
        return self.context.world_size


def split_context(fields: dict[str, Any]) -> dict[str, Any]:
    """Take the run's facts out of ``fields`` (a payload's JSON, say) and return them."""
    return {name: fields.pop(name) for name in CONTEXT_FIELDS if name in fields}


class RunPayload(Payload):
    """A phase boundary: routine, train, validation or prediction start/end."""

    epoch: Index | None = None
    logs: Logs = Field(default_factory=dict)


class EpochPayload(Payload):
    """An epoch boundary; ``epoch`` is 0-based and absolute (it does not restart on resume)."""

    epoch: Index
    logs: Logs = Field(default_factory=dict)


class BatchPayload(Payload):
    """A batch boundary; ``batch`` is 0-based and restarts each epoch."""

    batch: Index
    epoch: Index | None = None
    logs: Logs = Field(default_factory=dict)


class PredictBatchPayload(BatchPayload):
    """A prediction batch; ``outputs`` are the framework's own (arrays, result objects)."""

    outputs: SkipJsonSchema[Any] = Field(default=None, exclude=True, repr=False)


class StepPayload(Payload):
    """An optimizer moment inside a training batch; ``step`` counts optimizer steps in the run."""

    epoch: Index | None = None
    batch: Index | None = None
    step: Index | None = None


class ParamsUpdatePayload(StepPayload):
    """The run's first hyper-parameters (``epoch`` None, after ``on_train_start``), then each
    change (``{"lr": 0.01}``, or ``{"lr/pg1": ...}`` per param group)."""

    hyperparams: dict[str, float] = Field(default_factory=dict)


class CheckpointPayload(Payload):
    """A checkpoint was written to ``path``."""

    path: PathStr
    epoch: Index | None = None
    logs: Logs = Field(default_factory=dict)


class TeardownPayload(Payload):
    """Always the last event of a run; ``error`` describes the failure, if the run failed.

    Pass ``exception=exc``: ``error`` is then filled as ``"TypeName: message"``.
    """

    error: str | None = None
    exception: SkipJsonSchema[BaseException | None] = Field(
        default=None, exclude=True, repr=False
    )
    epoch: Index | None = None
    logs: Logs = Field(default_factory=dict)

    @field_validator("exception", mode="before")
    @classmethod
    def _an_exception(cls, value: Any) -> Any:
        # Checked by type: pydantic's isinstance() would ask the object for its __class__,
        # which may raise.
        if value is not None and not issubclass(type(value), BaseException):
            raise ValueError(f"expected an exception instance, got {_type_name(value)}")
        return value

    @model_validator(mode="after")
    def _describe_exception(self) -> TeardownPayload:
        if self.exception is not None and self.error is None:
            # An exception whose str() raises still tears the run down.
            said = _text(self.exception, limit=None, fallback="<unprintable message>")
            self.error = f"{_type_name(self.exception)}: {said}"
        return self


class ExportPayload(Payload):
    """Export of the model: ``format`` at the start, and the artifact's ``path`` at the end."""

    format: str | None = None
    path: PathStr | None = None

