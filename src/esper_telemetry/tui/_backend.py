"""PanelBackend: the hub subscriber that feeds the live panel.

It is a backend like any other. Subscribe it with :func:`subscribe_panel` (a thread
of its own and a ``drop_oldest`` queue): its ``handle`` posts each event to the panel
(``post_message`` is thread-safe) and waits until the panel has absorbed it, so a
slow terminal backs up this subscriber's queue, where the hub drops the oldest events
and counts them, and never the training loop. Once the panel has exited, ``handle``
returns at once and counts the event as missed: it never raises into the hub.

Because ``handle`` waits for the panel, never call ``hub.flush()`` or ``hub.close()``
on the panel's own thread (in a Textual handler or timer): the panel could not absorb
the events they wait for, and they would wait until their timeout. Close the hub from
the thread that trains, as :func:`~esper_telemetry.tui.run_panel` callers do.
"""

from __future__ import annotations

import threading

from esper_telemetry.contracts import TelemetryEvent
from esper_telemetry.hub import TelemetryHub
from esper_telemetry.tui._app import HealthPanel

#: Queue capacity of the panel's subscription: a view only needs recent events.
PANEL_QUEUE_SIZE = 256

_ACK_POLL_S = 0.05


class PanelBackend:
    """Forwards every event it handles to a :class:`HealthPanel`.

    Args:
        app: The panel to feed.

    Attributes:
        missed: Events handled while the panel was not up (before it started or after
            it exited); the panel never saw them.
    """

    name = "tui"

    def __init__(self, app: HealthPanel) -> None:
        if not isinstance(app, HealthPanel):
            raise TypeError(f"app must be a HealthPanel, got {type(app).__name__}")
        self.app = app
        self.missed = 0
        self._closed = threading.Event()

    def __repr__(self) -> str:
        return f"PanelBackend(missed={self.missed}, closed={self._closed.is_set()})"

    def handle(self, event: TelemetryEvent) -> None:
        """Post ``event`` to the panel and wait until it was absorbed or the panel left."""
        app = self.app
        if self._closed.is_set() or not app.accepting_events:
            self.missed += 1
            return
        ack = threading.Event()
        try:
            posted = app.post_message(HealthPanel.Telemetry((event,), ack=ack))
        except RuntimeError:  # the panel's event loop closed under us
            posted = False
        if not posted:
            self.missed += 1
            return
        while not ack.wait(_ACK_POLL_S):
            if self._closed.is_set() or not app.accepting_events:
                return

    def close(self) -> None:
        """Stop forwarding; later events are counted as missed."""
        self._closed.set()


def subscribe_panel(
    hub: TelemetryHub, app: HealthPanel, *, queue_size: int = PANEL_QUEUE_SIZE
) -> str:
    """Subscribe a :class:`PanelBackend` feeding ``app``, the way a view should be.

    On a thread of its own with a bounded ``drop_oldest`` queue, so that a slow
    terminal never slows training (drops are counted in ``hub.stats()``).

    Returns:
        The subscription's name (``"tui"`` unless taken).
    """
    return hub.subscribe(
        PanelBackend(app), mode="thread", when_full="drop_oldest", queue_size=queue_size
    )
