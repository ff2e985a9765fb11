"""The exceptions esper raises.

::

    EsperError                    base of everything esper raises on purpose
    ├── HubClosedError            emit()/set_level() on a hub that is closing or closed
    └── TrainingHalted            a subscriber asked the run to stop (e.g. a critical anomaly)

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


class TrainingHalted(EsperError):
    """A subscriber asked the run to stop, and the trainer reached a halt check.

    Raised by ``TelemetryHub.raise_if_halted()`` and by ``emit_ppo_update_event`` once
    ``TelemetryHub.request_halt`` was called (the anomaly escalator does so with
    ``halt_on="critical"``). Everything emitted before is still delivered; close the hub
    to flush it.

    Attributes:
        reason: What asked for the halt, in one sentence.
        update: The PPO update it concerns, when known.
    """

    def __init__(self, reason: str, *, update: int | None = None) -> None:
        self.reason = reason
        self.update = update
        where = f" (update {update})" if update is not None else ""
        super().__init__(f"training halted{where}: {reason}")
