"""Load events files into an in-memory DuckDB database, and export its tables to Parquet.

The events are streamed through :func:`read_events` (so bad lines are skipped and
reported the same way everywhere, and lines of every schema_version this package reads,
version 1 included, load), routed by event class to the tables that hold them, turned
into Arrow record batches of ``chunk_rows`` rows and appended to typed DuckDB tables, so
Python holds at most one chunk per table at a time. Needs the ``analytics`` extra
(duckdb, pyarrow).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import duckdb
import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type hints
import pyarrow.parquet as pq  # type: ignore[import-untyped]
from pydantic import BaseModel
from pydantic_core import to_json

from esper_telemetry._files import atomic_path
from esper_telemetry.analytics._names import TABLES
from esper_telemetry.analytics._reader import OnBadLine, find_event_files, read_events
from esper_telemetry.contracts import (
    EVENT_CLASSES,
    EVENTS_FILE,
    AnomalyDetected,
    EventBase,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    ReplayConsistency,
    RunLayout,
    TelemetryEvent,
    TelemetryLevel,
    TelemetryLevelChanged,
)

DEFAULT_CHUNK_ROWS: Final = 16_384

_LEVEL_TYPE: Final = "telemetry_level"
_CHUNK_VIEW: Final = "_esper_chunk"
_UTC_MICROS: Final = pa.timestamp("us", tz="UTC")


def connect(
    path_or_glob: str | os.PathLike[str],
    *,
    tables: Iterable[str] | None = None,
    on_bad_line: OnBadLine | None = None,
    allow_file_access: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> duckdb.DuckDBPyConnection:
    """See :func:`esper_telemetry.analytics.connect`."""
    wanted = _checked_tables(tables)
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an int >= 1, got {chunk_rows!r}")
    files = find_event_files(path_or_glob)
    con = duckdb.connect(
        ":memory:",
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False},
    )
    try:
        con.execute("SET TimeZone = 'UTC'")
        levels = ", ".join(f"'{level.name}'" for level in TelemetryLevel)
        con.execute(f"CREATE TYPE {_LEVEL_TYPE} AS ENUM ({levels})")
        specs = [spec for spec in _table_specs() if spec.name in wanted]
        loaders = [_Loader(con, spec, chunk_rows) for spec in specs]
        routes: dict[type[EventBase], list[_Loader[Any]]] = {cls: [] for cls in EVENT_CLASSES}
        for loader in loaders:
            for cls in loader.spec.classes:
                routes[cls].append(loader)
        for file in files if loaders else ():
            for event in read_events(file, on_bad_line=on_bad_line):
                for loader in routes[type(event)]:
                    loader.add(event)
        for loader in loaders:
            loader.flush()
        if not allow_file_access:
            # After loading: from here on, no SQL reads or writes a file or loads an
            # extension, nothing spills to a temporary folder (DuckDB would make ./.tmp),
            # no progress bar writes to the terminal, and the lock keeps anyone from
            # setting these back.
            con.execute("SET temp_directory = ''")  # before: the access switch locks it
            con.execute("SET enable_progress_bar = false")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def export_parquet(
    path_or_glob: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    table: str = "ppo_updates",
    on_bad_line: OnBadLine | None = None,
    batch_rows: int = 65_536,
) -> int:
    """See :func:`esper_telemetry.analytics.export_parquet`."""
    if table not in TABLES:
        raise ValueError(f"table must be one of {', '.join(TABLES)}, got {table!r}")
    dest = Path(destination)
    sources = {p.resolve() for p in find_event_files(path_or_glob)}
    if dest.resolve() in sources:
        raise ValueError(f"destination: {str(dest)!r} is an events file being read")
    if dest.is_dir():
        raise ValueError(f"destination: {str(dest)!r} is a directory")
    _refuse_run_files(dest, {s.parent for s in sources})
    rows = 0
    con = connect(path_or_glob, tables=[table], on_bad_line=on_bad_line)
    try:
        (spec,) = [s for s in _table_specs() if s.name == table]
        order = ", ".join(spec.key)
        reader = con.sql(f"SELECT * FROM {table} ORDER BY {order}").to_arrow_reader(
            batch_size=batch_rows
        )
        # DuckDB (2.0) misses NaN in isnan() filters over Parquet float statistics
        # written by pyarrow, so float columns go without statistics.
        with_stats = [f.name for f in reader.schema if not _holds_float(f.type)]
        with (
            atomic_path(dest) as tmp,
            pq.ParquetWriter(tmp, reader.schema, write_statistics=with_stats) as writer,
        ):
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
    finally:
        con.close()
    return rows


def _refuse_run_files(dest: Path, run_dirs: set[Path]) -> None:
    """Refuse a destination that is a file a run writes: its logs, report or W&B files.

    A run directory is one being read, or any folder holding an events file; what it
    owns is its :class:`RunLayout` (``events.jsonl``, ``log.jsonl``, ``report.png``)
    and everything under its ``wandb`` folder. Other files beside them may be written.
    """
    target = dest.resolve()
    for folder in target.parents:
        if folder not in run_dirs and not (folder / EVENTS_FILE).is_file():
            continue
        layout = RunLayout(folder)
        owned = {layout.events: "the events file", layout.log: "the structured log"}
        owned[layout.report] = "the report"
        what = owned.get(target)
        if what is None and target.is_relative_to(layout.wandb):
            what = "one of the W&B files"
        if what is not None:
            raise ValueError(
                f"destination: {str(dest)!r} is {what} of the run in {str(folder)!r}; "
                "write the Parquet file elsewhere"
            )


def _checked_tables(tables: Iterable[str] | None) -> frozenset[str]:
    if tables is None:
        return frozenset(TABLES)
    if isinstance(tables, str):
        raise ValueError(f"tables must be a collection of table names, not a string: {tables!r}")
    chosen = list(tables)
    unknown = [t for t in chosen if t not in TABLES]
    if unknown:
        raise ValueError(f"tables: unknown {unknown!r}; the tables are {', '.join(TABLES)}")
    return frozenset(chosen)


# -- tables ---------------------------------------------------------------------------

Row = tuple[object, ...]
E = TypeVar("E")


@dataclass(frozen=True)
class _TableSpec(Generic[E]):
    name: str
    classes: tuple[type[EventBase], ...]  # the events that make its rows
    columns: tuple[tuple[str, str, pa.DataType], ...]  # name, DuckDB type, Arrow type
    rows: Callable[[E], Iterable[Row]]  # an event's rows: one, or one per named state
    key: tuple[str, ...] = ("run_id", "seq")  # what tells its rows apart, and orders them

    def ddl(self) -> str:
        body = ", ".join(f'"{name}" {sql}' for name, sql, _ in self.columns)
        return f"CREATE TABLE {self.name} ({body})"


class _Loader(Generic[E]):
    """Buffers one table's rows and appends them to DuckDB one Arrow batch at a time."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, spec: _TableSpec[E], chunk_rows: int
    ) -> None:
        self.spec = spec
        self._con = con
        self._chunk_rows = chunk_rows
        self._rows: list[Row] = []
        self._schema = pa.schema([pa.field(name, arrow) for name, _, arrow in spec.columns])
        con.execute(spec.ddl())

    def add(self, event: E) -> None:
        self._rows.extend(self.spec.rows(event))
        if len(self._rows) >= self._chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        columns = list(zip(*self._rows, strict=True))
        self._rows = []
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(values, type=field.type)
                for values, field in zip(columns, self._schema, strict=True)
            ],
            schema=self._schema,
        )
        self._con.register(_CHUNK_VIEW, batch)
        try:
            self._con.execute(f"INSERT INTO {self.spec.name} SELECT * FROM {_CHUNK_VIEW}")
        finally:
            self._con.unregister(_CHUNK_VIEW)


