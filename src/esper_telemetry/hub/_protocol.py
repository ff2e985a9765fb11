"""The extension point: what the hub accepts as a subscriber.

Three shapes are accepted, in this order of preference:

- a subclass of :class:`Backend`, the base class: it inherits a no-op ``flush()``,
  ``close()``, ``on_subscribe(hub)`` and an ``undelivered()`` of 0, and overrides
  ``handle(event)`` and whichever of the others it needs;
- any object with a ``handle(event)`` method (duck-typed; the optional methods are used
  when present, e.g. a test double or a plugin that cannot inherit);
- a plain callable taking the event.

``isinstance(obj, Backend)`` is nominal (True for subclasses only): it answers "was this
written as a backend", not "can the hub use it"; :meth:`TelemetryHub.subscribe` takes all
three shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from esper_telemetry.contracts import TelemetryEvent

if TYPE_CHECKING:
    from esper_telemetry.hub._hub import TelemetryHub


class Backend:
    """Base class of subscriber objects: override ``handle(event)``, and the others as needed.

    ``handle`` receives every event the backend subscribed to, one at a time and in
    strictly increasing ``seq``. A backend may raise from any method: the hub counts
    and logs the failure and goes on delivering to everyone else.

    >>> class Printer(Backend):
    ...     def handle(self, event):
    ...         print(event.event_type.value, event.seq)
    >>> from esper_telemetry.contracts import RunStarted, RunStartedPayload
    >>> from esper_telemetry.hub import TelemetryHub
    >>> with TelemetryHub("doc") as hub:
    ...     _ = hub.subscribe(Printer(), mode="inline")
    ...     _ = hub.emit(RunStarted(update=0, payload=RunStartedPayload()))
    RUN_STARTED 0
    """

    def handle(self, event: TelemetryEvent) -> None:
        """Consume one event. Every backend overrides this.

        Raises:
            NotImplementedError: the subclass did not override it.
        """
        raise NotImplementedError(f"{type(self).__name__} must override handle(event)")

    def flush(self) -> None:
        """Make everything handled so far durable or visible.

        Called by ``TelemetryHub.flush`` and ``unsubscribe``, and before ``close()``,
        on the backend's own thread in thread mode. The default does nothing.
        """

    def close(self) -> None:
        """Release what the backend holds; called once, when the hub closes, after a flush.

        The default does nothing.
        """

    def on_subscribe(self, hub: TelemetryHub) -> None:
        """Called once by ``TelemetryHub.subscribe``, before the first event.

        Learn the hub here (its ``run_id``, ``level``, ``emit``) or fail early: if this
        raises, the backend is not subscribed and the error reaches the caller. The
        default does nothing.
        """

    def undelivered(self) -> int:
        """How many events it handled but could not deliver or write (its own count).

        Reported as ``undelivered`` in ``TelemetryHub.stats()`` and counted as lost.
        Called from whichever thread asks for stats, so it must be cheap, must not block
        and must not call into the hub. The default: 0.
        """
        return 0


class HandlesEvents(Protocol):
    """Any object with ``handle(event)``; what a duck-typed subscriber must offer."""

    def handle(self, event: TelemetryEvent) -> object:
        """Consume one event."""


#: Anything ``TelemetryHub.subscribe`` accepts.
Subscriber = Backend | HandlesEvents | Callable[[TelemetryEvent], object]

E_contra = TypeVar("E_contra", contravariant=True)


class HandlesEventsOf(Protocol[E_contra]):
    """An object whose ``handle`` takes one kind of event (``handle(e: PPOUpdateCompleted)``).

    What ``subscribe(obj, events=PPOUpdateCompleted)`` accepts under a type checker: a
    subscriber that asks only for one class may be typed for that class alone.
    """

    def handle(self, event: E_contra, /) -> object:
        """Consume one event of the kind subscribed to."""
