"""Adapters that make frameworks emit eventhooks events (installed as ``eventhooks.adapters``).

Each adapter imports its framework lazily and uses only eventhooks' public names, as an
outside library would.
"""
