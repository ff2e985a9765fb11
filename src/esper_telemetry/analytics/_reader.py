"""Read the events of an ``events.jsonl`` file: all at once, or as the file grows.

:class:`EventCursor` is the one reader: it remembers how far it has read and, each
time, parses the complete lines added since with :func:`parse_line`. A last line
without its newline is left for later (its writer may be in the middle of it), a
line over :data:`MAX_LINE_BYTES` is skipped without being held in memory, and a file
that shrank or was replaced is read again from its start. :func:`read_events` runs
one cursor over a finished file, where an unterminated last line is a torn one.

A hub numbers its events (``seq``) strictly increasing, so a ``(run_id, seq)`` that a
file holds twice means two writers appended to one file. The first line with it is
kept; each later one is skipped and reported as a bad line (``BadLine.duplicate``),
so ``(run_id, seq)`` stays a key in every table built from the file. Events never
stamped by a hub (``seq`` -1) are not checked. Memory for this stays bounded by the
gaps in each run's numbering (ranges of seq seen), not by the number of events.
"""

from __future__ import annotations

import bisect
import glob
import itertools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from esper_telemetry.analytics._parse import BadLine, parse_line
from esper_telemetry.contracts import EVENTS_FILE, RunLayout, TelemetryEvent

logger = logging.getLogger("esper_telemetry.analytics")

#: A line longer than this is skipped (and reported) without being held in memory.
MAX_LINE_BYTES: Final = 64 * 1024 * 1024

#: Bad lines logged one by one per file; the rest are counted in one last warning.
_LOGGED_PER_FILE: Final = 10

OnBadLine = Callable[[BadLine], object]


@dataclass(frozen=True, slots=True)
class EventBatch:
    """What one read of an events file found.

    Attributes:
        events: The valid events of the complete lines read, in file order.
        bad_lines: The complete lines that could not be read, in file order.
        restarted: True when the file shrank or was replaced and was read again from
            its start: forget what the earlier batches said.
        more: True when ``max_lines`` was reached: there may be lines left for the
            next read.
    """

    events: tuple[TelemetryEvent, ...] = ()
    bad_lines: tuple[BadLine, ...] = ()
    restarted: bool = False
    more: bool = False


