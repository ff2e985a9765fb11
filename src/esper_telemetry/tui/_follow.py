"""Follow a run's ``events.jsonl`` while another process appends to it.

The same reading rules as :func:`esper_telemetry.analytics.read_events` (each line is
parsed as JSON and validated against the contracts; nothing is executed), plus what a
growing file needs: the follower remembers how far it read, picks up the lines that
landed since, and leaves a last line without its newline alone until the rest of it
arrives, because the writer may be in the middle of writing it. Lines that are
complete and still unreadable are reported as :class:`~esper_telemetry.analytics.BadLine`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from esper_telemetry.analytics import MAX_LINE_BYTES, BadLine
from esper_telemetry.analytics._reader import _parse as parse_line  # the one line parser
from esper_telemetry.backends.analytics import EVENTS_FILE
from esper_telemetry.contracts import TelemetryEvent


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one look at the file found.

    Attributes:
        events: The valid events of the complete lines read, in file order.
        bad_lines: The complete lines that could not be read, in file order.
        restarted: True when the file shrank (it was replaced or truncated) and was
            read again from its start: forget what the earlier chunks said.
        more: True when ``max_lines`` was reached: there may be lines left for the
            next look.
    """

    events: tuple[TelemetryEvent, ...] = ()
    bad_lines: tuple[BadLine, ...] = ()
    restarted: bool = False
    more: bool = False


@dataclass
class _Cursor:
    offset: int = 0
    line_number: int = 0
    skipping_from: int | None = None  # line number of an over-long line being skipped
    tail_bytes: int = 0  # bytes of a last line still without its newline


class LogFollower:
    """Reads the new complete lines of an events file each time it is polled.

    Args:
        path: A run directory (its ``events.jsonl``, which may not exist yet) or an
            events file.

    Raises:
        FileNotFoundError: ``path`` is neither an existing directory nor a file.

    >>> import tempfile, pathlib
    >>> from esper_telemetry.contracts import PPOUpdatePayload, TelemetryEvent
    >>> line = TelemetryEvent(update=0, run_id="r", seq=0, payload=PPOUpdatePayload(
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
        p = Path(path)
        if p.is_dir():
            p = p / EVENTS_FILE
        elif not p.is_file():
            raise FileNotFoundError(f"no such run directory or events file: {str(p)!r}")
        self._path = p
        self._cursor = _Cursor()

    @property
    def path(self) -> Path:
        """The events file followed."""
        return self._path

    @property
    def lines_read(self) -> int:
        """Complete lines read so far (the number of the last one)."""
        return self._cursor.line_number

    @property
    def waiting_for(self) -> str | None:
        """What the follower is waiting for, in words; None when it is up to date."""
        if not self._path.exists():
            return f"waiting for {self._path.name} to appear"
        c = self._cursor
        if c.tail_bytes:
            return (
                f"waiting for the rest of line {c.line_number + 1} "
                f"({c.tail_bytes} bytes so far, no newline yet)"
            )
        return None

    def poll(self, max_lines: int = 2000) -> Chunk:
        """Read the complete lines that landed since the last poll (at most ``max_lines``).

        Never raises because of the file's content; a file that does not exist yet
        reads as empty.

        Raises:
            OSError: the file exists but cannot be read.
        """
        try:
            size = self._path.stat().st_size
        except FileNotFoundError:
            return Chunk()
        restarted = size < self._cursor.offset
        if restarted:
            self._cursor = _Cursor()
        events: list[TelemetryEvent] = []
        bad: list[BadLine] = []
        c = self._cursor
        c.tail_bytes = 0
        lines = 0
        with self._path.open("rb") as f:
            f.seek(c.offset)
            while lines < max_lines:
                line = f.readline(MAX_LINE_BYTES + 1)
                if not line:
                    break
                complete = line.endswith(b"\n")
                if c.skipping_from is not None:
                    c.offset += len(line)
                    if complete:
                        bad.append(self._bad(c.skipping_from, _too_long()))
                        c.skipping_from = None
                        c.line_number += 1
                        lines += 1
                    continue
                if not complete:
                    if len(line) > MAX_LINE_BYTES:
                        c.skipping_from = c.line_number + 1
                        c.offset += len(line)
                        continue
                    c.tail_bytes = len(line)  # the writer may be writing it: wait
                    break
                c.offset += len(line)
                c.line_number += 1
                lines += 1
                if not line.strip():
                    continue
                event, reason = parse_line(line.rstrip(b"\r\n"))
                if event is not None:
                    events.append(event)
                else:
                    bad.append(self._bad(c.line_number, reason))
            more = lines >= max_lines
        return Chunk(tuple(events), tuple(bad), restarted=restarted, more=more)

    def _bad(self, line_number: int, reason: str) -> BadLine:
        return BadLine(path=self._path, line_number=line_number, reason=reason)


def _too_long() -> str:
    return f"line longer than {MAX_LINE_BYTES} bytes"
