"""The hub: publishes each telemetry event to every subscriber, independently.

Knows blinker and the contracts; never imports torch or a backend. A subscriber is a
:class:`Backend` subclass, any object with ``handle(event)`` (:class:`HandlesEvents`),
or a plain callable (together: :data:`Subscriber`); one that subscribes to a single
event class may be typed for it (:class:`HandlesEventsOf`).
"""

from esper_telemetry.hub._hub import DEFAULT_QUEUE_SIZE, TelemetryHub
from esper_telemetry.hub._protocol import Backend, HandlesEvents, HandlesEventsOf, Subscriber
from esper_telemetry.hub._redact import REDACTED, redact_secrets

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "REDACTED",
    "Backend",
    "HandlesEvents",
    "HandlesEventsOf",
    "Subscriber",
    "TelemetryHub",
    "redact_secrets",
]
