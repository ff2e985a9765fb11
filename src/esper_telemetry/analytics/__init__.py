"""Read a run's ``events.jsonl`` back, and query one or many runs with SQL (DuckDB).

The file is written by :class:`esper_telemetry.backends.analytics.AnalyticsCollector`
and is the run's source of truth. Its layout (``EVENTS_FILE``) comes from
:mod:`esper_telemetry.contracts`, and every reader here goes through one line parser,
:func:`parse_line`. The ways in:

* :func:`read_events` streams the validated events of a finished file (no third-party
  library needed);
* :class:`EventCursor` reads, each time it is asked, the complete lines a growing file
  gained since (``esper watch`` follows a live run with it);
* :func:`connect` loads one run directory, or a glob of them (``runs/*``), into an
  in-memory DuckDB database with five tables: ``events``, ``ppo_updates``,
  ``recurrent_health``, ``anomalies`` and ``level_changes``; :func:`export_parquet`
  writes one of them to a
  Parquet file; :func:`run_query` runs SQL and renders its result as text
  (:func:`tables_in`, :func:`render_result`: what ``esper query`` prints). These need
  the ``analytics`` extra: ``pip install 'esper-telemetry[analytics]'``; this module
  imports duckdb only when one of them is called.

Bad lines (a torn last line, invalid JSON, a newer ``schema_version``...) are skipped
everywhere, never fatal: pass ``on_bad_line`` to receive each as a :class:`BadLine`,
and see the warnings of the ``esper_telemetry.analytics`` logger.

Nothing here writes to an events file, and nothing in it is executed or unpickled:
each line is parsed as JSON and validated against the contracts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from esper_telemetry._extras import require
from esper_telemetry._lazy import lazy_attributes

if TYPE_CHECKING:
    import duckdb

    from esper_telemetry.analytics._names import QUERY_FORMATS, TABLES, QueryFormat
    from esper_telemetry.analytics._parse import BadLine, parse_line
    from esper_telemetry.analytics._query import render_result, run_query, tables_in
    from esper_telemetry.analytics._reader import (
        MAX_LINE_BYTES,
        EventBatch,
        EventCursor,
        OnBadLine,
        events_file,
        find_event_files,
        read_events,
    )

#: Loaded on first use: the table names need nothing, the readers need the contracts.
_LAZY = {
    **dict.fromkeys(("QUERY_FORMATS", "TABLES", "QueryFormat"), "esper_telemetry.analytics._names"),
    **dict.fromkeys(("BadLine", "parse_line"), "esper_telemetry.analytics._parse"),
    **dict.fromkeys(
        ("render_result", "run_query", "tables_in"), "esper_telemetry.analytics._query"
    ),
    **dict.fromkeys(
        (
            "MAX_LINE_BYTES",
            "EventBatch",
            "EventCursor",
            "OnBadLine",
            "events_file",
            "find_event_files",
            "read_events",
        ),
        "esper_telemetry.analytics._reader",
    ),
}

__all__ = [
    "MAX_LINE_BYTES",
    "QUERY_FORMATS",
    "TABLES",
    "BadLine",
    "EventBatch",
    "EventCursor",
    "OnBadLine",
    "QueryFormat",
    "connect",
    "events_file",
    "export_parquet",
    "find_event_files",
    "parse_line",
    "read_events",
    "render_result",
    "run_query",
    "tables_in",
]


def connect(
    path_or_glob: str | os.PathLike[str],
    *,
    tables: Iterable[str] | None = None,
    on_bad_line: OnBadLine | None = None,
    allow_file_access: bool = False,
    chunk_rows: int = 16_384,
) -> duckdb.DuckDBPyConnection:
    """Load runs' events into a new in-memory DuckDB database and return its connection.

    Tables (one row per event, one per named state in ``recurrent_health``;
    ``timestamp`` is TIMESTAMPTZ in UTC; ``level``,
    ``previous`` are the ENUM ``telemetry_level`` ordered OFF < MINIMAL < NORMAL < DEBUG,
    so compare them with ``'NORMAL'::telemetry_level``, not a bare string):

    * ``events``: run_id, seq, update, event_type, level, rank, timestamp,
      schema_version, payload (JSON text, strict: NaN is "NaN");
    * ``ppo_updates``: run_id, seq, update, timestamp, rank, level, then one typed
      column per ``PPOUpdatePayload`` field but the named states': DOUBLE for the
      losses, ``episode_return_mean`` and every ``lstm_*`` number (NaN and ±Inf kept as
      such, so ``isnan(lstm_h_rms)`` works; the ``lstm_c_*`` ones NULL when the primary
      state has no cell, a GRU), BIGINT ``env_steps``, ``health_ranks`` and
      ``episode_return_window``, BOOLEAN ``lstm_has_nan``/``lstm_has_inf``, JSON
      ``lstm_detail``, BIGINT[] ``lstm_outlier_envs``, VARCHAR ``health_scope`` and
      ``primary_state`` (NULL in logs from before states had names), MAP(VARCHAR,
      DOUBLE) ``extra``;
    * ``recurrent_health``: one row per named recurrent state of each update (the
      primary one included): run_id, seq, update, timestamp, rank, level, VARCHAR
      ``name``, BOOLEAN ``is_primary``, the 12 figures of ``LSTMHealthMetrics``
      (DOUBLE ``h_l2_total`` ... ``c_max``, NaN and ±Inf kept, the ``c_*`` ones NULL
      for a state without a cell; BOOLEAN ``has_nan``, ``has_inf``), BOOLEAN
      ``has_cell``, VARCHAR ``scope``, BIGINT ``ranks``, and JSON ``detail`` (the
      state's ``LSTMHealthDetail`` where the update has it, else NULL). An update logged
      before states had names gives one row, ``policy``, from its ``lstm_*`` fields;
      one without a recurrent state gives none. ``(run_id, seq, name)`` is a key;
    * ``anomalies``: run_id, seq, update, timestamp, rank, level, anomaly_type,
      severity, observed, threshold, message, state (the named state it was found in;
      NULL when none was named), outlier_envs;
    * ``level_changes``: run_id, seq, update, timestamp, rank, previous, level, reason.

    Logs of every ``schema_version`` this package reads load into the same columns
    (version-1 anomaly lines included); a field a log predates is NULL. The events are
    streamed through :func:`read_events` and loaded ``chunk_rows`` at a time, so Python's
    memory stays bounded whatever the size of the logs (DuckDB holds the tables). The events
    files are only ever opened for reading. Unless ``allow_file_access``, the returned
    connection can read or write no file and load no extension (DuckDB's
    ``enable_external_access=false``, with the configuration locked): SQL run on it
    cannot touch the disk.

    Args:
        path_or_glob: A run directory, an events file, or a glob pattern of them
            (``"runs/*"``); several runs share each table, told apart by ``run_id``.
        tables: The tables to create (default: all of :data:`TABLES`); loading only
            ``ppo_updates`` saves the memory and time of ``events.payload``. A table left
            out does not exist in the database.
        on_bad_line: Called with each skipped line (see :func:`read_events`).
        allow_file_access: Leave DuckDB's file access on (``COPY ... TO``, ``ATTACH``,
            ``read_csv``...) and its configuration unlocked.
        chunk_rows: Rows per table buffered in Python before they go to DuckDB.

    Raises:
        ImportError: duckdb or pyarrow is missing; the message says what to install.
        FileNotFoundError: no events file is found at ``path_or_glob``.
        ValueError: an unknown name in ``tables``, or a bad ``chunk_rows``.
    """
    _require_sql("esper_telemetry.analytics.connect")
    from esper_telemetry.analytics._duckdb import connect as connect_

    return connect_(
        path_or_glob,
        tables=tables,
        on_bad_line=on_bad_line,
        allow_file_access=allow_file_access,
        chunk_rows=chunk_rows,
    )


def export_parquet(
    path_or_glob: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    table: str = "ppo_updates",
    on_bad_line: OnBadLine | None = None,
) -> int:
    """Write one table of :func:`connect` to a Parquet file; return the number of rows.

    Rows are ordered by ``run_id, seq`` (then ``name`` in ``recurrent_health``) and
    streamed in batches. The file is written
    beside ``destination`` (whose folder is created if missing) and renamed onto it when
    complete, so a failed export leaves no partial file. Float columns are written
    without Parquet statistics: DuckDB 2.0 misses NaN in ``isnan`` filters over such
    statistics.

    Args:
        path_or_glob: As for :func:`connect`.
        destination: The Parquet file to write (replaced if it exists).
        table: One of :data:`TABLES`.
        on_bad_line: Called with each skipped line (see :func:`read_events`).

    Raises:
        ImportError: duckdb or pyarrow is missing; the message says what to install.
        FileNotFoundError: no events file is found at ``path_or_glob``.
        ValueError: an unknown ``table``, or a ``destination`` that is a directory or
            one of the events files being read.
        OSError: the file cannot be written.
    """
    _require_sql("esper_telemetry.analytics.export_parquet")
    from esper_telemetry.analytics._duckdb import export_parquet as export_parquet_

    return export_parquet_(path_or_glob, destination, table=table, on_bad_line=on_bad_line)


def _require_sql(what: str) -> None:
    for module in ("duckdb", "pyarrow"):
        require(what, module)


__getattr__ = lazy_attributes(__name__, _LAZY)
