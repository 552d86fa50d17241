"""Artifacts of the NumPy reference trainer: checkpoints and exports, written and read back.

Two containers hold the same content (a header with the architecture, then the weights):
``.npz`` (exact, compact) and ``.json`` (portable, readable by anything). Reading never
unpickles (``allow_pickle=False``): a file cannot execute code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._numpy_mlp import Array

FORMAT = "eventhooks-numpy-mlp"
VERSION = 1
_HEADER = "eventhooks"
FORMATS = ("npz", "json")


def format_of(path: str | os.PathLike[str], given: str | None) -> str:
    """The container to write: ``given``, else the file's suffix."""
    fmt = given if given is not None else Path(path).suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        where = f"format={given!r}" if given is not None else f"the suffix of {os.fspath(path)!r}"
        raise ValueError(f"export format must be 'npz' or 'json' ({where} is not)")
    return fmt


def write(
    path: str | os.PathLike[str],
    fmt: str,
    kind: str,
    config: dict[str, Any],
    weights: Sequence[Array],
    state: dict[str, Any] | None = None,
) -> Path:
    """Write an artifact at exactly ``path`` (``np.savez`` would append ``.npz``)."""
    target = Path(path)
    header = {"format": FORMAT, "version": VERSION, "kind": kind, "config": config}
    header["state"] = state or {}
    if fmt == "json":
        header["weights"] = [{"shape": list(w.shape), "values": w.tolist()} for w in weights]
        target.write_text(json.dumps(header), encoding="utf-8")
        return target
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(weights)}
    with target.open("wb") as fh:
        np.savez(fh, **{_HEADER: np.array(json.dumps(header))}, **arrays)  # type: ignore[arg-type]
    return target


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any], list[Array]]:
    """Read an artifact back: ``(config, state, weights)``; a foreign file is a clear error."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no such artifact: {os.fspath(path)!r}")
    with source.open("rb") as fh:
        npz = fh.read(4) == b"PK\x03\x04"
    if npz:
        with np.load(source, allow_pickle=False) as data:
            if _HEADER not in data.files:
                raise ValueError(f"{os.fspath(path)!r} is an npz file but not an eventhooks one")
            header = _check(json.loads(str(data[_HEADER])), path)
            weights = [np.array(data[f"w{i}"]) for i in range(len(data.files) - 1)]
    else:
        try:
            header = _check(json.loads(source.read_text(encoding="utf-8")), path)
            weights = [
                np.array(w["values"], dtype=header["config"]["dtype"]).reshape(w["shape"])
                for w in header["weights"]
            ]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{os.fspath(path)!r} is not an eventhooks artifact: {exc}") from None
    return header["config"], header.get("state", {}), weights


def _check(header: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not an eventhooks NumPy MLP artifact")
    if header.get("version") != VERSION:
        raise ValueError(
            f"{os.fspath(path)!r} has artifact version {header.get('version')!r}; "
            f"this eventhooks reads version {VERSION}"
        )
    return header