Column = tuple[str, str, pa.DataType]  # name, DuckDB type, Arrow type

_LEVEL: Final = (_LEVEL_TYPE, pa.string())
_HEAD: Final[tuple[Column, ...]] = (
    ("run_id", "VARCHAR", pa.string()),
    ("seq", "BIGINT", pa.int64()),
    ("update", "BIGINT", pa.int64()),
)
_STAMP: Final[tuple[Column, ...]] = (
    ("timestamp", "TIMESTAMPTZ", _UTC_MICROS),
    ("rank", "BIGINT", pa.int64()),
)


def _table_specs() -> list[_TableSpec[Any]]:
    """The five tables, in :data:`TABLES` order."""
    return [
        _events_table(),
        _ppo_table(),
        _recurrent_health_table(),
        _anomalies_table(),
        _level_changes_table(),
    ]


def _events_table() -> _TableSpec[TelemetryEvent]:
    def rows(e: TelemetryEvent) -> tuple[Row]:
        return (
            (
                *(e.run_id, e.seq, e.update, e.event_type.value, e.level.name, e.rank),
                *(e.timestamp, e.schema_version, e.payload.model_dump_json()),
            ),
        )

    columns: tuple[Column, ...] = (
        *_HEAD,
        ("event_type", "VARCHAR", pa.string()),
        ("level", *_LEVEL),
        ("rank", "BIGINT", pa.int64()),
        ("timestamp", "TIMESTAMPTZ", _UTC_MICROS),
        ("schema_version", "BIGINT", pa.int64()),
        ("payload", "JSON", pa.string()),
    )
    return _TableSpec[TelemetryEvent]("events", EVENT_CLASSES, columns, rows)


