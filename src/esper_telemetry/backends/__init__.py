"""Backends: subscribers that carry events to W&B, logs, analytics, the terminal.

Every backend implements :class:`Backend` (``handle(event)``, optional ``flush()`` and
``close()``) and knows only the contracts and its own library.
"""

from esper_telemetry.hub import Backend

__all__ = ["Backend"]
