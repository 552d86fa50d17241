"""``python -m eventhooks``: the same as the ``eventhooks`` command."""

from .cli import main

raise SystemExit(main())
