"""Artifacts of the NumPy reference trainer: checkpoints and exports, written and read back.

Two containers hold the same content (a header with the architecture, then the weights):
``.npz`` (exact, compact) and ``.json`` (portable, readable by anything). Reading never
unpickles (``allow_pickle=False``): a file cannot execute code.
"""

from __future__ import annotations

import errno
import json
import os
import zipfile
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


def destination(path: Any, what: str) -> Path:
    """``path`` as a file that can be written, or the error writing it would raise, sooner.

    For checks before a session opens: a path of the wrong type (``TypeError``), in a
    directory that does not exist (``FileNotFoundError``) or naming a directory
    (``IsADirectoryError``). ``what`` says whose path it is (``"export: path"``).
    """
    try:
        target = Path(path)
    except TypeError:
        raise TypeError(f"{what} must be a str or os.PathLike, got {path!r}") from None
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{what}: is a directory", os.fspath(target))
    if not target.parent.is_dir():
        message = f"{what}: the directory does not exist"
        raise FileNotFoundError(errno.ENOENT, message, os.fspath(target))
    return target


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
        try:
            with np.load(source, allow_pickle=False) as data:
                files = set(data.files)
                if _HEADER not in files:
                    raise _Foreign("an npz file but not an eventhooks one")
                header = _check(json.loads(str(data[_HEADER])), path)
                names = [f"w{i}" for i in range(len(files) - 1)]
                if files != {_HEADER, *names}:
                    raise _Foreign(f"unexpected arrays {sorted(files - {_HEADER, *names})}")
                weights = [np.array(data[name]) for name in names]
        except (_Foreign, zipfile.BadZipFile, OSError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ValueError) and str(exc).startswith(repr(os.fspath(path))):
                raise  # already names the file (_check)
            raise ValueError(f"{os.fspath(path)!r} is not an eventhooks artifact: {exc}") from None
    else:
        try:
            header = _check(json.loads(source.read_text(encoding="utf-8")), path)
            weights = [
                np.array(w["values"], dtype=header["config"]["dtype"]).reshape(w["shape"])
                for w in header["weights"]
            ]
        except (KeyError, TypeError, ValueError) as exc:  # JSON and Unicode errors included
            if isinstance(exc, ValueError) and str(exc).startswith(repr(os.fspath(path))):
                raise  # already names the file (_check)
            raise ValueError(f"{os.fspath(path)!r} is not an eventhooks artifact: {exc}") from None
    return header["config"], header.get("state", {}), weights


class _Foreign(Exception):
    """An npz file that is not one of ours (said with the file's name by read)."""


def _check(header: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not an eventhooks NumPy MLP artifact")
    if header.get("version") != VERSION:
        raise ValueError(
            f"{os.fspath(path)!r} has artifact version {header.get('version')!r}; "
            f"this eventhooks reads version {VERSION}"
        )
    config, state = header.get("config"), header.get("state", {})
    if not (
        isinstance(config, dict)
        and isinstance(config.get("hidden"), list)
        and all(_is_int(n) and n > 0 for n in config["hidden"])
        and _is_int(config.get("n_classes"))
        and isinstance(config.get("dtype"), str)
        and isinstance(state, dict)
        and _is_int(state.get("iterations", 0))
        and (state.get("epoch") is None or _is_int(state["epoch"]))
        and isinstance(state.get("optimizer", ""), str)
    ):
        raise ValueError(f"{os.fspath(path)!r} has a damaged header (config or state)")
    return header


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
