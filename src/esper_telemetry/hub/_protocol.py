"""The extension point: what the hub accepts as a subscriber."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from esper_telemetry.contracts import TelemetryEvent


@runtime_checkable
class Backend(Protocol):
    """A subscriber object: ``handle(event)`` plus, optionally, ``flush()`` and ``close()``.

    ``handle`` receives every event the backend subscribed to, one at a time and in
    strictly increasing ``seq``. ``flush()`` is called by ``TelemetryHub.flush`` and
    before ``close()``; it should make everything handled so far durable or visible.
    ``close()`` is called once when the hub closes. A backend may raise: the hub
    counts and logs the failure and goes on delivering to everyone else.

    Also optional: ``on_subscribe(hub)``, called once by ``TelemetryHub.subscribe``
    before the first event, to learn the hub (its ``run_id``, ``level``, ``emit``) or
    to fail early; if it raises, the backend is not subscribed.

    A plain function taking the event is a valid subscriber too.
    """

    def handle(self, event: TelemetryEvent) -> None:
        """Consume one event."""


#: Anything ``TelemetryHub.subscribe`` accepts.
Subscriber = Backend | Callable[[TelemetryEvent], object]
