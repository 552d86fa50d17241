"""``python -m eventhooks``: the same as the ``eventhooks`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
