"""Helpers for testing code that publishes telemetry; esper's own tests use them first.

>>> from esper_telemetry import TelemetryHub, emit_ppo_update_event
>>> with TelemetryHub("t") as hub, capture_events(hub) as rec:
...     _ = emit_ppo_update_event(hub, update=0, metrics={
...         "policy_loss": 0.0, "value_loss": 1.0, "entropy": 0.7})
>>> [e.event_type.value for e in rec.events]
['PPO_UPDATE_COMPLETED']
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from esper_telemetry.contracts import (
    EventBase,
    EventPayload,
    EventType,
    TelemetryEvent,
    event_class,
)
from esper_telemetry.hub import Backend, TelemetryHub

#: An event kind as a filter: its class, its EventType, or the type's name.
Kind = type[EventBase] | EventType | str

__all__ = ["Kind", "RecordingBackend", "capture_events"]


class RecordingBackend(Backend):
    """A backend that keeps every event it receives, in order. Thread-safe.

    Attributes:
        flushes: How many times ``flush()`` was called.
        closed: True once ``close()`` was called.
    """

    def __init__(self, name: str = "recorder") -> None:
        self.name = name
        self._events: list[TelemetryEvent] = []
        self._lock = threading.Lock()
        self.flushes = 0
        self.closed = False

    def handle(self, event: TelemetryEvent) -> None:
        with self._lock:
            self._events.append(event)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True

    @property
    def events(self) -> list[TelemetryEvent]:
        """A copy of the events received so far."""
        with self._lock:
            return list(self._events)

    def of_type(self, *kinds: Kind) -> list[TelemetryEvent]:
        """The events of the given kinds (classes or event types), in the order received."""
        wanted = tuple(k if isinstance(k, type) else event_class(k) for k in kinds)
        return [e for e in self.events if isinstance(e, wanted)]

    def payloads(self, kind: Kind) -> list[EventPayload]:
        """The payloads of the events of one kind, in the order received."""
        return [e.payload for e in self.of_type(kind)]

    def clear(self) -> None:
        """Forget what was received."""
        with self._lock:
            self._events.clear()


@contextmanager
def capture_events(
    hub: TelemetryHub, *, events: Iterable[Kind] | None = None
) -> Iterator[RecordingBackend]:
    """Record what ``hub`` publishes inside the ``with`` block.

    The recorder is subscribed inline, so an event is in ``recorder.events`` as soon
    as ``emit`` returns; it is unsubscribed on exit.
    """
    recorder = RecordingBackend(name="capture_events")
    name = hub.subscribe(recorder, events=events, mode="inline", name=_free_name(hub))
    try:
        yield recorder
    finally:
        if not hub.closed:
            hub.unsubscribe(name)


def _free_name(hub: TelemetryHub) -> str:
    taken = {s.name for s in hub.stats().subscribers}
    n = 1
    while f"capture_events#{n}" in taken:
        n += 1
    return f"capture_events#{n}"
