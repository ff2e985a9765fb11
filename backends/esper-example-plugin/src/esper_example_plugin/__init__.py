"""The smallest esper backend plugin: one JSON line per event, its type and update.

Installed, it shows in ``esper backends`` as ``example``; ``esper ppo --backend
example:path=events.txt`` subscribes it. Without ``path`` (as when esper loads every
installed plugin by itself) it writes ``esper-example-events.jsonl`` in the current
folder.

>>> import json, tempfile, pathlib
>>> from esper_telemetry.contracts import RunStarted, RunStartedPayload
>>> from esper_telemetry.hub import TelemetryHub
>>> folder = tempfile.TemporaryDirectory()
>>> out = pathlib.Path(folder.name) / "events.jsonl"
>>> with TelemetryHub("doc") as hub:
...     _ = hub.subscribe(make_backend(path=str(out)))
...     _ = hub.emit(RunStarted(update=0, payload=RunStartedPayload()))
>>> json.loads(out.read_text())
{'event_type': 'RUN_STARTED', 'update': 0}
>>> folder.cleanup()
"""

from __future__ import annotations

import json
from pathlib import Path

from esper_telemetry.contracts import TelemetryEvent
from esper_telemetry.hub import Backend

__all__ = ["EventLines", "make_backend"]

DEFAULT_PATH = "esper-example-events.jsonl"


class EventLines(Backend):
    """Appends ``{"event_type": ..., "update": ...}`` per event to a file, one line each."""

    name = "example"

    def __init__(self, path: Path) -> None:
        # Opened here, so a path that cannot be written fails the plugin before training.
        self._file = path.open("a", encoding="utf-8")

    def handle(self, event: TelemetryEvent) -> None:
        """Write the event's type and update as one JSON line."""
        line = {"event_type": event.event_type.value, "update": event.update}
        self._file.write(json.dumps(line) + "\n")

    def flush(self) -> None:
        """Hand what was written to the operating system."""
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def make_backend(path: str = DEFAULT_PATH) -> EventLines:
    """Writes each event's type and update as a JSON line to the file named by path."""
    return EventLines(Path(path))
