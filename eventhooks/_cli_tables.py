"""Text for ``eventhooks events``: the vocabulary as a table, straight from the registry."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from . import registry as _registry
from .events import BUILTIN
from .payloads import Payload

_BASE_FIELDS = frozenset(Payload.model_fields)


_JSON_TYPES = {"integer": "int", "number": "float", "string": "str", "null": "None",
               "boolean": "bool"}  # fmt: skip


def _json_type(prop: dict[str, Any]) -> str:
    """A Python-looking type for a JSON Schema property."""
    if "anyOf" in prop:
        return " | ".join(_json_type(p) for p in prop["anyOf"])
    kind = str(prop.get("type", "any"))
    if kind == "object":
        return f"dict[str, {_json_type(prop.get('additionalProperties', {}))}]"
    return _JSON_TYPES.get(kind, kind)


def payload_fields(model: type[BaseModel]) -> str:
    """``batch: int, epoch?: int | None, ...``: the fields a payload type adds to the base.

    ``?`` marks an optional field; fields that are never serialized (framework objects) are
    marked so.
    """
    schema = model.model_json_schema()
    props, required = schema.get("properties", {}), set(schema.get("required", ()))
    out = []
    for name in model.model_fields:
        if name in _BASE_FIELDS:
            continue
        if name in props:
            mark = "" if name in required else "?"
            out.append(f"{name}{mark}: {_json_type(props[name])}")
        else:
            out.append(f"{name}?: object (not serialized)")
    return ", ".join(out)


def events_table(registry: _registry.Registry | None = None) -> str:
    """A plain-text table of every event: canonical name, Keras name, payload and fields."""
    reg = registry or _registry.default
    rows = [("#", "event (Ultralytics name)", "Keras name", "payload", "fields")]
    for index, event in enumerate(reg.events(), start=1):
        rows.append((
            str(index), event.name, event.keras or "-",
            event.payload.__name__, payload_fields(event.payload),
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  " + row[4]
        for row in rows
    ]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    moments = sum(1 for e in reg.events() if e in BUILTIN)
    names = sum(len(e.names) for e in reg.events() if e in BUILTIN)
    custom = len(reg.events()) - moments
    lines.append("")
    lines.append(
        f"{names} names for {moments} lifecycle moments"
        + (f", and {custom} custom events" if custom else "")
        + "; '?' marks an optional field."
    )
    lines.append(
        "Every payload also has rank and world_size, and source and params (not serialized)."
    )
    lines.append("`eventhooks schema NAME` prints an event's JSON Schema.")
    return "\n".join(line.rstrip() for line in lines)