def _ppo_table() -> _TableSpec[PPOUpdateCompleted]:
    ppo_columns, ppo_values = _ppo_payload_columns()

    def rows(e: PPOUpdateCompleted) -> tuple[Row]:
        return (
            (
                *(e.run_id, e.seq, e.update, e.timestamp, e.rank, e.level.name),
                *ppo_values(e.payload),
            ),
        )

    columns = (*_HEAD, *_STAMP, ("level", *_LEVEL), *ppo_columns)
    return _TableSpec("ppo_updates", (PPOUpdateCompleted,), columns, rows)


def _recurrent_health_table() -> _TableSpec[PPOUpdateCompleted]:
    """One row per named recurrent state of each update (``named_health()``).

    A log written before states had names gives one row, ``policy``, from the flat
    ``lstm_*`` fields, so old and new runs answer the same queries.
    """
    figures = LSTMHealthMetrics.FIGURES
    properties: dict[str, Any] = LSTMHealthMetrics.model_json_schema()["properties"]
    replay_properties: dict[str, Any] = ReplayConsistency.model_json_schema()["properties"]
    replay_fields = tuple(replay_properties)

    def typed(*names: str) -> list[Column]:
        return [(n, *_column_type(properties[n])) for n in names]

    def rows(e: PPOUpdateCompleted) -> list[Row]:
        p = e.payload
        head = (e.run_id, e.seq, e.update, e.timestamp, e.rank, e.level.name)
        primary = p.primary_name()
        out: list[Row] = []
        for name, m in p.named_health().items():
            detail = p.detail_of(name)
            replay = p.replay.get(name)
            out.append(
                (
                    *head,
                    *(name, name == primary),
                    *(getattr(m, f) for f in figures),
                    *(m.has_cell, m.scope, m.ranks),
                    None if detail is None else detail.model_dump_json(),
                    *(None if replay is None else getattr(replay, f) for f in replay_fields),
                )
            )
        return out

    columns: tuple[Column, ...] = (
        *_HEAD,
        *_STAMP,
        ("level", *_LEVEL),
        ("name", "VARCHAR", pa.string()),
        ("is_primary", "BOOLEAN", pa.bool_()),
        *typed(*figures),
        ("has_cell", "BOOLEAN", pa.bool_()),
        *typed("scope", "ranks"),
        ("detail", "JSON", pa.string()),
        # The state's replay check (PPOUpdatePayload.replay), NULL where none was made.
        *((f"replay_{n}", *_column_type(replay_properties[n])) for n in replay_fields),
    )
    return _TableSpec(
        "recurrent_health", (PPOUpdateCompleted,), columns, rows, ("run_id", "seq", "name")
    )


def _anomalies_table() -> _TableSpec[AnomalyDetected]:
    def rows(e: AnomalyDetected) -> tuple[Row]:
        a = e.payload.anomaly
        return (
            (
                *(e.run_id, e.seq, e.update, e.timestamp, e.rank, e.level.name),
                *(a.type.value, a.severity.value, a.observed, a.threshold, a.message),
                *(a.state, e.payload.outlier_envs),
            ),
        )

    columns: tuple[Column, ...] = (
        *_HEAD,
        *_STAMP,
        ("level", *_LEVEL),
        ("anomaly_type", "VARCHAR", pa.string()),
        ("severity", "VARCHAR", pa.string()),
        ("observed", "DOUBLE", pa.float64()),
        ("threshold", "DOUBLE", pa.float64()),
        ("message", "VARCHAR", pa.string()),
        ("state", "VARCHAR", pa.string()),
        ("outlier_envs", "BIGINT[]", pa.list_(pa.int64())),
    )
    return _TableSpec("anomalies", (AnomalyDetected,), columns, rows)


