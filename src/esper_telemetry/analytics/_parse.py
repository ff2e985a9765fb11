"""The one parser of an ``events.jsonl`` line, and the record of a line that failed it.

Every reader of the analytics log (:func:`~esper_telemetry.analytics.read_events`, the
:class:`~esper_telemetry.analytics.EventCursor`, ``esper watch``, the report, SQL) goes
through :func:`parse_line`, so a line reads the same, or fails for the same reason,
everywhere. Only JSON parsing and contract validation touch the bytes: nothing is
executed, evaluated or unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from esper_telemetry.contracts import SCHEMA_VERSION, EventType, TelemetryEvent, parse_event

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

#: The tags pydantic puts first in an error's location inside the event union.
_TAGS: Final = frozenset(t.value for t in EventType)

#: How pydantic labels a plain-typed member of a union in an error's location.
_MEMBER_TYPES: Final = frozenset({"float", "int", "str", "bool", "none"})


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line of an events file that was skipped, and why.

    Attributes:
        path: The events file.
        line_number: 1-based number of the line in the file.
        reason: One sentence: what is wrong with the line.
        torn: True for a last line without its newline (a writer that was killed or
            failed mid-write, or one that is writing it right now).
        duplicate: True for a valid event whose ``(run_id, seq)`` an earlier line of
            the file already had (two writers on one file): the first is kept.
    """

    path: Path
    line_number: int
    reason: str
    torn: bool = False
    duplicate: bool = False

    def __str__(self) -> str:
        return f"{self.path}:{self.line_number}: {self.reason}"


def parse_line(line: bytes | str) -> tuple[TelemetryEvent | None, str]:
    """Read one line of an events file into its event, or say why it is not one.

    The line (its trailing newline optional) must be UTF-8, strict JSON, and a valid
    event of a ``schema_version`` this package understands, with every envelope field
    written out (none filled in by a default). Version-1 lines read as well.

    Args:
        line: One line, as read from the file.

    Returns:
        ``(event, "")``, or ``(None, reason)`` with ``reason`` one sentence naming what
        is wrong: invalid UTF-8 (with its byte offset), invalid JSON, a wrong shape (the
        first field at fault), a newer ``schema_version`` (with an upgrade hint), a
        missing envelope field. Never raises because of the line's content.

    >>> parse_line(b'{"event_type": "RUN_STARTED"}')
    (None, 'not a valid event: update: Field required (and 1 more errors)')
    >>> parse_line(b"[1, 2]\\n")
    (None, 'not a valid event: line: Input should be an object')
    """
    if isinstance(line, str):
        text = line.rstrip("\r\n")
    else:
        try:
            text = line.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, f"invalid UTF-8 at byte offset {exc.start}"
    try:
        event = parse_event(text)
    except ValidationError as exc:
        return None, _explain(text, exc)
    if event.schema_version > SCHEMA_VERSION:
        return None, _newer(event.schema_version)
    missing = _ENVELOPE_FIELDS - event.model_fields_set
    if missing:
        return None, f"not an event as logged: missing {', '.join(sorted(missing))}"
    return event, ""


# -- internals ------------------------------------------------------------------------


def _explain(text: str, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return str(first["msg"])
    version = _schema_version_of(text)
    if version is not None and version > SCHEMA_VERSION:
        return _newer(version)  # a newer esper may add fields or event types
    # A field of a union type (a Float) reports one error per member, under the
    # member's label: one field is one error here, told by its last member (the one
    # that says why).
    by_field: dict[tuple[str | int, ...], str] = {}
    for error in errors:
        by_field[_field_of(error["loc"])] = str(error["msg"]).removeprefix("Value error, ")
    more = f" (and {len(by_field) - 1} more errors)" if len(by_field) > 1 else ""
    if first["type"] == "union_tag_not_found":
        return f"not a valid event: event_type: Field required{more}"
    if first["type"] == "union_tag_invalid":
        tag = (first.get("ctx") or {}).get("tag")
        return f"not a valid event: event_type: unknown event type {tag!r}{more}"
    field = _field_of(first["loc"])
    where = ".".join(str(part) for part in field) or "line"
    return f"not a valid event: {where}: {by_field[field]}{more}"


def _field_of(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """The field an error's location names, without the labels of union members."""
    parts = list(loc)
    if parts and parts[0] in _TAGS:
        parts = parts[1:]  # the event class chosen by event_type: not a field of the line
    return tuple(p for p in parts if not (isinstance(p, str) and _is_member_label(p)))


def _is_member_label(part: str) -> bool:
    # pydantic labels union members by schema ("float", "constrained-float",
    # "function-before[...]"); contract fields are identifiers without "-" or "[".
    return part in _MEMBER_TYPES or "-" in part or "[" in part


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
