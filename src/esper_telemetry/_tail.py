"""Which run a log file already holds, and where it ends: read from the end, a line at a time.

A run directory belongs to one run. Before a backend appends to ``events.jsonl`` or
``log.jsonl`` it asks :func:`read_tail` what is there: the last line that reads as a
record of a run (its run id, ``seq`` and ``update``), and whether the file ends in a
torn line (bytes after the last newline, left by a killed writer or a full disk).
Only the end of the file is read, however long the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeGuard

#: How much of the end of a file is read at a time.
_BLOCK = 1 << 16
#: How many lines from the end are tried before the file counts as holding no record.
_MAX_LINES = 1000


class Position(NamedTuple):
    """Where a run stands: its id, the ``seq`` and the PPO ``update`` of a record."""

    run_id: str
    seq: int
    update: int


@dataclass(frozen=True)
class Tail:
    """The end of a log file."""

    size: int
    """The file's size in bytes (0: empty or missing)."""
    last: Position | None
    """The last record that reads (None: no line near the end does)."""
    torn_at: int | None
    """Where a torn last line starts (None: the file ends with a newline)."""


def read_tail(path: str | os.PathLike[str], parse: Callable[[bytes], Position | None]) -> Tail:
    """The end of the file at ``path``; ``parse`` turns one line into a position or None.

    A last line without its newline counts as a record if it parses (readers read it
    too), else as torn. Lines are tried from the end; the file holds no record when
    none of its last 1000 lines parses.

    Raises:
        OSError: the file exists but cannot be read.
    """
    if not Path(path).exists():
        return Tail(0, None, None)
    with Path(path).open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        window = _BLOCK
        while True:
            start = max(0, size - window)
            file.seek(start)
            lines = file.read(size - start).split(b"\n")
            unterminated = lines.pop()
            if start > 0:
                lines.pop(0)  # it began before the window
            if unterminated.strip():
                position = parse(unterminated)
                if position is not None:
                    return Tail(size, position, None)
            torn_at = size - len(unterminated) if unterminated else None
            for n, line in enumerate(reversed(lines)):
                if n >= _MAX_LINES:
                    return Tail(size, None, torn_at)
                position = parse(line) if line.strip() else None
                if position is not None:
                    return Tail(size, position, torn_at)
            if start == 0:
                return Tail(size, None, torn_at)
            window *= 4


def event_position(line: bytes) -> Position | None:
    """The position of one ``events.jsonl`` or ``log.jsonl`` line (both carry ``run_id``,
    ``seq`` and ``update`` at the top level), or None."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    run_id, seq, update = record.get("run_id"), record.get("seq"), record.get("update")
    if not (isinstance(run_id, str) and _count(seq) and _count(update)):
        return None
    return Position(run_id, seq, update)


def _count(value: object) -> TypeGuard[int]:
    return type(value) is int and value >= 0


def truncate_torn(path: str | os.PathLike[str], tail: Tail) -> None:
    """Drop the torn last line of ``tail`` from the file (for a run that resumes)."""
    if tail.torn_at is not None:
        os.truncate(path, tail.torn_at)


def claim(path: Path, run_id: str, *, resume: bool, live: bool) -> Position | None:
    """Check that the log at ``path`` may take the events of run ``run_id``.

    A log belongs to one run. An empty or missing file takes any run. A file whose last
    record is of ``run_id`` takes it if this process's hub already emitted events of the
    run (``live``: a backend subscribed again) or if the run ``resume``s; the torn last
    line of a resumed file is dropped first. Anything else is refused, with nothing
    modified.

    Returns:
        The position to resume after, or None to start afresh.

    Raises:
        ValueError: the file holds another run, the same run without ``resume``, or no
            esper record at all; the message names the directory, the run found there
            and the ways out.
        OSError: the file cannot be read.
    """
    tail = read_tail(path, event_position)
    if tail.size == 0:
        return None
    directory = path.parent
    if tail.last is None and tail.torn_at == 0:
        return None  # only a cut-off first line: no run to protect; it stays a line apart
    if tail.last is None:
        raise ValueError(
            f"{path} holds {tail.size} bytes but no line esper can read as an event; "
            "give this run another directory"
        )
    found = tail.last.run_id
    ways_out = (
        f"give this run a new run_id or directory, or continue run {found!r} with "
        f"resume=True (esper ppo --resume {directory})"
    )
    if found != run_id:
        raise ValueError(
            f"{directory} already holds run {found!r} ({path.name}), not run {run_id!r}: "
            + ways_out
            + (f" and run_id={found!r}" if resume else "")
        )
    if live:
        return None
    if not resume:
        raise ValueError(
            f"{directory} already holds run {found!r} ({path.name}, up to update "
            f"{tail.last.update}); a second run must not share its log: " + ways_out
        )
    truncate_torn(path, tail)
    return tail.last