def _level_changes_table() -> _TableSpec[TelemetryLevelChanged]:
    def rows(e: TelemetryLevelChanged) -> tuple[Row]:
        p = e.payload
        return (
            (
                *(e.run_id, e.seq, e.update, e.timestamp, e.rank),
                *(p.previous.name, p.level.name, p.reason),
            ),
        )

    columns: tuple[Column, ...] = (
        *_HEAD,
        *_STAMP,
        ("previous", *_LEVEL),
        ("level", *_LEVEL),
        ("reason", "VARCHAR", pa.string()),
    )
    return _TableSpec("level_changes", (TelemetryLevelChanged,), columns, rows)


#: PPOUpdatePayload fields that are not columns of ppo_updates: the recurrent_health
#: table holds them, one row per named state (the replay check as replay_* columns).
_OWN_TABLE: Final = frozenset({"recurrent_health", "recurrent_detail", "replay"})


def _ppo_payload_columns() -> tuple[
    list[tuple[str, str, pa.DataType]], Callable[[PPOUpdatePayload], Sequence[object]]
]:
    """One typed column per ``PPOUpdatePayload`` field, derived from its JSON Schema.

    Numbers become DOUBLE, integers BIGINT, booleans BOOLEAN, strings VARCHAR, integer
    arrays BIGINT[], string-to-number objects MAP(VARCHAR, DOUBLE); anything else (a
    sub-model) is kept as JSON text. A field added to the contract thus gets a column
    without a change here. The named states (``recurrent_health``, ``recurrent_detail``)
    are the rows of the ``recurrent_health`` table instead.
    """
    columns: list[tuple[str, str, pa.DataType]] = []
    as_json: list[int] = []
    as_map: list[int] = []
    properties: dict[str, Any] = PPOUpdatePayload.model_json_schema()["properties"]
    kept = [(n, prop) for n, prop in properties.items() if n not in _OWN_TABLE]
    for index, (name, prop) in enumerate(kept):
        sql, arrow = _column_type(prop)
        columns.append((name, sql, arrow))
        if sql == "JSON":
            as_json.append(index)
        elif sql.startswith("MAP("):
            as_map.append(index)  # a read-only FrozenDict, which pyarrow does not take
    getter = operator.attrgetter(*(name for name, _, _ in columns))

    def values(payload: PPOUpdatePayload) -> Sequence[object]:
        out: list[object] = list(getter(payload))
        for i in as_json:
            if out[i] is not None:
                out[i] = _json_text(out[i])
        for i in as_map:
            value = out[i]
            if isinstance(value, Mapping):
                out[i] = dict(value)
        return out

    return columns, values


def _column_type(prop: dict[str, Any]) -> tuple[str, pa.DataType]:
    options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"]
    kinds = {o.get("type") for o in options}
    if kinds == {"number"}:
        return "DOUBLE", pa.float64()
    if kinds == {"integer"}:
        return "BIGINT", pa.int64()
    if kinds == {"boolean"}:
        return "BOOLEAN", pa.bool_()
    if kinds == {"string"}:
        return "VARCHAR", pa.string()
    if kinds == {"array"} and all(o.get("items", {}).get("type") == "integer" for o in options):
        return "BIGINT[]", pa.list_(pa.int64())
    if kinds == {"object"} and all(
        o.get("additionalProperties", {}).get("type") == "number" for o in options
    ):
        return "MAP(VARCHAR, DOUBLE)", pa.map_(pa.string(), pa.float64())
    return "JSON", pa.string()


def _json_text(value: object) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return to_json(value, inf_nan_mode="strings").decode("utf-8")


def _holds_float(t: pa.DataType) -> bool:
    if pa.types.is_floating(t):
        return True
    return any(_holds_float(t.field(i).type) for i in range(t.num_fields))
