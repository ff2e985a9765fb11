"""Run SQL over runs and write its result as text: an aligned table, CSV or JSON lines.

What ``esper query`` prints, as library functions: :func:`tables_in` picks the tables a
statement needs (so only those are loaded), :func:`render_result` turns a DuckDB result
into text, and :func:`run_query` does both around :func:`~esper_telemetry.analytics.connect`.
Only read-only statements run (SELECT and what DuckDB parses as one: WITH, FROM,
VALUES, TABLE, SHOW, DESCRIBE, SUMMARIZE; and EXPLAIN of one): anything else is refused
from its parse tree before DuckDB binds or runs it, so a query never touches the file
system, not even to create a folder.
Non-finite floats are spelled as in the logs ("NaN", "Infinity", "-Infinity"), so the
JSON lines are strict JSON. Needs the ``analytics`` extra for duckdb.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING

from esper_telemetry._extras import require
from esper_telemetry.analytics._names import QUERY_FORMATS, TABLES, QueryFormat
from esper_telemetry.analytics._reader import OnBadLine
from esper_telemetry.contracts import json_float_text

if TYPE_CHECKING:
    import duckdb


def tables_in(sql: str) -> list[str] | None:
    """The analytics tables ``sql`` reads, in :data:`TABLES` order; None: load them all.

    The statement is analysed by DuckDB without running it (and without the tables:
    only its text); a ``SELECT`` that DuckDB cannot bind alone, such as a join
    ``USING`` columns, is read from its syntax tree. None when it names none of the
    tables (``SHOW TABLES``, a catalog query) or cannot be analysed (an error the real
    run will report).

    Raises:
        ImportError: duckdb is missing; the message says what to install.

    >>> tables_in("SELECT * FROM ppo_updates JOIN events USING (run_id, seq)")
    ['events', 'ppo_updates']
    >>> tables_in("SHOW TABLES") is None
    True
    """
    require("esper_telemetry.analytics.tables_in", "duckdb")
    import duckdb

    # Binding a statement can act on the file system (EXPORT DATABASE creates its
    # folder): the scratch database may not touch it, nor load an extension.
    with duckdb.connect(config=_SANDBOX) as scratch:
        names: set[str] | None
        try:
            names = scratch.get_table_names(sql)
        except duckdb.Error:
            names = _tables_of_selects(scratch, sql)
    if names is None:
        return None
    lowered = {name.lower() for name in names}
    return [t for t in TABLES if t in lowered] or None


def render_result(
    result: duckdb.DuckDBPyConnection, fmt: QueryFormat = "table", *, batch_rows: int = 1024
) -> Iterator[str]:
    """The rows of an executed statement as text, in pieces to write one after another.

    ``table`` fetches every row and yields one aligned table (numbers right-aligned,
    NULL spelled out, then a row count); ``csv`` yields a header row, then
    ``batch_rows`` rows at a time (NULL as an empty field); ``json`` yields one strict
    JSON object per row, ``batch_rows`` rows at a time (JSON columns nested as values,
    timestamps in ISO 8601). A statement without a result yields nothing.

    Args:
        result: A DuckDB connection (or cursor) right after ``execute``.
        fmt: One of :data:`QUERY_FORMATS`.
        batch_rows: Rows fetched at a time for ``csv`` and ``json``.

    Raises:
        ValueError: an unknown ``fmt``.
        duckdb.Error: fetching the rows failed.
    """
    if fmt not in QUERY_FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(QUERY_FORMATS)}, got {fmt!r}")
    return _render(result, fmt, batch_rows)


def run_query(
    path_or_glob: str | os.PathLike[str],
    sql: str,
    *,
    fmt: QueryFormat = "table",
    on_bad_line: OnBadLine | None = None,
) -> Iterator[str]:
    """Run ``sql`` over the events of one or many runs; return its result as text pieces.

    Loads only the tables ``sql`` reads (:func:`tables_in`) into a new in-memory
    database, with file access off (see :func:`~esper_telemetry.analytics.connect`),
    runs the statement, and renders its rows with :func:`render_result`. The
    database is closed once the pieces are consumed.

    Args:
        path_or_glob: A run directory, an events file, or a glob pattern of them.
        sql: One SQL statement over ``events``, ``ppo_updates``,
            ``recurrent_health``, ``anomalies``, ``level_changes``.
        fmt: One of :data:`QUERY_FORMATS`.
        on_bad_line: Called with each skipped line of the events files.

    Raises:
        ImportError: duckdb or pyarrow is missing; the message says what to install.
        FileNotFoundError: no events file is found at ``path_or_glob``.
        ValueError: an unknown ``fmt``; ``sql`` is empty, not encodable as UTF-8 or not
            read-only (see :func:`check_read_only`: nothing was loaded or run); or
            DuckDB refused or failed the statement (DuckDB's message, which says what
            is wrong, starts the error's text); raised by the iteration when the rows
            fail while being fetched.
    """
    if fmt not in QUERY_FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(QUERY_FORMATS)}, got {fmt!r}")
    what = "esper_telemetry.analytics.run_query"
    require(what, "duckdb")
    require(what, "pyarrow")
    import duckdb

    from esper_telemetry.analytics._duckdb import connect

    check_read_only(sql)

    con = connect(path_or_glob, tables=tables_in(sql), on_bad_line=on_bad_line)
    try:
        result = con.execute(sql)
    except duckdb.Error as exc:
        con.close()
        raise ValueError(str(exc)) from exc
    except BaseException:
        con.close()
        raise
    return _closing(con, _render(result, fmt, 1024))


def check_read_only(sql: str) -> None:
    """Refuse ``sql`` unless it is one or more read-only statements DuckDB can parse.

    Read-only: DuckDB parses it as a SELECT (which covers WITH, FROM, VALUES, TABLE,
    SHOW, DESCRIBE, SUMMARIZE and PIVOT with an IN list), or it is an EXPLAIN
    [ANALYZE] of one. Only parsed, never bound or run.

    Raises:
        ImportError: duckdb is missing; the message says what to install.
        ValueError: ``sql`` is not a string, is empty (or only comments), holds a
            character UTF-8 cannot encode (an undecodable byte of the command line
            arrives as one), does not parse, or holds a statement of another kind;
            the message names the statement and says what is allowed.

    >>> check_read_only("SELECT update, lstm_h_rms FROM ppo_updates")
    >>> try:
    ...     check_read_only("COPY ppo_updates TO 'x.csv'")
    ... except ValueError as exc:
    ...     print(str(exc).split(";")[0])
    SQL: statement 1 (COPY ppo_updates TO 'x.csv') is not a read-only query
    """
    require("esper_telemetry.analytics.check_read_only", "duckdb")
    import duckdb

    if not isinstance(sql, str):
        raise ValueError(f"SQL: must be a string, got {type(sql).__name__}")
    _check_encodable(sql)
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ValueError(str(exc)) from exc
    if not statements:
        raise ValueError(
            'SQL: empty (or only comments); give a query, e.g. "SELECT * FROM ppo_updates"'
        )
    for number, statement in enumerate(statements, 1):
        kind = statement.type
        if kind == duckdb.StatementType.SELECT:
            continue
        if kind == duckdb.StatementType.EXPLAIN and _explains_a_select(statement.query):
            continue
        hint = ""
        if kind == duckdb.StatementType.MULTI:  # what DuckDB makes of a bare PIVOT
            hint = " (a PIVOT must list its values: PIVOT t ON c IN (...) USING ...)"
        raise ValueError(
            f"SQL: statement {number} ({_snippet(statement.query)}) is not a read-only "
            f"query{hint}; only SELECT, WITH, SHOW, DESCRIBE, SUMMARIZE or EXPLAIN of one "
            "runs here"
        )


# -- internals ------------------------------------------------------------------------

#: A DuckDB that may not read, write or create a file, nor install or load an extension.
_SANDBOX: dict[str, str | bool | int | float | list[str]] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


def _check_encodable(sql: str) -> None:
    """Refuse a character UTF-8 cannot encode, naming it (surrogates of argv bytes)."""
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = sql[exc.start]
        code = ord(char)
        shown = (
            f"byte 0x{code - 0xDC00:02x}, which is not UTF-8"
            if 0xDC80 <= code <= 0xDCFF  # how Python passes on an undecodable argv byte
            else f"U+{code:04X}, a lone surrogate"
        )
        raise ValueError(
            f"SQL: character {exc.start + 1} is {shown}; write the query in UTF-8"
        ) from None


def _explains_a_select(text: str) -> bool:
    """Whether ``text`` is ``EXPLAIN [ANALYZE] [(options)]`` of SELECT statements only."""
    import duckdb

    data = text.encode("utf-8")  # the tokenizer's positions are byte offsets
    tokens = [
        (pos, kind) for pos, kind in duckdb.tokenize(text) if kind != duckdb.token_type.comment
    ]
    words = [
        data[pos : tokens[i + 1][0] if i + 1 < len(tokens) else len(data)].decode("utf-8").strip()
        for i, (pos, _) in enumerate(tokens)
    ]
    if not words or words[0].upper() != "EXPLAIN":
        return False
    i, depth = 1, 0
    while i < len(tokens):
        word = words[i]
        if depth:
            depth += word.count("(") - word.count(")")
        elif word.upper() in ("ANALYZE", "ANALYSE"):
            pass
        elif word.startswith("("):
            depth = word.count("(") - word.count(")")
        else:
            break
        i += 1
    if i >= len(tokens):
        return False
    inner = data[tokens[i][0] :].decode("utf-8")
    try:
        statements = duckdb.extract_statements(inner)
    except duckdb.Error:
        return False
    return bool(statements) and all(s.type == duckdb.StatementType.SELECT for s in statements)


def _snippet(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split()).rstrip(";").strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _tables_of_selects(scratch: duckdb.DuckDBPyConnection, sql: str) -> set[str] | None:
    """The base tables named in the syntax tree of ``sql``; None if it is not all SELECTs."""
    row = scratch.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True}
    if tree.get("error", True):
        return None
    found: set[str] = set()
    stack: list[object] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
                found.add(node["table_name"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _closing(con: duckdb.DuckDBPyConnection, pieces: Iterator[str]) -> Iterator[str]:
    import duckdb

    try:
        yield from pieces
    except duckdb.Error as exc:
        raise ValueError(str(exc)) from exc
    finally:
        con.close()


def _render(result: duckdb.DuckDBPyConnection, fmt: QueryFormat, batch_rows: int) -> Iterator[str]:
    # DB-API: None for a statement without a result (DuckDB 2.0 gives one for all).
    description: Sequence[Sequence[object]] | None = result.description
    if description is None:
        return
    names = [str(d[0]) for d in description]
    if fmt == "table":
        yield _table_text(names, result.fetchall()) + "\n"
        return
    is_json = [str(d[1]) == "JSON" for d in description]
    header = fmt == "csv"
    while (rows := result.fetchmany(batch_rows)) or header:
        buffer = io.StringIO()
        if fmt == "csv":
            writer = csv.writer(buffer, lineterminator="\n")
            if header:
                writer.writerow(names)
                header = False
            writer.writerows([_text(v, csv_null=True) for v in row] for row in rows)
        else:
            for row in rows:
                record = {
                    name: json.loads(v) if (j and isinstance(v, str)) else _jsonable(v)
                    for name, v, j in zip(names, row, is_json, strict=True)
                }
                buffer.write(json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n")
        yield buffer.getvalue()


def _table_text(names: list[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_text(v).replace("\n", "\\n").replace("\t", "\\t") for v in row] for row in rows]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    numeric = [
        bool(rows)
        and all(_is_number(row[i]) or row[i] is None for row in rows)
        and any(_is_number(row[i]) for row in rows)
        for i in range(len(names))
    ]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    out.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(out)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _text(value: object, *, csv_null: bool = False) -> str:
    if value is None:
        return "" if csv_null else "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return json_float_text(value)
    if isinstance(value, str):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, dict | list | tuple):
        return json.dumps(_jsonable(value), allow_nan=False, separators=(",", ":"))
    return str(value)


def _jsonable(value: object) -> object:
    """A value as strict JSON can hold it: non-finite floats as their strict-JSON strings."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else json_float_text(value)
    if isinstance(value, Decimal):
        return _jsonable(float(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)
