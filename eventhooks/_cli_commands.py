"""How to type a console script of this Python's environment, so that a printed command can be
pasted and run as shown (``make demo`` prints ``.venv/bin/eventhooks ...`` unless the venv is
activated)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def eventhooks_command() -> str:
    """How to type the ``eventhooks`` command that is running, so a printed command can be
    pasted as shown: ``eventhooks`` if that name on PATH is this script, else the script
    next to ``sys.executable`` (``.venv/bin/eventhooks``, relative when below the working
    folder), else ``<python> -m eventhooks``."""
    return script_command("eventhooks", "eventhooks")


def script_command(name: str, module: str) -> str:
    """How to type the console script ``name`` of this Python's environment, so a printed
    command can be pasted as shown (see :func:`eventhooks_command`); ``<python> -m module``
    when the environment has no such script."""
    folder = Path(sys.executable).parent
    script = folder / (f"{name}.exe" if os.name == "nt" else name)
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m {module}"
    on_path = shutil.which(name)
    if on_path is not None and _same_file(on_path, script):
        return name
    absolute = Path(os.path.abspath(script))
    try:
        relative = absolute.relative_to(os.path.abspath(os.getcwd()))
    except ValueError:
        return shlex.quote(str(absolute))
    return shlex.quote(str(relative) if relative.parent != Path() else f"./{relative}")


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
