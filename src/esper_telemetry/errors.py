"""The exceptions esper raises.

::

    EsperError                    base of everything esper raises on purpose
    └── HubClosedError            emit()/set_level() on a hub that is closing or closed

Bad arguments raise the built-in ``TypeError`` or ``ValueError`` (pydantic's
``ValidationError`` is a ``ValueError``), with a message that names the argument.
"""

from __future__ import annotations


class EsperError(Exception):
    """Base class of the errors esper raises on purpose."""


class HubClosedError(EsperError, RuntimeError):
    """An event was emitted on a hub that no longer accepts events.

    The event was not published to any subscriber. Emit before ``close()``, or create
    a new ``TelemetryHub``.
    """
