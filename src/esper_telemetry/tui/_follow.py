"""Follow a run's ``events.jsonl`` while another process appends to it.

A thin view over :class:`esper_telemetry.analytics.EventCursor`, the one incremental
reader of events files: the same line parser as
:func:`~esper_telemetry.analytics.read_events`, the new complete lines on each poll, a
last line without its newline left alone until the rest of it arrives (the writer may
be in the middle of it), a file that shrank or was replaced read again from its start.
Lines that are complete and still unreadable are reported as
:class:`~esper_telemetry.analytics.BadLine`.
"""

from __future__ import annotations

import os
from pathlib import Path

from esper_telemetry.analytics import EventBatch, EventCursor

#: What one poll found: :class:`~esper_telemetry.analytics.EventBatch` (events, bad_lines,
#: restarted, more), under the name the panel has always used.
Chunk = EventBatch


class LogFollower:
    """Reads the new complete lines of an events file each time it is polled.

    Args:
        path: A run directory (its ``events.jsonl``, which may not exist yet) or an
            events file.

    Raises:
        FileNotFoundError: ``path`` is neither an existing directory nor a file.

    >>> import tempfile, pathlib
    >>> from esper_telemetry.contracts import PPOUpdateCompleted, PPOUpdatePayload
    >>> line = PPOUpdateCompleted(update=0, run_id="r", seq=0, payload=PPOUpdatePayload(
    ...     policy_loss=0.1, value_loss=0.2, entropy=0.6)).model_dump_json().encode()
    >>> with tempfile.TemporaryDirectory() as d:
    ...     f = pathlib.Path(d) / "events.jsonl"
    ...     _ = f.write_bytes(line[:20])            # the writer is half-way through
    ...     follower = LogFollower(d)
    ...     first = follower.poll()
    ...     with f.open("ab") as out:
    ...         _ = out.write(line[20:] + b"\\n")  # ... and finishes the line
    ...     second = follower.poll()
    >>> len(first.events), first.bad_lines, len(second.events)
    (0, (), 1)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._cursor = EventCursor(path)

    @property
    def path(self) -> Path:
        """The events file followed."""
        return self._cursor.path

    @property
    def lines_read(self) -> int:
        """Complete lines read so far (the number of the last one)."""
        return self._cursor.line_number

    @property
    def waiting_for(self) -> str | None:
        """What the follower is waiting for, in words; None when it is up to date."""
        if not self.path.exists():
            return f"waiting for {self.path.name} to appear"
        pending = self._cursor.pending_bytes
        if pending:
            return (
                f"waiting for the rest of line {self.lines_read + 1} "
                f"({pending} bytes so far, no newline yet)"
            )
        return None

    def poll(self, max_lines: int = 2000) -> Chunk:
        """Read the complete lines that landed since the last poll (at most ``max_lines``).

        Never raises because of the file's content; a file that does not exist yet
        reads as empty.

        Raises:
            ValueError: ``max_lines`` is below 1.
            OSError: the file exists but cannot be read.
        """
        return self._cursor.read(max_lines)