class EventCursor:
    """Reads the complete lines an events file gained since the last read.

    The file may not exist yet (it reads as empty) and may grow between reads; each
    :meth:`read` opens it, seeks to where the last one stopped and parses each new
    complete line with :func:`parse_line`. Blank lines are skipped silently; a
    ``(run_id, seq)`` seen on an earlier line is a bad line (see the module docstring).

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
    ...     cursor = EventCursor(d)
    ...     first = cursor.read()
    ...     with f.open("ab") as out:
    ...         _ = out.write(line[20:] + b"\\n")  # ... and finishes the line
    ...     second = cursor.read()
    >>> len(first.events), first.bad_lines, cursor.pending_bytes, len(second.events)
    (0, (), 0, 1)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        if p.is_dir():
            p = p / EVENTS_FILE
        elif not p.is_file():
            raise FileNotFoundError(f"no such run directory or events file: {str(p)!r}")
        self._path = p
        self._restarts = 0
        self._start_over()

    @property
    def path(self) -> Path:
        """The events file read."""
        return self._path

    @property
    def offset(self) -> int:
        """Bytes of the file read so far: where the next read starts."""
        return self._offset

    @property
    def line_number(self) -> int:
        """Lines read so far (the number of the last one; blank and bad lines count)."""
        return self._line_number

    @property
    def pending_bytes(self) -> int:
        """Bytes of a last line without its newline, seen by the last read and left for
        the next; 0 when there was none."""
        return self._pending

    @property
    def restarts(self) -> int:
        """Times the file was found shrunk or replaced, and read again from its start."""
        return self._restarts

    def read(self, max_lines: int | None = None) -> EventBatch:
        """Read the complete lines added since the last read (at most ``max_lines``).

        Never raises because of the file's content; a file that does not exist yet
        reads as empty.

        Raises:
            ValueError: ``max_lines`` is below 1.
            OSError: the file exists but cannot be read.
        """
        if max_lines is not None and max_lines < 1:
            raise ValueError(f"max_lines must be None or an int >= 1, got {max_lines!r}")
        restarts = self._restarts
        events: list[TelemetryEvent] = []
        bad: list[BadLine] = []
        for item in self._items(max_lines, final=False):
            if isinstance(item, BadLine):
                bad.append(item)
            else:
                events.append(item)
        return EventBatch(
            tuple(events),
            tuple(bad),
            restarted=self._restarts > restarts,
            more=max_lines is not None and self._lines_read_now >= max_lines,
        )

    # -- internals --------------------------------------------------------------------

    def _start_over(self) -> None:
        self._offset = 0
        self._line_number = 0
        self._lines_read_now = 0  # complete lines taken by the current (or last) read
        self._skipping_from: int | None = None  # number of an over-long line being skipped
        self._pending = 0
        self._file_id: tuple[int, int] | None = None
        self._seen = _SeenSeqs()

    def _items(self, max_lines: int | None, *, final: bool) -> Iterator[TelemetryEvent | BadLine]:
        """The events and bad lines of the lines after the cursor, one line at a time.

        The cursor moves past each line before its item is yielded. With ``final``,
        the file is taken as complete: an unterminated last line is read (as an
        event, or a torn :class:`BadLine`) instead of being left for later.
        """
        self._lines_read_now = 0
        try:
            f = self._path.open("rb")
        except FileNotFoundError:
            return
        with f:
            self._check_same_file(f)
            self._pending = 0
            f.seek(self._offset)
            yield from self._lines(f, max_lines, final=final)

    def _check_same_file(self, f: BinaryIO) -> None:
        st = os.fstat(f.fileno())
        file_id = (st.st_dev, st.st_ino)
        replaced = self._file_id is not None and file_id != self._file_id
        if replaced or st.st_size < self._offset:
            self._start_over()
            self._restarts += 1
        self._file_id = file_id

    def _lines(
        self, f: BinaryIO, max_lines: int | None, *, final: bool
    ) -> Iterator[TelemetryEvent | BadLine]:
        limit = MAX_LINE_BYTES
        while max_lines is None or self._lines_read_now < max_lines:
            line = f.readline(limit + 1)
            if not line:
                if final and self._skipping_from is not None:
                    yield self._end_skipped_line(limit)  # over-long, and the last line
                return
            complete = line.endswith(b"\n")
            if self._skipping_from is None and len(line) > limit and not complete:
                self._skipping_from = self._line_number + 1  # over-long: skip, never hold
            if self._skipping_from is not None:
                self._offset += len(line)
                if complete:
                    yield self._end_skipped_line(limit)
            elif complete or final:
                self._offset += len(line)
                self._line_number += 1
                self._lines_read_now += 1
                if line.strip():
                    yield self._item(line, torn=not complete)
            else:
                self._pending = len(line)  # the writer may be writing it: wait
                return

    def _item(self, line: bytes, *, torn: bool) -> TelemetryEvent | BadLine:
        event, reason = parse_line(line)
        if event is not None:
            if event.seq < 0 or self._seen.add(event.run_id, event.seq):
                return event
            return BadLine(
                self._path,
                self._line_number,
                f"duplicate seq {event.seq} of run {event.run_id!r}: an earlier line has it "
                "(two writers on one file?); skipped, the first is kept",
                torn=torn,
                duplicate=True,
            )
        if torn:
            reason = f"torn last line (no newline at the end): {reason}"
        return BadLine(self._path, self._line_number, reason, torn=torn)

    def _end_skipped_line(self, limit: int) -> BadLine:
        # An over-long line is over: it counts as one line, reported by its number.
        assert self._skipping_from is not None
        number, self._skipping_from = self._skipping_from, None
        self._line_number += 1
        self._lines_read_now += 1
        return BadLine(self._path, number, f"line longer than {limit} bytes")


def read_events(
    path: str | os.PathLike[str], *, on_bad_line: OnBadLine | None = None
) -> Iterator[TelemetryEvent]:
    """Yield every valid event of a run's events file, in file order, one line at a time.

    Memory stays bounded by one line, whatever the size of the file. Each line goes
    through :func:`parse_line` (UTF-8, strict JSON, contract validation; floats come
    back bit-exact, NaN and ±Inf included). A line that fails (a torn last line,
    invalid UTF-8 or JSON, a wrong shape, a missing envelope field, a
    ``schema_version`` newer than this package understands, a line over
    ``MAX_LINE_BYTES``, an integer outside int64, a ``(run_id, seq)`` an earlier line
    already had) is skipped: ``on_bad_line`` receives a :class:`BadLine` for it
    and a warning goes to the ``esper_telemetry.analytics`` logger (the first 10 per
    file one by one, then a count). Blank lines are skipped silently. The file is
    taken as finished: a last line without its newline is read if it is a valid event,
    and reported as torn otherwise (to follow a file being written, use
    :class:`EventCursor`).

    Args:
        path: A run directory (its ``events.jsonl``, then each rank's
            ``events.rank<N>.jsonl`` when every rank published, are read) or an events
            file.
        on_bad_line: Called with each skipped line, in file order.

    Returns:
        An iterator of events; the file is opened (read-only) on the first ``next``.

    Raises:
        FileNotFoundError: no such directory or file, or the directory holds no
            events file (raised here, before iterating).

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (pathlib.Path(d) / "events.jsonl").write_bytes(b'{"torn": tr')
    ...     bad = []
    ...     list(read_events(d, on_bad_line=bad.append)), bad[0].line_number, bad[0].torn
    ([], 1, True)
    """
    files = _run_files(path)
    if len(files) == 1:
        return _logged(EventCursor(files[0]), on_bad_line)
    return itertools.chain.from_iterable(_logged(EventCursor(f), on_bad_line) for f in files)


def events_file(path: str | os.PathLike[str]) -> Path:
    """The events file named by ``path``: the file itself, or ``path / "events.jsonl"``.

    Raises:
        FileNotFoundError: neither exists.
    """
    p = Path(path)
    if p.is_dir():
        candidate = p / EVENTS_FILE
        if not candidate.is_file():
            raise FileNotFoundError(f"no {EVENTS_FILE} in run directory {str(p)!r}")
        return candidate
    if p.is_file():
        return p
    raise FileNotFoundError(f"no such run directory or events file: {str(p)!r}")


def _run_files(path: str | os.PathLike[str]) -> list[Path]:
    """The events files of a run directory (all ranks'), or ``[path]`` for a file."""
    p = Path(path)
    if p.is_dir():
        files = RunLayout(p).event_files()
        if not files:
            raise FileNotFoundError(f"no {EVENTS_FILE} in run directory {str(p)!r}")
        return files
    return [events_file(p)]


def find_event_files(path_or_glob: str | os.PathLike[str]) -> list[Path]:
    """The events files named by a run directory, an events file or a glob of them.

    An existing path is taken as it is. Otherwise ``path_or_glob`` is a glob pattern:
    each match that is a directory holding ``events.jsonl`` contributes that file, a
    matching file whose name ends in ``.jsonl`` is taken as an events file, and anything
    else (a directory without events, a Parquet export...) is passed over. The result is
    sorted and free of duplicates.

    Raises:
        FileNotFoundError: the path does not exist, or the pattern matches no run.
    """
    text = os.fspath(path_or_glob)
    if Path(text).exists() or not glob.has_magic(text):
        return _run_files(text)
    found: dict[Path, Path] = {}
    for match in sorted(glob.glob(text)):
        p = Path(match)
        for file in RunLayout(p).event_files() if p.is_dir() else [p]:
            if file.is_file() and file.name.endswith(".jsonl"):
                found.setdefault(file.resolve(), file)
    if not found:
        raise FileNotFoundError(
            f"no run directory with an {EVENTS_FILE}, and no events file, matches {text!r}"
        )
    return list(found.values())


# -- internals ------------------------------------------------------------------------


def _logged(cursor: EventCursor, on_bad_line: OnBadLine | None) -> Iterator[TelemetryEvent]:
    bad_count = 0
    for item in cursor._items(None, final=True):
        if not isinstance(item, BadLine):
            yield item
            continue
        bad_count += 1
        if bad_count <= _LOGGED_PER_FILE:
            logger.warning("skipped a bad line of an events file: %s", item)
        if on_bad_line is not None:
            on_bad_line(item)
    if bad_count > _LOGGED_PER_FILE:
        logger.warning(
            "%s: %d bad lines skipped in all (the first %d were logged)",
            cursor.path,
            bad_count,
            _LOGGED_PER_FILE,
        )


class _SeenSeqs:
    """The ``(run_id, seq)`` pairs read so far, as sorted, disjoint ranges of seq per run.

    A hub's seqs are consecutive, so a run read in order is one range; memory grows
    only with the gaps (lines lost or bad) and the runs, never with the events.
    """

    __slots__ = ("_runs",)

    def __init__(self) -> None:
        # run_id -> (starts, ends): range i holds starts[i] .. ends[i], both included.
        self._runs: dict[str, tuple[list[int], list[int]]] = {}

    def add(self, run_id: str, seq: int) -> bool:
        """Record ``seq`` of ``run_id``; False when it was recorded before."""
        ranges = self._runs.get(run_id)
        if ranges is None:
            self._runs[run_id] = ([seq], [seq])
            return True
        starts, ends = ranges
        if seq == ends[-1] + 1:  # the common case: the next seq of a run read in order
            ends[-1] = seq
            return True
        if seq > ends[-1]:
            starts.append(seq)
            ends.append(seq)
            return True
        i = bisect.bisect_right(starts, seq) - 1  # the last range starting at or before seq
        if i >= 0 and seq <= ends[i]:
            return False
        # seq falls in the gap after range i (or before the first range): join neighbours.
        joins_left = i >= 0 and ends[i] + 1 == seq
        joins_right = i + 1 < len(starts) and starts[i + 1] - 1 == seq
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = seq
        elif joins_right:
            starts[i + 1] = seq
        else:
            starts.insert(i + 1, seq)
            ends.insert(i + 1, seq)
        return True
