"""Stream validated events out of an ``events.jsonl`` file, skipping and reporting bad lines.

Only JSON parsing and contract validation touch the file's bytes: nothing is executed,
evaluated or unpickled.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from pydantic import ValidationError

from esper_telemetry.backends.analytics import EVENTS_FILE
from esper_telemetry.contracts import SCHEMA_VERSION, TelemetryEvent

logger = logging.getLogger("esper_telemetry.analytics")

#: A line longer than this is skipped (and reported) without being held in memory.
MAX_LINE_BYTES: Final = 64 * 1024 * 1024

#: The envelope fields every collector has written since schema_version 1. Each must be
#: in the line itself: a default (a timestamp of "now", seq -1) would silently invent
#: data the log never held.
_ENVELOPE_FIELDS: Final = frozenset(
    {
        "event_type",
        "schema_version",
        "run_id",
        "seq",
        "update",
        "timestamp",
        "rank",
        "level",
        "payload",
    }
)

#: Bad lines logged one by one per file; the rest are counted in one last warning.
_LOGGED_PER_FILE: Final = 10

OnBadLine = Callable[["BadLine"], object]


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line of an events file that was skipped, and why.

    Attributes:
        path: The events file.
        line_number: 1-based number of the line in the file.
        reason: One sentence: what is wrong with the line.
        torn: True for a last line without its newline (a writer that was killed or
            failed mid-write, or one that is writing it right now).
    """

    path: Path
    line_number: int
    reason: str
    torn: bool = False

    def __str__(self) -> str:
        return f"{self.path}:{self.line_number}: {self.reason}"


def read_events(
    path: str | os.PathLike[str], *, on_bad_line: OnBadLine | None = None
) -> Iterator[TelemetryEvent]:
    """Yield every valid event of a run's events file, in file order, one line at a time.

    Memory stays bounded by one line, whatever the size of the file. Each line is
    decoded as UTF-8, parsed as JSON and validated into a ``TelemetryEvent``; floats
    come back bit-exact, NaN and ±Inf included. A line that fails (a torn last line,
    invalid UTF-8 or JSON, a wrong shape, a missing envelope field, a ``schema_version``
    newer than this package understands, a line over ``MAX_LINE_BYTES``) is skipped:
    ``on_bad_line`` receives a :class:`BadLine` for it and a warning goes to the
    ``esper_telemetry.analytics`` logger (the first 10 per file one by one, then a
    count). Blank lines are skipped silently.

    Args:
        path: A run directory (its ``events.jsonl`` is read) or an events file.
        on_bad_line: Called with each skipped line, in file order.

    Returns:
        An iterator of events; the file is opened (read-only) on the first ``next``.

    Raises:
        FileNotFoundError: no such directory or file, or the directory holds no
            ``events.jsonl`` (raised here, before iterating).

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (pathlib.Path(d) / "events.jsonl").write_bytes(b'{"torn": tr')
    ...     bad = []
    ...     list(read_events(d, on_bad_line=bad.append)), bad[0].line_number, bad[0].torn
    ([], 1, True)
    """
    return _iter_file(events_file(path), on_bad_line)


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
        return [events_file(text)]
    found: dict[Path, Path] = {}
    for match in sorted(glob.glob(text)):
        p = Path(match)
        if p.is_dir():
            p = p / EVENTS_FILE
        if p.is_file() and p.name.endswith(".jsonl"):
            found.setdefault(p.resolve(), p)
    if not found:
        raise FileNotFoundError(
            f"no run directory with an {EVENTS_FILE}, and no events file, matches {text!r}"
        )
    return list(found.values())


# -- internals ------------------------------------------------------------------------


def _iter_file(path: Path, on_bad_line: OnBadLine | None) -> Iterator[TelemetryEvent]:
    bad_count = 0

    def skip(number: int, reason: str, *, torn: bool = False) -> None:
        nonlocal bad_count
        bad_count += 1
        bad = BadLine(path=path, line_number=number, reason=reason, torn=torn)
        if bad_count <= _LOGGED_PER_FILE:
            logger.warning("skipped a bad line of an events file: %s", bad)
        if on_bad_line is not None:
            on_bad_line(bad)

    with path.open("rb") as f:
        number = 0
        while line := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            complete = line.endswith(b"\n")
            if not complete and len(line) > MAX_LINE_BYTES:
                _skip_rest_of_line(f)
                skip(number, f"line longer than {MAX_LINE_BYTES} bytes")
                continue
            if not line.strip():
                continue
            event, reason = _parse(line.rstrip(b"\r\n"))
            if event is not None:
                yield event
            elif complete:
                skip(number, reason)
            else:
                skip(number, f"torn last line (no newline at the end): {reason}", torn=True)
    if bad_count > _LOGGED_PER_FILE:
        logger.warning(
            "%s: %d bad lines skipped in all (the first %d were logged)",
            path,
            bad_count,
            _LOGGED_PER_FILE,
        )


def _parse(line: bytes) -> tuple[TelemetryEvent | None, str]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte offset {exc.start}"
    try:
        event = TelemetryEvent.model_validate_json(text)
    except ValidationError as exc:
        return None, _explain(text, exc)
    if event.schema_version > SCHEMA_VERSION:
        return None, _newer(event.schema_version)
    missing = _ENVELOPE_FIELDS - event.model_fields_set
    if missing:
        return None, f"not an event as logged: missing {', '.join(sorted(missing))}"
    return event, ""


def _explain(text: str, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return str(first["msg"])
    version = _schema_version_of(text)
    if version is not None and version > SCHEMA_VERSION:
        return _newer(version)
    where = ".".join(str(part) for part in first["loc"]) or "line"
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return f"not a valid event: {where}: {first['msg']}{more}"


def _schema_version_of(text: str) -> int | None:
    # Only on the failure path: tells "written by a newer esper" from "garbage".
    try:
        data = json.loads(text)
    except ValueError:
        return None
    version = data.get("schema_version") if isinstance(data, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _newer(version: int) -> str:
    return (
        f"schema_version {version} is newer than this reader understands "
        f"({SCHEMA_VERSION}); upgrade esper-telemetry to read it"
    )


def _skip_rest_of_line(f: BinaryIO) -> None:
    while chunk := f.readline(MAX_LINE_BYTES):
        if chunk.endswith(b"\n"):
            return
